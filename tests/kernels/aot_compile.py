"""Compile every Triton kernel for a real GPU target on a machine without one (Triton frontend + bundled ptxas).

    .venv/bin/python -m tests.kernels.aot_compile            # sm_90 (H100), bf16, head dim 128
    .venv/bin/python -m tests.kernels.aot_compile --arch 80 --dtype fp16 --head-dim 64

The interpreter runs kernels as NumPy and accepts things the compiler rejects (types across branches, early
returns, layouts); this catches those, and prints ptxas's registers and spill bytes per kernel and tile. Run it
without ``TRITON_INTERPRET`` (the test runs it in a fresh process). Nothing here needs a GPU or a driver.
"""

from __future__ import annotations

import argparse
import os
import re
import subprocess
import sys
import tempfile
from typing import Any

import triton
from triton.backends.compiler import GPUTarget
from triton.compiler import ASTSource

from kernels.attention.triton_kernels import _hta_bwd_dkdv_kernel, _hta_bwd_dq_kernel, _hta_fwd_kernel
from kernels.group_norm import _gln_bwd_kernel, _gln_fwd_kernel, _tile

PTXAS = os.path.join(os.path.dirname(triton.__file__), "backends", "nvidia", "bin", "ptxas")


def _signature(fn: Any, consts: dict[str, Any], dtype: str) -> dict[str, str]:
    ptr = {"Q", "K", "V", "OUT", "DO", "DQ", "DK", "DV", "X", "Y", "DY", "DX"}
    f32 = {"STAT", "DELTA", "KV_TS", "W", "B", "MEAN", "RSTD", "DW_PART", "DB_PART"}
    i64 = {"Q_OFF", "KV_OFF", "Q_POS", "KV_GRP", "GRP"}
    sig = {}
    for name in fn.arg_names:
        if name in consts:
            sig[name] = "constexpr"
        elif name in ptr:
            sig[name] = f"*{dtype}"
        elif name in f32:
            sig[name] = "*fp32"
        elif name in i64:
            sig[name] = "*i64"
        elif name in {"scale", "eps"}:
            sig[name] = "fp32"
        else:
            sig[name] = "i32"  # strides, sizes
    return sig


def compile_one(
    fn: Any, consts: dict[str, Any], dtype: str, arch: int, num_warps: int, num_stages: int
) -> str:
    """Compile to PTX and run ptxas -v; returns a one-line summary (raises on any compile error)."""
    src = ASTSource(fn=fn, signature=_signature(fn, consts, dtype), constexprs=consts)
    kernel = triton.compile(
        src, target=GPUTarget("cuda", arch, 32), options={"num_warps": num_warps, "num_stages": num_stages}
    )
    ptx = kernel.asm["ptx"]
    gpu = re.search(r"\.target (\S+)", ptx)
    with tempfile.NamedTemporaryFile("w", suffix=".ptx", delete=False) as f:
        f.write(ptx)
    try:
        out = subprocess.run(
            [PTXAS, "-v", f"--gpu-name={gpu.group(1) if gpu else f'sm_{arch}'}", f.name, "-o", os.devnull],
            capture_output=True,
            text=True,
            check=True,
        ).stderr
    finally:
        os.unlink(f.name)
    regs = re.findall(r"Used (\d+) registers", out)
    spills = re.findall(r"(\d+) bytes spill stores", out)
    tiles = {k: v for k, v in consts.items() if k.startswith("BLOCK")}
    return (
        f"{fn.__name__:22s} {consts.get('SILU', '')!s:5s} {tiles!s:48s} warps={num_warps} "
        f"regs={regs[0] if regs else '?'} spill_bytes={spills[0] if spills else '?'} shared={kernel.metadata.shared}"
    )


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        prog="python -m tests.kernels.aot_compile", description=__doc__.split("\n")[0]
    )
    p.add_argument("--arch", type=int, default=90, help="compute capability x10 (90 = H100/H200, 80 = A100)")
    p.add_argument("--dtype", default="bf16", choices=["bf16", "fp16", "fp32"], help="activation dtype")
    p.add_argument("--head-dim", type=int, default=128, help="attention head dim")
    p.add_argument("--model-dim", type=int, default=768, help="Group LayerNorm feature dim")
    args = p.parse_args(argv)
    if os.environ.get("TRITON_INTERPRET") == "1":
        print("unset TRITON_INTERPRET: this compiles for the GPU", file=sys.stderr)
        return 2
    block_d = max(16, triton.next_power_of_2(args.head_dim))
    prec = "ieee" if args.dtype == "fp32" else "tf32"
    for silu in (False, True):
        common = {"GQA": 3, "SILU": silu, "DOT_PRECISION": prec, "BLOCK_D": block_d}
        print(
            compile_one(
                _hta_fwd_kernel,
                {**common, "HQ": 6, "BLOCK_M": 128, "BLOCK_N": 32},
                args.dtype,
                args.arch,
                8,
                3,
            )
        )
        print(
            compile_one(
                _hta_bwd_dq_kernel,
                {**common, "HQ": 6, "BLOCK_M": 32, "BLOCK_N": 64},
                args.dtype,
                args.arch,
                4,
                2,
            )
        )
        print(
            compile_one(
                _hta_bwd_dkdv_kernel,
                {**common, "HKV": 2, "BLOCK_M": 32, "BLOCK_N": 32},
                args.dtype,
                args.arch,
                4,
                2,
            )
        )
    block_m, block_dn, warps = _tile(True, args.model_dim, 4)
    norm = {"G": 4, "BLOCK_M": block_m, "BLOCK_D": block_dn}
    print(compile_one(_gln_fwd_kernel, norm, args.dtype, args.arch, warps, 1))
    print(compile_one(_gln_bwd_kernel, {**norm, "BLOCK_G": 4}, args.dtype, args.arch, warps, 1))
    print("compiled: all kernels")
    return 0


if __name__ == "__main__":
    sys.exit(main())
