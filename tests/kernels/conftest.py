"""Kernel tests run the real Triton kernels: compiled on a CUDA host, in Triton's interpreter on the CPU elsewhere.

The interpreter is chosen when ``@triton.jit`` decorates a function, and Triton's own ``tl.sum``/``tl.max`` are
decorated when ``triton`` is first imported, so ``TRITON_INTERPRET=1`` has to be set before that import. Other test
packages in the same pytest process must keep the fast CPU reference, so this file sets the variable only for the
import of ``triton`` and ``kernels``, pins Triton's own ``knobs.runtime.interpret``, then restores the variable:
``Kernel.AUTO`` reads the variable per call (and picks the reference again) while the kernels stay interpreted. The tests here force the Triton path with the ``triton_device``
fixture (``set_kernel(Kernel.TRITON)``, restored afterwards).

If something imported ``triton`` before this file (``pytest tests/trainer tests/kernels``), the in-process kernel
tests skip and ``test_interpreter.py::test_kernel_suite_in_fresh_interpreter_process`` reruns this folder in a
subprocess with the variable set from the start.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Iterator

import pytest
import torch

HAS_CUDA = torch.cuda.is_available()

if not HAS_CUDA and "triton" not in sys.modules:
    _previous = os.environ.get("TRITON_INTERPRET")
    os.environ["TRITON_INTERPRET"] = "1"
    try:
        import triton  # decorates triton.language's jit functions for the interpreter

        # Triton reads the variable again later (lazy imports such as gluon's assert it); pin its own knob so that
        # restoring the environment below changes only kernels.dispatch's Kernel.AUTO choice.
        triton.knobs.runtime.interpret = True
        import kernels.attention  # decorates the kernels for the interpreter
        import kernels.group_norm  # noqa: F401
    finally:
        if _previous is None:
            del os.environ["TRITON_INTERPRET"]
        else:
            os.environ["TRITON_INTERPRET"] = _previous

from kernels.attention.triton_kernels import _hta_fwd_kernel  # noqa: E402
from kernels.dispatch import HAS_TRITON, Kernel, get_kernel, is_interpreted, set_kernel  # noqa: E402

INTERPRETED = is_interpreted(_hta_fwd_kernel)
TRITON_DEVICE: str | None = "cuda" if HAS_CUDA and HAS_TRITON else ("cpu" if INTERPRETED else None)
SKIP_REASON = (
    "triton is not installed"
    if not HAS_TRITON
    else "triton was imported before tests/kernels/conftest.py could enable its interpreter; "
    "test_kernel_suite_in_fresh_interpreter_process reruns these tests in a subprocess"
)


@pytest.fixture
def triton_device() -> Iterator[str]:
    """Force the Triton path for one test; yields the device its tensors go on ("cpu" = interpreter)."""
    if TRITON_DEVICE is None:
        pytest.skip(SKIP_REASON)
    previous, threads = get_kernel(), torch.get_num_threads()
    set_kernel(Kernel.TRITON)
    torch.set_num_threads(
        1
    )  # tiny tensors: on a shared 2-core box intra-op threads only contend (100x slower)
    try:
        yield TRITON_DEVICE
    finally:
        set_kernel(previous)
        torch.set_num_threads(threads)


def rel_err(actual: torch.Tensor, expected: torch.Tensor) -> float:
    """||actual - expected|| / ||expected|| in float64 (0 for two empty or two zero tensors)."""
    a, e = actual.detach().double().cpu(), expected.detach().double().cpu()
    assert a.shape == e.shape, (a.shape, e.shape)
    den = e.norm().item()
    num = (a - e).norm().item()
    return num / den if den > 0 else num


def assert_close_to_fp64(
    actual: torch.Tensor, same_dtype_ref: torch.Tensor, fp64_ref: torch.Tensor, what: str, atol: float = 1e-5
) -> None:
    """flash-attention's rule: the kernel's relative error vs float64 is at most 2x the same-dtype PyTorch
    reference's error + ``atol``."""
    err = rel_err(actual, fp64_ref)
    base = rel_err(same_dtype_ref, fp64_ref)
    assert err <= 2 * base + atol, f"{what}: relative error {err:.3e} vs PyTorch same-dtype {base:.3e}"
