"""Model benchmark (never a timed test): ratios measured side by side in one run, same data and width.

(a) user-level aggregated batches (one row per user, history once, many targets) vs one-impression-per-row batches
    (the same impressions, each row carrying its own copy of the history): impressions trained per second.
(b) Hybrid Target Attention 3:1 + GQA 3:1 vs full attention with multi-head attention (and the two factors alone) at
    about 1k tokens per user: samples/s of a training step and peak memory.
(c) forward FLOPs per target (``torch.utils.flop_counter.FlopCounterMode``) for each variant and the DLRM baseline.
(d) managed-collision (ZCH) tables vs plain hashed tables: training step time.

Throughput: every variant's step is timed round-robin (variant A step, variant B step, ...) so load from other
processes on a shared machine hits all variants alike; medians are reported. Peak memory: the PyTorch profiler's
memory timeline of one training step (``profile_memory=True``; tracemalloc cannot see PyTorch's CPU allocator).

Run: ``.venv/bin/python -m benchmarks.bench_model`` (``--quick`` for a smoke run). Writes reports/bench/model.json.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import platform
import random
import statistics
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch.utils.flop_counter import FlopCounterMode
from torchrec.optim import RowWiseAdagrad

from model import DLRMBaseline, DLRMConfig, Ranker, RankerConfig
from model.batch import Batch, collate
from model.features import FeatureSpec
from streaming.sample import Behavior, Sample, Target

REPO = Path(__file__).resolve().parents[1]
REPORT = REPO / "reports" / "bench" / "model.json"
SCENARIOS = ("home", "search", "cart", "promo")


@dataclass(frozen=True)
class BenchConfig:
    """Sizes of the benchmark (defaults: the issue's operating points, scaled to a 2-core CPU)."""

    history: int = 256  # (a) history length
    targets: int = 16  # (a) targets per user
    users_a: int = 4  # (a) users per user-level batch (= users * targets impressions per batch)
    long_history: int = 900  # (b) history so that U + H + R + T is about 1k tokens
    long_realtime: int = 60
    long_targets: int = 64
    users_b: int = 2
    steps: int = 5
    warmup: int = 2
    threads: int = 1
    d_model: int = 64


def make_user(rng: random.Random, uid: str, n_hist: int, n_rt: int, n_tgt: int, t0: float = 1.7e9) -> Sample:
    """A synthetic user: history before t0, real-time events interleaved with targets every 10 s."""

    def beh(ts: float) -> Behavior:
        return Behavior(f"i{rng.randrange(20000)}", rng.choice(SCENARIOS), rng.choice(("click", "order")), ts,
                        {"cat": str(rng.randrange(50)), "brand": f"b{rng.randrange(500)}"})

    hist = [beh(t0 - 60.0 * (n_hist - i)) for i in range(n_hist)]
    step = 10.0 * max(n_tgt, 1) / max(n_rt, 1)
    rt = [beh(t0 + step * i + 1.0) for i in range(n_rt)]
    tg = [Target(f"{uid}-{j}", f"{uid}-r{j}", f"i{rng.randrange(20000)}", rng.choice(SCENARIOS), t0 + 10.0 * j,
                 position=j % 10, item={"cat": str(rng.randrange(50))}, context={"hour": str(rng.randrange(24))},
                 dense={"price": rng.uniform(1, 500)}, cross={"user_cat_clicks": float(rng.randrange(20))},
                 labels={"click": int(rng.random() < 0.3), "conversion": int(rng.random() < 0.05)})
          for j in range(n_tgt)]
    return Sample(f"s-{uid}", uid, tg, user={"age": str(rng.randrange(18, 70)), "city": f"c{rng.randrange(30)}"},
                  history=hist, realtime=rt, span_start=t0, span_end=tg[-1].ts)


def per_impression(s: Sample) -> list[Sample]:
    """One row per target, each with the full history and the real-time events before that target."""
    return [dataclasses.replace(s, sample_id=f"{s.sample_id}-{t.event_id}", targets=[t],
                                realtime=[r for r in s.realtime if r.ts < t.ts], span_start=t.ts, span_end=t.ts)
            for t in s.targets]


Model = Ranker | DLRMBaseline


class Step:
    """One training step (forward, BCE over tasks, backward, Adagrad on tables + AdamW on dense) on fixed batches."""

    def __init__(self, model: Model, batches: list[Batch]) -> None:
        self.model, self.batches, self.i = model.train(), batches, 0
        self.opts = [RowWiseAdagrad(model.embedding_parameters(), lr=0.02),  # as the trainer does
                     torch.optim.AdamW(model.dense_parameters(), lr=1e-3)]

    def __call__(self) -> None:
        b = self.batches[self.i % len(self.batches)]
        self.i += 1
        out = self.model(b)
        loss = torch.stack([torch.nn.functional.binary_cross_entropy_with_logits(out[t], b.labels[t])
                            for t in out]).sum()
        for o in self.opts:
            o.zero_grad(set_to_none=True)
        loss.backward()
        for o in self.opts:
            o.step()


def round_robin(steps: dict[str, Callable[[], None]], warmup: int, reps: int) -> dict[str, float]:
    """Median seconds per step of each callable, timed interleaved."""
    for _ in range(warmup):
        for f in steps.values():
            f()
    times: dict[str, list[float]] = {k: [] for k in steps}
    for _ in range(reps):
        for k, f in steps.items():
            t0 = time.perf_counter()
            f()
            times[k].append(time.perf_counter() - t0)
    return {k: statistics.median(v) for k, v in times.items()}


def forward_flops(model: Model, batch: Batch) -> int:
    model.eval()
    with torch.no_grad(), FlopCounterMode(display=False) as fc:
        model(batch)
    model.train()
    return int(fc.get_total_flops())


def spec_for(cfg: BenchConfig, max_history: int, managed_collision: bool = False) -> FeatureSpec:
    return FeatureSpec(max_history=max_history, max_realtime=max(cfg.long_realtime, 64),
                       managed_collision=managed_collision)


def variants_b(cfg: BenchConfig) -> dict[str, RankerConfig]:
    base = RankerConfig(d_model=cfg.d_model, q_heads=3, head_dim=32)
    return {
        "full+mha": dataclasses.replace(base, num_blocks=4, target_layers=0, kv_heads=3),
        "full+gqa": dataclasses.replace(base, num_blocks=4, target_layers=0, kv_heads=1),
        "hta+mha": dataclasses.replace(base, num_blocks=1, target_layers=3, kv_heads=3),
        "hta+gqa": dataclasses.replace(base, num_blocks=1, target_layers=3, kv_heads=1),
    }


def long_batches(cfg: BenchConfig, spec: FeatureSpec, n: int = 2) -> list[Batch]:
    rng = random.Random(1)
    return [collate([make_user(rng, f"u{k}-{i}", cfg.long_history, cfg.long_realtime, cfg.long_targets)
                     for i in range(cfg.users_b)], spec) for k in range(n)]


def step_memory(step: Step) -> dict[str, float]:
    """Tensor memory of one training step from the PyTorch profiler's memory timeline (CPU allocator events).

    ``peak_mib``: most bytes held by tensors at any time in the step (parameters, optimizer state, gradients,
    activations, temporaries); ``peak_growth_mib``: that peak minus what was held when the step started (the
    step's working memory: activations, temporaries, gradients).
    """
    from torch.profiler import ProfilerActivity, profile
    from torch.profiler._memory_profiler import MemoryProfileTimeline

    step()  # optimizer state exists before measuring
    for o in step.opts:  # free gradients outside the profile: the profiler cannot attribute frees of older blocks
        o.zero_grad(set_to_none=True)
    with profile(activities=[ProfilerActivity.CPU], profile_memory=True, record_shapes=True, with_stack=True) as prof:
        step()
    _, sizes = MemoryProfileTimeline(prof._memory_profile())._coalesce_timeline("cpu")
    total = [sum(row) for row in sizes] or [0]
    return {"peak_mib": max(total) / 2**20, "peak_growth_mib": (max(total) - total[0]) / 2**20}


def run(cfg: BenchConfig) -> dict[str, Any]:
    torch.set_num_threads(cfg.threads)
    rng = random.Random(0)
    result: dict[str, Any] = {"config": dataclasses.asdict(cfg)}

    # (a) user-level aggregation vs one impression per row, same impressions, same model width
    spec_a = spec_for(cfg, cfg.history)
    users = [make_user(rng, f"a{i}", cfg.history, 16, cfg.targets) for i in range(2 * cfg.users_a)]
    t0 = time.perf_counter()
    agg = [collate(users[i : i + cfg.users_a], spec_a) for i in range(0, len(users), cfg.users_a)]
    t_collate_agg = time.perf_counter() - t0
    rows = [r for u in users for r in per_impression(u)]
    per_batch = cfg.users_a * cfg.targets  # same impressions per batch
    t0 = time.perf_counter()
    flat = [collate(rows[i : i + per_batch], spec_a) for i in range(0, len(rows), per_batch)]
    t_collate_flat = time.perf_counter() - t0
    torch.manual_seed(0)
    model_a = Ranker(spec_a, RankerConfig(d_model=cfg.d_model))
    torch.manual_seed(0)
    model_a2 = Ranker(spec_a, RankerConfig(d_model=cfg.d_model))
    sec = round_robin({"user_level": Step(model_a, agg), "per_impression": Step(model_a2, flat)}, cfg.warmup,
                      cfg.steps)
    imp = {k: per_batch / v for k, v in sec.items()}
    n_imp = len(rows)
    result["a_user_level_vs_per_impression"] = {
        "impressions_per_batch": per_batch,
        "tokens_per_batch": {"user_level": agg[0].num_tokens, "per_impression": flat[0].num_tokens},
        "step_s": sec,
        "impressions_per_s": imp,
        "ratio": imp["user_level"] / imp["per_impression"],
        "collate_impressions_per_s": {"user_level": n_imp / t_collate_agg, "per_impression": n_imp / t_collate_flat},
        "end_to_end_ratio_incl_collate": (n_imp / (t_collate_agg + sec["user_level"] * len(agg)))
        / (n_imp / (t_collate_flat + sec["per_impression"] * len(flat))),
        "flops_per_target": {"user_level": forward_flops(model_a, agg[0]) / agg[0].num_targets,
                             "per_impression": forward_flops(model_a2, flat[0]) / flat[0].num_targets},
    }

    # (b) HTA 3:1 + GQA 3:1 vs full attention + MHA at ~1k tokens per user
    spec_b = spec_for(cfg, cfg.long_history)
    batches_b = long_batches(cfg, spec_b)
    steps_b: dict[str, Step] = {}
    for name, rc in variants_b(cfg).items():
        torch.manual_seed(0)
        steps_b[name] = Step(Ranker(spec_b, rc), batches_b)
    sec_b = round_robin(dict(steps_b), cfg.warmup, cfg.steps)
    sps = {k: cfg.users_b / v for k, v in sec_b.items()}
    mem = {name: step_memory(st) for name, st in steps_b.items()}
    flops_b = {k: forward_flops(s.model, batches_b[0]) / batches_b[0].num_targets for k, s in steps_b.items()}
    torch.manual_seed(0)
    dlrm = DLRMBaseline(spec_b, DLRMConfig())
    flops_b["dlrm"] = forward_flops(dlrm, batches_b[0]) / batches_b[0].num_targets
    result["b_hta_gqa_vs_full_mha"] = {
        "tokens_per_user": batches_b[0].num_tokens / cfg.users_b,
        "targets_per_user": cfg.long_targets,
        "layers": 4,
        "step_s": sec_b,
        "samples_per_s": sps,
        "ratio_samples_per_s": {
            "hta+gqa / full+mha": sps["hta+gqa"] / sps["full+mha"],
            "hta+mha / full+mha (layout)": sps["hta+mha"] / sps["full+mha"],
            "hta+gqa / hta+mha (GQA)": sps["hta+gqa"] / sps["hta+mha"],
        },
        "peak_memory": mem,
        "peak_memory_ratio_full+mha / hta+gqa": {
            k: mem["full+mha"][k] / max(mem["hta+gqa"][k], 1e-9) for k in ("peak_mib", "peak_growth_mib")},
        "memory_method": "torch.profiler(profile_memory=True) memory timeline of one training step (CPU tensor "
                         "allocations); tracemalloc cannot see PyTorch's allocator",
    }
    result["c_forward_flops_per_target"] = {
        **{f"{k} (~1k tokens)": v for k, v in flops_b.items()},
        **{f"{k} (history {cfg.history})": v for k, v in result["a_user_level_vs_per_impression"]
           ["flops_per_target"].items()},
        "note": "FlopCounterMode counts matmul/bmm/einsum FLOPs; the PyTorch reference attention pads each user "
                "to its longest sequence, so masked entries are counted too",
    }

    # (d) managed collision vs plain hashing (same data, small batches of the (a) shape)
    spec_mc = spec_for(cfg, cfg.history, managed_collision=True)
    agg_mc = [collate(users[i : i + cfg.users_a], spec_mc) for i in range(0, len(users), cfg.users_a)]
    torch.manual_seed(0)
    sec_d = round_robin({"plain": Step(Ranker(spec_a, RankerConfig(d_model=cfg.d_model)), agg),
                         "managed_collision": Step(Ranker(spec_mc, RankerConfig(d_model=cfg.d_model)), agg_mc)},
                        cfg.warmup, cfg.steps)
    result["d_managed_collision"] = {"step_s": sec_d, "slowdown": sec_d["managed_collision"] / sec_d["plain"]}
    return result


def print_table(r: dict[str, Any]) -> None:
    a, b, c = r["a_user_level_vs_per_impression"], r["b_hta_gqa_vs_full_mha"], r["c_forward_flops_per_target"]
    print(f"(a) impressions/s  user-level {a['impressions_per_s']['user_level']:.1f}  per-impression "
          f"{a['impressions_per_s']['per_impression']:.1f}  ratio {a['ratio']:.2f}x  (incl. collate "
          f"{a['end_to_end_ratio_incl_collate']:.2f}x)")
    print(f"(b) ~{b['tokens_per_user']:.0f} tokens/user, {b['targets_per_user']} targets/user")
    print(f"    {'variant':10s} {'samples/s':>10s} {'peak MiB':>9s} {'step MiB':>9s} {'fwd GFLOP/target':>17s}")
    for k, v in b["samples_per_s"].items():
        m = b["peak_memory"][k]
        print(f"    {k:10s} {v:10.2f} {m['peak_mib']:9.1f} {m['peak_growth_mib']:9.1f} "
              f"{c[k + ' (~1k tokens)'] / 1e9:17.3f}")
    for k, v in b["ratio_samples_per_s"].items():
        print(f"    {k}: {v:.2f}x")
    r_mem = b["peak_memory_ratio_full+mha / hta+gqa"]
    print(f"    memory full+mha / hta+gqa: peak {r_mem['peak_mib']:.2f}x, step working set {r_mem['peak_growth_mib']:.2f}x")
    print(f"(c) DLRM fwd GFLOP/target {c['dlrm (~1k tokens)'] / 1e9:.4f}")
    print(f"(d) managed-collision step slowdown {r['d_managed_collision']['slowdown']:.2f}x")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m benchmarks.bench_model", description=__doc__.split("\n")[0])
    ap.add_argument("--quick", action="store_true", help="tiny sizes, a smoke run of the whole benchmark")
    ap.add_argument("--threads", type=int, default=BenchConfig.threads, help="torch intra-op threads (default 1)")
    ap.add_argument("--steps", type=int, default=BenchConfig.steps, help="timed steps per variant (default 5)")
    ap.add_argument("--out", type=Path, default=REPORT, help="JSON report path (default %(default)s)")
    args = ap.parse_args(argv)
    cfg = BenchConfig(threads=args.threads, steps=args.steps)
    if args.quick:
        cfg = dataclasses.replace(cfg, history=32, targets=4, users_a=2, long_history=100, long_realtime=8,
                                  long_targets=8, steps=1, warmup=1, d_model=32)
    t0 = time.time()
    result = run(cfg)
    result["machine"] = {"platform": platform.platform(), "cpu_count": os.cpu_count(), "torch": torch.__version__,
                         "threads": cfg.threads, "gpu": "none (CPU only)" if not torch.cuda.is_available()
                         else torch.cuda.get_device_name()}
    result["command"] = "python -m benchmarks.bench_model" + (" --quick" if args.quick else "")
    result["wall_s"] = time.time() - t0
    print_table(result)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=1))
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
