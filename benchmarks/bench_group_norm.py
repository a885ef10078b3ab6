"""Group LayerNorm: fused Triton kernel vs the eager PyTorch reference (and ``torch.compile`` of it), on one GPU.

    .venv/bin/python -m benchmarks.bench_group_norm                  # 32k tokens x 768, 4 groups, bf16 activations
    .venv/bin/python -m benchmarks.bench_group_norm --tokens 131072 --dim 1024

A memory-bound op, so the figure of merit is bandwidth. Bytes moved (e = activation bytes per element, parameters
float32, G groups, N tokens, D features)::

    forward   2 * e * N * D + 8 * N + 8 * N + 2 * 4 * G * D        (read x, write y; group ids; mean/rstd; w, b)
    backward  3 * e * N * D + 8 * N + 8 * N + 4 * G * D + 2 * 4 * P * G * D   (read x, dy, write dx; ids; stats;
              w; the per-program partial dweight/dbias, P programs)

FLOPs (for completeness) ~ 8 * N * D forward, ~ 14 * N * D backward. Times: ``triton.testing.do_bench`` median (ms);
GB/s uses the formulas above. Without a CUDA GPU the script says so and writes that to
reports/bench/group_norm.json; no numbers are invented.
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from kernels import group_layer_norm, group_layer_norm_reference
from kernels.group_norm import _tile

REPO = Path(__file__).resolve().parents[1]
OUT = REPO / "reports" / "bench" / "group_norm.json"


def bytes_moved(n: int, d: int, g: int, e: int, programs: int) -> dict[str, int]:
    fwd = 2 * e * n * d + 16 * n + 2 * 4 * g * d
    bwd = 3 * e * n * d + 16 * n + 4 * g * d + 2 * 4 * programs * g * d
    return {"fwd": fwd, "fwd+bwd": fwd + bwd}


def run_suite(
    n: int,
    d: int,
    g: int,
    dtype: torch.dtype,
    device: str,
    timer: Callable[[Callable[[], Any]], float],
    compile_ref: bool,
) -> list[dict[str, Any]]:
    """One row per (implementation, pass): ms, GB/s by the formulas above, error vs float64, speedups."""
    gen = torch.Generator(device=device).manual_seed(0)
    x = torch.randn(n, d, device=device, generator=gen).to(dtype)
    group = torch.randint(0, g, (n,), device=device, generator=gen)
    weight = 1 + 0.1 * torch.randn(g, d, device=device, generator=gen)
    bias = 0.1 * torch.randn(g, d, device=device, generator=gen)
    dy = torch.randn_like(x)
    impls: dict[str, Callable[..., torch.Tensor]] = {
        "triton": group_layer_norm,
        "eager": group_layer_norm_reference,
    }
    if compile_ref:
        impls["compiled"] = torch.compile(group_layer_norm_reference)
    ref = group_layer_norm_reference(x.double(), group, weight.double(), bias.double())
    block_m, _, _ = _tile(x.is_cuda, d, g)
    n_sm = torch.cuda.get_device_properties(x.device).multi_processor_count if x.is_cuda else 1
    programs = min(-(-n // block_m), 4 * n_sm)
    moved = bytes_moved(n, d, g, x.element_size(), programs)
    leaves = [t.detach().clone().requires_grad_(True) for t in (x, weight, bias)]
    rows: list[dict[str, Any]] = []
    times: dict[tuple[str, str], float] = {}
    for name, fn in impls.items():
        with torch.no_grad():
            out = fn(x, group, weight, bias)
        err = float((out.double() - ref).norm() / ref.norm())

        def fwd(fn: Callable[..., torch.Tensor] = fn) -> None:
            with torch.no_grad():
                fn(x, group, weight, bias)

        def fwd_bwd(fn: Callable[..., torch.Tensor] = fn) -> None:
            for t in leaves:
                t.grad = None
            fn(leaves[0], group, leaves[1], leaves[2]).backward(dy)

        for pass_name, run in (("fwd", fwd), ("fwd+bwd", fwd_bwd)):
            ms = timer(run)
            times[(name, pass_name)] = ms
            rows.append({"impl": name, "pass": pass_name, "ms": round(ms, 4),
                         "gbps": round(moved[pass_name] / ms / 1e6, 1), "rel_err_vs_fp64": float(f"{err:.3e}")})  # fmt: skip
    for r in rows:
        if r["impl"] == "triton":
            for base in ("eager", "compiled"):
                if (base, r["pass"]) in times:
                    r[f"speedup_vs_{base}"] = round(
                        times[(base, r["pass"])] / times[("triton", r["pass"])], 2
                    )
    return rows


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        prog="python -m benchmarks.bench_group_norm", description=__doc__.split("\n")[0]
    )
    p.add_argument("--tokens", type=int, default=32768, help="rows N (tokens of all users)")
    p.add_argument("--dim", type=int, default=768, help="features D")
    p.add_argument("--groups", type=int, default=4, help="token groups G (U, H, R, T)")
    p.add_argument(
        "--dtype", default="bfloat16", choices=["bfloat16", "float16", "float32"], help="activation dtype"
    )
    p.add_argument("--no-compile", action="store_true", help="skip the torch.compile baseline")
    p.add_argument("--out", type=Path, default=OUT, help="JSON report path")
    args = p.parse_args(argv)
    command = "python -m benchmarks.bench_group_norm " + " ".join(argv if argv is not None else sys.argv[1:])
    result: dict[str, Any] = {"bench": "group_norm", "command": command.strip(), "config": vars(args) | {"out": str(args.out)},
                              "torch": torch.__version__, "host": platform.platform()}  # fmt: skip
    if not torch.cuda.is_available():
        msg = "No CUDA GPU available on this machine: no GPU numbers were measured."
        print(msg)
        result.update(gpu=False, measured_on_gpu=False, note=msg, rows=[])
        _write(result, args.out)
        return 0

    import triton.testing

    def timer(fn: Callable[[], Any]) -> float:
        return float(triton.testing.do_bench(fn, warmup=25, rep=100, return_mode="median"))

    rows = run_suite(
        args.tokens, args.dim, args.groups, getattr(torch, args.dtype), "cuda", timer, not args.no_compile
    )
    name = torch.cuda.get_device_name()
    print(f"device: {name}; N={args.tokens} D={args.dim} G={args.groups} {args.dtype}")
    cols = ["impl", "pass", "ms", "gbps", "speedup_vs_eager", "speedup_vs_compiled", "rel_err_vs_fp64"]
    print(" ".join(f"{c:>20}" for c in cols))
    for r in rows:
        print(" ".join(f"{r.get(c, '-')!s:>20}" for c in cols))
    result.update(gpu=True, measured_on_gpu=True, device=name, rows=rows)
    _write(result, args.out)
    return 0


def _write(result: dict[str, Any], out: Path) -> None:
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {out}")


if __name__ == "__main__":
    sys.exit(main())
