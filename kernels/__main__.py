"""``python -m kernels``: check which implementation each op would use here."""

from __future__ import annotations

import argparse
import sys


def main(argv: list[str] | None = None) -> int:
    import kernels

    parser = argparse.ArgumentParser(prog="python -m kernels", description=kernels.__doc__)
    parser.parse_args(argv)
    import torch

    print(
        f"torch {torch.__version__}, CUDA available: {torch.cuda.is_available()}, kernel mode: {kernels.get_kernel().value}"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
