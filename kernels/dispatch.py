"""Model-wide choice of implementation for the ops in ``kernels`` (generative-recommenders' HammerKernel idea).

Triton itself is optional: CPU-only torch wheels (macOS, some Linux installs) ship without it, and then every op
runs its PyTorch reference. ``triton``/``tl`` below are the real modules when installed, else a stub whose ``jit``
leaves the kernel bodies as plain (never called) functions, so the op files import everywhere.

Triton kernels run on CUDA tensors, or on CPU tensors in Triton's interpreter. The interpreter is chosen when a
kernel is *decorated*, and Triton's own ``tl.sum``/``tl.max`` are decorated when ``triton`` is imported, so
``TRITON_INTERPRET=1`` must be in the environment before the first ``import triton`` (``import kernels`` imports it).
"""

from __future__ import annotations

import enum
import os
import types
from typing import Any

import torch

try:
    import triton
    import triton.language as tl

    HAS_TRITON = True
except ImportError:  # pragma: no cover - exercised only where triton is absent
    HAS_TRITON = False
    triton = types.SimpleNamespace(jit=lambda fn: fn, cdiv=lambda a, b: -(-a // b))  # type: ignore[assignment]
    tl = types.SimpleNamespace(constexpr=int)  # type: ignore[assignment]

__all__ = [
    "HAS_TRITON",
    "Kernel",
    "get_kernel",
    "is_interpreted",
    "needs_grad",
    "set_kernel",
    "tl",
    "triton",
    "triton_interpret",
    "use_triton",
]


class Kernel(enum.Enum):
    """Which implementation an op runs.

    Example:
        >>> previous = get_kernel()
        >>> set_kernel(Kernel.REFERENCE); get_kernel()
        <Kernel.REFERENCE: 'reference'>
        >>> set_kernel(previous)
    """

    AUTO = "auto"  # Triton for CUDA tensors (or under TRITON_INTERPRET=1), the PyTorch reference otherwise
    TRITON = "triton"
    REFERENCE = "reference"


_KERNEL = Kernel.AUTO


def set_kernel(kernel: Kernel) -> None:
    """Select the implementation for every op in ``kernels`` (process-wide)."""
    global _KERNEL
    _KERNEL = kernel


def get_kernel() -> Kernel:
    """The implementation selected by :func:`set_kernel` (``Kernel.AUTO`` by default)."""
    return _KERNEL


def triton_interpret() -> bool:
    """True while ``TRITON_INTERPRET=1`` is set (read on every call)."""
    return os.environ.get("TRITON_INTERPRET", "") == "1"


def is_interpreted(kernel: Any) -> bool:
    """True when ``kernel`` (a ``@triton.jit`` object) was decorated under ``TRITON_INTERPRET=1``."""
    return HAS_TRITON and type(kernel).__name__ == "InterpretedFunction"


def needs_grad(*ts: torch.Tensor) -> bool:
    """True when autograd is on and any of ``ts`` requires a gradient (the CPU fast paths are inference-only)."""
    return torch.is_grad_enabled() and any(t.requires_grad for t in ts)


def use_triton(t: torch.Tensor) -> bool:
    """True when the op should run its Triton path for tensor ``t``.

    ``Kernel.TRITON`` forces it (the op raises a clear error if the tensor's device cannot run Triton);
    ``Kernel.AUTO`` picks it for CUDA tensors, and for CPU tensors while ``TRITON_INTERPRET=1`` is set.
    """
    if _KERNEL is Kernel.REFERENCE or not HAS_TRITON:
        return False
    if _KERNEL is Kernel.TRITON:
        return True
    return t.is_cuda or triton_interpret()


def check_triton_device(t: torch.Tensor, kernel: Any, op: str) -> None:
    """Raise a clear error when ``t`` cannot run ``kernel`` (CPU tensor, kernel compiled for the GPU)."""
    if not HAS_TRITON:
        raise RuntimeError(f"{op}: triton is not installed; use Kernel.REFERENCE")
    if t.is_cuda or is_interpreted(kernel):
        return
    raise RuntimeError(
        f"{op}: the Triton path got {t.device} tensors, but the kernels were compiled for the GPU; "
        "set TRITON_INTERPRET=1 before anything imports triton to run them on the CPU, or use Kernel.REFERENCE"
    )
