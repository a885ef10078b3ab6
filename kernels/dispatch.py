"""Model-wide choice of implementation for the ops in ``kernels`` (generative-recommenders' HammerKernel idea)."""

from __future__ import annotations

import enum
import os

import torch


class Kernel(enum.Enum):
    """Which implementation an op runs.

    Example:
        >>> set_kernel(Kernel.REFERENCE); get_kernel()
        <Kernel.REFERENCE: 'reference'>
        >>> set_kernel(Kernel.AUTO)
    """

    AUTO = "auto"  # Triton for CUDA tensors (or under TRITON_INTERPRET=1), the PyTorch reference otherwise
    TRITON = "triton"
    REFERENCE = "reference"


_KERNEL = Kernel.AUTO


def set_kernel(kernel: Kernel) -> None:
    global _KERNEL
    _KERNEL = kernel


def get_kernel() -> Kernel:
    return _KERNEL


def triton_interpret() -> bool:
    return os.environ.get("TRITON_INTERPRET", "") == "1"


def use_triton(t: torch.Tensor) -> bool:
    """True when the op should run its Triton path for tensor ``t``."""
    if _KERNEL is Kernel.REFERENCE:
        return False
    if _KERNEL is Kernel.TRITON:
        return True
    return t.is_cuda or triton_interpret()
