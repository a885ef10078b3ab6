"""Trainer throughput through a real Kafka broker: samples/s, impressions/s, and data-wait vs compute time.

Starts a local broker on a free port, produces ``--samples`` synthetic user-level samples (history + 1-8 targets)
to a fresh topic, then trains the default model (``python -m trainer``'s defaults unless flags say otherwise) on
them twice, side by side on the same data: with the background prefetcher (the default, ``--prefetch 2``) and
synchronously (``--prefetch 0``: poll, decode and collate inside the training loop). Each run reports

- samples/s and impressions/s over the whole run (start → last step), and impressions/s after the first batch
  arrived ("steady": without consumer assignment and the first fetch);
- (a warm-up run first, then ``--rounds`` interleaved prefetch/sync pairs, so load drift hits both alike);
- data-wait seconds after the first batch (the loop blocked on the next batch; the startup wait for partition
  assignment and the first fetch is reported apart), compute seconds (score + train), persist seconds
  (checkpoints + snapshots at the default cadence), and the stall fraction = wait / (wait + compute).

    .venv/bin/python -m benchmarks.bench_trainer                     # 768 samples, batch 64, 2 rounds
    .venv/bin/python -m benchmarks.bench_trainer --samples 512 --batch-samples 64

Writes reports/bench/trainer.json and prints a table. CPU only where no CUDA device exists (the device is reported).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import platform
import random
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import torch
from prometheus_client import CollectorRegistry

from deploy.kafka import REPO_ROOT, BrokerConfig, KafkaBroker
from kernels import Kernel, set_kernel
from model import PRESETS
from streaming.sample import Behavior, Sample, Target, make_sample_id
from trainer.loop import Trainer, TrainerConfig, resolve_device
from trainer.source import SourceConfig

OUT = REPO_ROOT / "reports" / "bench" / "trainer.json"
SCENARIOS = ("home", "search", "detail", "cart")


def synth_samples(n: int, seed: int, max_history: int) -> list[Sample]:
    """Samples shaped like the streaming worker's: a history of past actions and 1-8 labeled targets."""
    rng = random.Random(seed)
    out: list[Sample] = []
    for i in range(n):
        t0 = 1_700_000_000.0 + i
        hist = [Behavior(f"i{rng.randrange(5000)}", rng.choice(SCENARIOS), rng.choice(("click", "buy")),
                         t0 - 1000 + j, {"cat": f"c{rng.randrange(50)}", "brand": f"b{rng.randrange(200)}"})
                for j in range(rng.randrange(max_history + 1))]
        targets = []
        for j in range(rng.randrange(1, 9)):
            item = rng.randrange(5000)
            click = int(rng.random() < (0.5 if item % 3 == 0 else 0.1))
            targets.append(Target(
                f"e{i}-{j}", f"r{i}", f"i{item}", rng.choice(SCENARIOS), t0 + j, j,
                {"cat": f"c{item % 50}", "brand": f"b{item % 200}"}, {"device": rng.choice(("ios", "web"))},
                {"price": float(item % 100)}, {"item_ctr_1h": rng.random()},
                {"click": click, "conversion": int(click and rng.random() < 0.2)},
            ))
        out.append(Sample(make_sample_id(t.event_id for t in targets), f"u{rng.randrange(500)}", targets,
                          {"age": str(rng.randrange(6)), "country": rng.choice(("de", "fr", "us"))}, hist,
                          span_start=targets[0].ts, span_end=targets[-1].ts, max_event_ts=targets[-1].ts))
    return out


