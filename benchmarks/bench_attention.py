"""Jagged HTA attention: Triton kernel vs the eager PyTorch reference vs FlexAttention, on one GPU.

    .venv/bin/python -m benchmarks.bench_attention                       # ~1k tokens per user, bf16, GQA 6:2, d 128
    .venv/bin/python -m benchmarks.bench_attention --users 8 --mean-len 4096 --targets 256

Workload: ``--users`` users, lengths uniform in mean-len * [1 - jitter, 1 + jitter], each with one U token, H and R
tokens, and ``--targets`` T tokens (``kernels.testing.make_hta_inputs``). Two layers: ``full`` (every token is a query)
and ``target`` (the T tokens are the queries, all tokens are keys); two kinds: softmax and SiLU.

FLOPs count only visible (query, key) pairs P (the mask is evaluated once with ``visibility_mask``)::

    forward           4 * P * Hq * D          (S = QK^T and O = PV, 2 FLOPs per multiply-add)
    forward+backward 14 * P * Hq * D          (+ recomputed S, dV, dP, dQ, dK: flash-attention's 2.5x convention)

Bytes (the minimum traffic of a fused forward; e = bytes per element)::

    e * D * (2 * Nq * Hq + 2 * Nk * Hkv) + 12 * Nk + 8 * Nq + 4 * Nq * Hq
    (q and out, k and v once; ts float32 + group int64 per key, q_pos int64, the saved float32 statistic)

Baselines on the same inputs: (a) ``hta_attention_reference`` (eager, padded to the longest user); (b)
``torch.nn.attention.flex_attention`` (``torch.compile``d) over all users concatenated into one sequence with a
block mask = same user AND the HTA rule, GQA via ``enable_gqa``. Flex has no pointwise-SiLU normalisation, so SiLU
rows compare with eager only. Building Flex's block mask is timed separately (it is per batch in training).
Times: ``triton.testing.do_bench`` median (ms). Targets for the full layer at ~1k tokens/user on an H100: >= 3x
eager, >= 1.3x Flex, >= 40% of dense bf16 peak.

Without a CUDA GPU the script says so, writes that to reports/bench/attention.json and measures nothing on a GPU;
it then runs a small CPU sanity check (Flex's mask agrees with the reference; CPU timings only, not GPU claims).
"""

from __future__ import annotations

import argparse
import functools
import json
import platform
import statistics
import sys
import time
import warnings
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch

from kernels import AttentionKind, Kernel, hta_attention, hta_attention_reference, set_kernel
from kernels.attention import visibility_mask
from kernels.testing import HTAInputs, make_hta_inputs

REPO = Path(__file__).resolve().parents[1]
OUT = REPO / "reports" / "bench" / "attention.json"
# dense bf16 tensor-core peak (TFLOP/s, no sparsity) by device-name substring
BF16_PEAK_TFLOPS = {"H100 SXM": 989.4, "H100 80GB HBM3": 989.4, "H100 PCIe": 756.0, "H100": 989.4, "H200": 989.4,
                    "A100": 312.0, "L40S": 362.0, "L4": 121.0}  # fmt: skip


@dataclass(frozen=True)
class BenchConfig:
    """Workload shape (flags of the same names)."""

    users: int = 32
    mean_len: int = 1024
    jitter: float = 0.25
    targets: int = 64
    q_heads: int = 6
    kv_heads: int = 2
    head_dim: int = 128
    dtype: str = "bfloat16"
    seed: int = 0


def make_inputs(cfg: BenchConfig, layer: str, device: str) -> HTAInputs:
    g = torch.Generator().manual_seed(cfg.seed)
    lo, hi = int(cfg.mean_len * (1 - cfg.jitter)), int(cfg.mean_len * (1 + cfg.jitter))
    lengths = torch.randint(max(lo, 1), max(hi, 1) + 1, (cfg.users,), generator=g).tolist()
    return make_hta_inputs(
        lengths,
        [min(cfg.targets, n) for n in lengths],
        q_heads=cfg.q_heads,
        kv_heads=cfg.kv_heads,
        head_dim=cfg.head_dim,
        target_only=layer == "target",
        dtype=getattr(torch, cfg.dtype),
        device=device,
        seed=cfg.seed,
    )


