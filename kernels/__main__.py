"""``python -m kernels``: check which implementation each op would use here."""

from __future__ import annotations

import argparse
import sys


def main(argv: list[str] | None = None) -> int:
    import kernels

    parser = argparse.ArgumentParser(prog="python -m kernels", description=(kernels.__doc__ or "").replace("``", ""))
    parser.parse_args(argv)
    import torch

    from kernels.attention.triton_kernels import _hta_fwd_kernel
    from kernels.dispatch import HAS_TRITON, is_interpreted, triton_interpret, use_triton

    cuda = torch.cuda.is_available()
    print(f"torch {torch.__version__}, CUDA available: {cuda}, kernel mode: {kernels.get_kernel().value}")
    print(f"triton installed: {HAS_TRITON}, TRITON_INTERPRET=1: {triton_interpret()}, "
          f"kernels interpreted: {is_interpreted(_hta_fwd_kernel)}")  # fmt: skip
    for device in ["cpu", "cuda"] if cuda else ["cpu"]:
        path = "triton" if use_triton(torch.empty(0, device=device)) else "reference"
        print(f"hta_attention / group_layer_norm on {device} tensors: {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