def _median(xs: list[float]) -> float:
    s = sorted(xs)
    return s[len(s) // 2] if len(s) % 2 else (s[len(s) // 2 - 1] + s[len(s) // 2]) / 2


def movielens_samples(limit: int | None) -> list[Sample]:
    """MovieLens-100K user-level samples as the streaming worker writes them (the pure core, offline)."""
    from streaming.core import run_offline
    from streaming.datasets.movielens import DEFAULT_CACHE, ensure_movielens, load_movielens

    samples = run_offline(load_movielens(ensure_movielens(REPO_ROOT / DEFAULT_CACHE)))
    return samples[:limit] if limit else samples


# --compare: the two configurations run side by side (interleaved A/B pairs); the first is "A"
COMPARISONS: dict[str, tuple[tuple[str, dict[str, Any]], tuple[str, dict[str, Any]]]] = {
    "prefetch": (("prefetch=2", {"prefetch": 2}), ("prefetch=0", {"prefetch": 0})),
    "attention": (("split", {"kernel": Kernel.AUTO}), ("reference", {"kernel": Kernel.REFERENCE})),
}


def run_once(bootstrap: str, topic: str, mode: dict[str, Any], args: argparse.Namespace, n: int) -> dict[str, Any]:
    preset = PRESETS[args.model]
    spec = preset.feature_spec()
    torch.manual_seed(0)
    model = preset.build(spec)
    prefetch = int(mode.get("prefetch", args.prefetch))
    run_dir = Path(tempfile.mkdtemp(prefix=f"bench-trainer-p{prefetch}-"))
    set_kernel(mode.get("kernel", Kernel.AUTO))
    try:
        cfg = TrainerConfig(
            source=SourceConfig(bootstrap=bootstrap, topic=topic, deadletter_topic="", batch_samples=args.batch_samples,
                                prefetch=prefetch),
            run_dir=run_dir, snapshots_topic="", log_every_s=1e9, snapshot_every_s=args.snapshot_every_s,
        )
        trainer = Trainer(cfg, model, spec, CollectorRegistry())
        t0 = time.monotonic()
        s = trainer.run(max_samples=n, max_seconds=args.timeout)
        wall = time.monotonic() - t0
    finally:
        set_kernel(Kernel.AUTO)
        shutil.rmtree(run_dir, ignore_errors=True)
    steady_wait = s.data_wait_s - s.startup_wait_s
    busy = steady_wait + s.compute_s
    return {
        "mode": mode["name"], "prefetch": prefetch, "samples": s.samples_trained, "impressions": s.targets_trained, "steps": s.steps,
        "wall_s": wall, "samples_per_s": s.samples_trained / wall, "impressions_per_s": s.targets_trained / wall,
        # after the first batch arrived (excludes consumer assignment and the first fetch)
        "steady_impressions_per_s": s.targets_trained / max(1e-9, wall - s.startup_wait_s),
        "data_wait_s": s.data_wait_s, "startup_wait_s": s.startup_wait_s, "steady_wait_s": steady_wait,
        "compute_s": s.compute_s, "persist_s": s.persist_s,
        "stall_fraction": steady_wait / busy if busy else None,
        "compute_samples_per_s": s.samples_trained / s.compute_s if s.compute_s else None,
    }


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m benchmarks.bench_trainer", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--samples", type=int, default=768, help="samples produced and trained per run (default %(default)s)")
    ap.add_argument("--batch-samples", type=int, default=64, help="samples per batch (default %(default)s)")
    ap.add_argument("--max-history", type=int, default=48, help="max history length of synthetic samples")
    ap.add_argument("--rounds", type=int, default=2, help="interleaved A/B run pairs (default %(default)s)")
    ap.add_argument("--data", choices=["synthetic", "movielens"], default="synthetic",
                    help="synthetic samples, or MovieLens-100K's (the pure streaming core offline; --samples caps them)")
    ap.add_argument("--model", choices=sorted(PRESETS), default="base",
                    help="the named preset (model/presets.py): base = python -m trainer's default, laptop = the "
                         "demo's (default %(default)s)")
    ap.add_argument("--compare", choices=sorted(COMPARISONS), default="prefetch",
                    help="prefetch: --prefetch 2 vs 0; attention: split CPU training attention vs the padded "
                         "reference (default %(default)s)")
    ap.add_argument("--prefetch", type=int, default=SourceConfig().prefetch,
                    help="prefetch depth where --compare does not set it (default %(default)s)")
    ap.add_argument("--threads", type=int, default=0, help="torch intra-op threads, 0 = torch default")
    ap.add_argument("--snapshot-every-s", type=float, default=TrainerConfig().snapshot_every_s,
                    help="snapshot cadence inside the runs (default %(default)s)")
    ap.add_argument("--timeout", type=float, default=900.0, help="give up a run after this many seconds")
    ap.add_argument("--out", type=Path, default=OUT, help="JSON report path (default %(default)s)")
    args = ap.parse_args(argv)

    if args.threads > 0:
        torch.set_num_threads(args.threads)
    if args.data == "movielens":
        samples = movielens_samples(args.samples)
    else:
        samples = synth_samples(args.samples, seed=0, max_history=args.max_history)
    (name_a, mode_a), (name_b, mode_b) = COMPARISONS[args.compare]
    modes = ({"name": name_a, **mode_a}, {"name": name_b, **mode_b})
    state = Path(tempfile.mkdtemp(prefix="bench-trainer-kafka-"))
    broker = KafkaBroker(BrokerConfig(state_dir=state, port=0, heap="512m"))
    broker.start()
    try:
        from kafka import KafkaProducer

        topic = f"bench-samples-{os.getpid()}"
        producer = KafkaProducer(bootstrap_servers=broker.bootstrap, linger_ms=20)
        for s in samples:
            producer.send(topic, key=s.user_id.encode(), value=s.encode())
        producer.flush(timeout=60)
        producer.close()
        run_once(broker.bootstrap, topic, modes[0], args, min(len(samples), 2 * args.batch_samples))  # warm-up
        # Interleaved A/B/A/B so drift in a shared machine's load hits both modes alike.
        runs = [run_once(broker.bootstrap, topic, m, args, len(samples)) for _ in range(args.rounds) for m in modes]
    finally:
        broker.stop()
        shutil.rmtree(state, ignore_errors=True)

    device = resolve_device("auto")
    report = {
        "benchmark": "trainer",
        "command": "python -m benchmarks.bench_trainer " + " ".join(argv if argv is not None else sys.argv[1:]),
        "machine": {"platform": platform.platform(), "python": platform.python_version(), "cpus": os.cpu_count(),
                    "device": str(device), "torch": torch.__version__, "torch_threads": torch.get_num_threads(),
                    "cuda": torch.cuda.get_device_name(0) if device.type == "cuda" else None},
        "config": {"samples": len(samples), "data": args.data, "batch_samples": args.batch_samples,
                   "max_history": args.max_history if args.data == "synthetic" else None,
                   "model": args.model, "preset": dataclasses.asdict(PRESETS[args.model].ranker), "compare": args.compare,
                   "snapshot_every_s": args.snapshot_every_s,
                   "mean_targets_per_sample": sum(s.num_targets for s in samples) / len(samples)},
        "runs": runs,
        "median_impressions_per_s": {m["name"]: _median([r["impressions_per_s"] for r in runs if r["mode"] == m["name"]])
                                     for m in modes},
        "speedup": _median([a["samples_per_s"] / b["samples_per_s"] for a, b in zip(runs[::2], runs[1::2], strict=True)]),
        "steady_speedup": _median([a["steady_impressions_per_s"] / b["steady_impressions_per_s"]
                                   for a, b in zip(runs[::2], runs[1::2], strict=True)]),
        "created_at": time.time(),
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2, default=str))
    hdr = (f"{'mode':>10} {'samples/s':>10} {'impr/s':>9} {'steady':>9} {'startup s':>9} {'wait s':>8} "
           f"{'compute s':>9} {'persist s':>9} {'stall':>6}")
    print(f"trainer on {device} ({len(samples)} {args.data} samples, model {args.model}, batch {args.batch_samples}, "
          f"{torch.get_num_threads()} threads); broker on this machine")
    print(hdr)
    for r in runs:
        print(f"{r['mode']:>10} {r['samples_per_s']:>10.1f} {r['impressions_per_s']:>9.1f} "
              f"{r['steady_impressions_per_s']:>9.1f} "
              f"{r['startup_wait_s']:>9.2f} {r['steady_wait_s']:>8.2f} "
              f"{r['compute_s']:>9.2f} {r['persist_s']:>9.2f} {r['stall_fraction']:>6.1%}")
    print(f"median {name_a}/{name_b} speedup over {args.rounds} interleaved pairs: {report['speedup']:.2f}x "
          f"(after the first batch: {report['steady_speedup']:.2f}x)  → {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