def visible_pairs(x: HTAInputs) -> int:
    """Number of visible (query, key) pairs P (per head)."""
    vis = visibility_mask(x.layout())
    return int(vis.sum())


def min_bytes(x: HTAInputs) -> int:
    n_q, hq, d = x.q.shape
    n_k, hkv, _ = x.k.shape
    e = x.q.element_size()
    return e * d * (2 * n_q * hq + 2 * n_k * hkv) + 12 * n_k + 8 * n_q + 4 * n_q * hq


def flex_runner(x: HTAInputs, compiled: bool) -> tuple[Callable[..., torch.Tensor], Callable[[], Any]]:
    """(run(q, k, v) -> (Nq, Hq, D), build_block_mask) for FlexAttention over the concatenated users."""
    from torch.nn.attention.flex_attention import create_block_mask, flex_attention

    dev = x.q.device
    n_users = x.q_offsets.numel() - 1
    users = torch.arange(n_users, device=dev)
    q_user = torch.repeat_interleave(users, x.q_offsets.diff())  # (Nq,)
    kv_user = torch.repeat_interleave(users, x.kv_offsets.diff())  # (Nk,)
    q_row = x.kv_offsets[q_user] + x.q_pos  # (Nq,) global key row of each query's own token
    ts, grp = x.kv_ts, x.kv_group

    def mask_mod(b: Any, h: Any, qi: Any, kj: Any) -> Any:
        own = q_row[qi]
        g = grp[kj]
        seen = (own == kj) | (g == 0) | (g == 1) | ((g == 2) & (ts[kj] < ts[own]))
        return (q_user[qi] == kv_user[kj]) & seen

    n_q, n_k = x.q.shape[0], x.k.shape[0]

    def build() -> Any:
        return create_block_mask(mask_mod, None, None, n_q, n_k, device=dev, _compile=compiled)

    block_mask = build()
    if compiled:
        attn = torch.compile(flex_attention, dynamic=False)
    else:  # CPU sanity: the unfused path is the point (it checks the mask), so silence its advice to compile
        warnings.filterwarnings("ignore", message="flex_attention called without torch.compile")
        attn = flex_attention

    def run(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        out = attn(
            q.transpose(0, 1)[None],  # (1, Hq, Nq, D)
            k.transpose(0, 1)[None],  # (1, Hkv, Nk, D)
            v.transpose(0, 1)[None],
            block_mask=block_mask,
            enable_gqa=True,
        )
        return out[0].transpose(0, 1)  # type: ignore[index,no-any-return]

    return run, build


def rel_err(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a.double() - b.double()).norm() / b.double().norm().clamp(min=1e-30))


def perf_timer(fn: Callable[[], Any], reps: int = 3) -> float:
    """Median wall time in ms (CPU sanity mode)."""
    fn()
    times = []
    for _ in range(reps):
        t0 = time.perf_counter()
        fn()
        times.append((time.perf_counter() - t0) * 1e3)
    return statistics.median(times)


def cuda_timer(fn: Callable[[], Any]) -> float:
    import triton.testing

    return float(triton.testing.do_bench(fn, warmup=25, rep=100, return_mode="median"))


def run_suite(
    cfg: BenchConfig,
    device: str,
    timer: Callable[[Callable[[], Any]], float],
    layers: list[str],
    kinds: list[AttentionKind],
    compile_flex: bool,
    with_triton: bool = True,
    with_eager: bool = True,
    with_flex: bool = True,
) -> list[dict[str, Any]]:
    """One row per (layer, kind, pass, implementation), all on the same inputs per layer."""
    rows: list[dict[str, Any]] = []
    for layer in layers:
        x = make_inputs(cfg, layer, device)
        flex, mask_ms = None, None
        if with_flex and AttentionKind.SOFTMAX in kinds:
            flex, build = flex_runner(x, compiled=compile_flex)
            mask_ms = timer(build)
        for kind in kinds:
            impls: dict[str, Callable[..., torch.Tensor]] = {}
            if with_triton:
                impls["triton"] = functools.partial(_call, hta_attention, x, kind)
            if with_eager:
                impls["eager"] = functools.partial(_call, hta_attention_reference, x, kind)
            if flex is not None and kind is AttentionKind.SOFTMAX:
                impls["flex"] = flex
            rows += _bench_impls(x, layer, kind, impls, timer, mask_ms)
    return rows


def _call(
    op: Callable[..., torch.Tensor], x: HTAInputs, kind: AttentionKind, q: Any, k: Any, v: Any
) -> torch.Tensor:
    return op(q, k, v, *x.meta(), kind)


def _bench_impls(
    x: HTAInputs,
    layer: str,
    kind: AttentionKind,
    impls: dict[str, Callable[..., torch.Tensor]],
    timer: Callable[[Callable[[], Any]], float],
    mask_ms: float | None,
) -> list[dict[str, Any]]:
    """Forward and forward+backward of every implementation on x; speedups of "triton" over the others."""
    pairs = visible_pairs(x)
    n_q, hq, d = x.q.shape
    flops = {"fwd": 4 * pairs * hq * d, "fwd+bwd": 14 * pairs * hq * d}
    leaves = [t.detach().clone().requires_grad_(True) for t in (x.q, x.k, x.v)]
    grad_out = torch.randn_like(x.q)
    with torch.no_grad():
        ref = hta_attention_reference(x.q.double(), x.k.double(), x.v.double(), *x.meta(), kind)
    rows: list[dict[str, Any]] = []
    times: dict[tuple[str, str], float] = {}
    for name, fn in impls.items():
        with torch.no_grad():
            err = rel_err(fn(x.q, x.k, x.v), ref)

        def fwd(fn: Callable[..., torch.Tensor] = fn) -> None:
            with torch.no_grad():
                fn(x.q, x.k, x.v)

        def fwd_bwd(fn: Callable[..., torch.Tensor] = fn) -> None:
            for t in leaves:
                t.grad = None
            fn(*leaves).backward(grad_out)

        for pass_name, run in (("fwd", fwd), ("fwd+bwd", fwd_bwd)):
            if name == "flex" and pass_name == "fwd+bwd" and not x.q.is_cuda:
                continue  # FlexAttention has no CPU backward
            ms = timer(run)
            times[(name, pass_name)] = ms
            row: dict[str, Any] = {
                "layer": layer,
                "kind": kind.value,
                "pass": pass_name,
                "impl": name,
                "ms": round(ms, 4),
                "tflops": round(flops[pass_name] / ms / 1e9, 2),
                "rel_err_vs_fp64": float(f"{err:.3e}"),
                "queries": n_q,
                "keys": x.k.shape[0],
                "visible_pairs": pairs,
            }
            if pass_name == "fwd":
                row["gbps"] = round(min_bytes(x) / ms / 1e6, 1)
            if name == "flex" and mask_ms is not None:
                row["flex_block_mask_ms"] = round(mask_ms, 4)
            rows.append(row)
    for row in rows:
        if row["impl"] == "triton":
            for base in ("eager", "flex"):
                if (base, row["pass"]) in times:
                    row[f"speedup_vs_{base}"] = round(
                        times[(base, row["pass"])] / times[("triton", row["pass"])], 2
                    )
    return rows


def print_table(rows: list[dict[str, Any]]) -> None:
    cols = [
        "layer",
        "kind",
        "pass",
        "impl",
        "ms",
        "tflops",
        "speedup_vs_eager",
        "speedup_vs_flex",
        "rel_err_vs_fp64",
    ]
    print(" ".join(f"{c:>16}" for c in cols))
    for r in rows:
        print(" ".join(f"{r.get(c, '-')!s:>16}" for c in cols))


def _write(result: dict[str, Any], out: Path) -> None:
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {out}")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        prog="python -m benchmarks.bench_attention", description=__doc__.split("\n")[0]
    )
    d = BenchConfig()
    p.add_argument("--users", type=int, default=d.users, help="users per batch")
    p.add_argument("--mean-len", type=int, default=d.mean_len, help="mean tokens per user")
    p.add_argument("--jitter", type=float, default=d.jitter, help="lengths uniform in mean*[1-j, 1+j]")
    p.add_argument("--targets", type=int, default=d.targets, help="T tokens per user")
    p.add_argument("--q-heads", type=int, default=d.q_heads, help="query heads")
    p.add_argument("--kv-heads", type=int, default=d.kv_heads, help="key/value heads (GQA)")
    p.add_argument("--head-dim", type=int, default=d.head_dim, help="head dimension")
    p.add_argument(
        "--dtype", default=d.dtype, choices=["bfloat16", "float16", "float32"], help="GPU input dtype"
    )
    p.add_argument("--layers", default="full,target", help="comma list of full,target")
    p.add_argument("--kinds", default="softmax,silu", help="comma list of softmax,silu")
    p.add_argument(
        "--no-cpu-sanity", action="store_true", help="without a GPU, skip the small CPU sanity check"
    )
    p.add_argument("--out", type=Path, default=OUT, help="JSON report path")
    args = p.parse_args(argv)
    cfg = BenchConfig(args.users, args.mean_len, args.jitter, args.targets, args.q_heads, args.kv_heads,
                      args.head_dim, args.dtype)  # fmt: skip
    layers = args.layers.split(",")
    kinds = [AttentionKind(k) for k in args.kinds.split(",")]
    command = "python -m benchmarks.bench_attention " + " ".join(argv if argv is not None else sys.argv[1:])
    result: dict[str, Any] = {"bench": "attention", "command": command.strip(), "config": asdict(cfg),
                              "torch": torch.__version__, "host": platform.platform()}  # fmt: skip

    if not torch.cuda.is_available():
        msg = "No CUDA GPU available on this machine: no GPU numbers were measured."
        print(msg)
        result.update(gpu=False, measured_on_gpu=False, note=msg, rows=[])
        if not args.no_cpu_sanity:
            small = BenchConfig(
                users=4, mean_len=96, targets=8, q_heads=2, kv_heads=1, head_dim=32, dtype="float32"
            )
            # the Triton interpreter is no speed baseline: eager reference and eager Flex only; one thread, since
            # intra-op threads on a loaded small CPU only contend
            torch.set_num_threads(1)
            rows = run_suite(
                small,
                "cpu",
                perf_timer,
                ["full", "target"],
                [AttentionKind.SOFTMAX],
                False,
                with_triton=False,
            )
            print("CPU sanity (eager reference vs eager FlexAttention; CPU timings, not GPU claims):")
            print_table(rows)
            result["cpu_sanity"] = {"config": asdict(small), "rows": rows,
                                    "note": "CPU float32, FlexAttention uncompiled; checks the Flex mask only"}  # fmt: skip
        _write(result, args.out)
        return 0

    name = torch.cuda.get_device_name()
    peak = next((v for k, v in BF16_PEAK_TFLOPS.items() if k in name), None)
    set_kernel(Kernel.AUTO)
    rows = run_suite(cfg, "cuda", cuda_timer, layers, kinds, compile_flex=True)
    print(f"device: {name}; dense bf16 peak {peak} TFLOP/s")
    print_table(rows)
    targets = []
    for r in rows:
        if r["impl"] == "triton" and r["layer"] == "full" and r["kind"] == "softmax":
            targets.append({
                "pass": r["pass"],
                "speedup_vs_eager": r.get("speedup_vs_eager"), "eager_target": 3.0,
                "speedup_vs_flex": r.get("speedup_vs_flex"), "flex_target": 1.3,
                "fraction_of_bf16_peak": round(r["tflops"] / peak, 3) if peak else None, "peak_target": 0.40,
            })  # fmt: skip
    result.update(
        gpu=True, measured_on_gpu=True, device=name, bf16_peak_tflops=peak, rows=rows, targets=targets
    )
    _write(result, args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
