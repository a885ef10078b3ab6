"""How the Triton path is chosen: ``TRITON_INTERPRET=1`` before ``import triton``, ``Kernel.AUTO`` on the CPU, and
the fallback that reruns this folder in a fresh process when triton was imported too early for the interpreter."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from kernels.dispatch import HAS_TRITON
from tests.kernels.conftest import HAS_CUDA, INTERPRETED, TRITON_DEVICE

REPO = Path(__file__).resolve().parents[2]
SUBPROCESS_MARK = "STREAMREC_KERNEL_TESTS_SUBPROCESS"

_AUTO_SCRIPT = textwrap.dedent(
    """
    import os, sys
    assert "triton" not in sys.modules and os.environ["TRITON_INTERPRET"] == "1"
    import torch
    from kernels import AttentionKind, hta_attention, hta_attention_reference, group_layer_norm, group_layer_norm_reference
    from kernels.testing import make_hta_inputs
    x = make_hta_inputs([9, 0, 21], [2, 0, 4], q_heads=2, kv_heads=1, head_dim=16, target_only=False, dtype=torch.float32)
    q = x.q.requires_grad_(True)
    for kind in AttentionKind:
        out = hta_attention(q, x.k, x.v, *x.meta(), kind)  # Kernel.AUTO, CPU tensors
        assert type(out.grad_fn).__name__ == "_HTAAttentionFunctionBackward", out.grad_fn
        ref = hta_attention_reference(q, x.k, x.v, *x.meta(), kind)
        assert (out - ref).abs().max() < 1e-4
    h = torch.randn(30, 8, requires_grad=True)
    grp = torch.randint(0, 4, (30,))
    w, b = torch.randn(4, 8), torch.randn(4, 8)
    y = group_layer_norm(h, grp, w, b)
    assert type(y.grad_fn).__name__ == "_GroupLayerNormFunctionBackward", y.grad_fn
    assert (y - group_layer_norm_reference(h, grp, w, b)).abs().max() < 1e-4
    print("AUTO-TRITON-OK")
    """
)

_COMPILED_ON_CPU_SCRIPT = textwrap.dedent(
    """
    import torch
    from kernels import Kernel, hta_attention, set_kernel
    from kernels.testing import make_hta_inputs
    x = make_hta_inputs([3], [1], q_heads=1, kv_heads=1, head_dim=16, target_only=False, dtype=torch.float32)
    assert type(hta_attention(x.q, x.k, x.v, *x.meta()).grad_fn).__name__ != "_HTAAttentionFunctionBackward"
    set_kernel(Kernel.TRITON)
    try:
        hta_attention(x.q, x.k, x.v, *x.meta())
    except RuntimeError as e:
        assert "TRITON_INTERPRET=1" in str(e), e
        print("CLEAR-ERROR-OK")
    """
)


def _python(script: str, interpret: bool) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    if interpret:
        env["TRITON_INTERPRET"] = "1"
    env["CUDA_VISIBLE_DEVICES"] = ""  # CPU tensors even on a GPU host
    return subprocess.run(
        [sys.executable, "-c", script],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )


@pytest.mark.skipif(not HAS_TRITON, reason="triton is not installed")
def test_env_var_before_import_makes_auto_run_triton_on_cpu() -> None:
    """A fresh process with TRITON_INTERPRET=1 from the start: Kernel.AUTO runs both ops' Triton kernels on CPU."""
    proc = _python(_AUTO_SCRIPT, interpret=True)
    assert proc.returncode == 0 and "AUTO-TRITON-OK" in proc.stdout, proc.stderr[-3000:]


@pytest.mark.skipif(not HAS_TRITON, reason="triton is not installed")
def test_without_env_var_cpu_uses_reference_and_forced_triton_fails_clearly() -> None:
    proc = _python(_COMPILED_ON_CPU_SCRIPT, interpret=False)
    assert proc.returncode == 0 and "CLEAR-ERROR-OK" in proc.stdout, proc.stderr[-3000:]


def test_auto_reads_the_env_var_per_call(monkeypatch: pytest.MonkeyPatch) -> None:
    """In this process the kernels are interpreted but the variable is unset again, so other packages' CPU tests
    keep the fast reference under Kernel.AUTO; setting it routes AUTO to the Triton kernels."""
    import torch

    from kernels import Kernel, get_kernel, hta_attention
    from kernels.testing import make_hta_inputs

    if not INTERPRETED or HAS_CUDA:
        pytest.skip(
            "needs the in-process interpreter (CPU host, triton imported by tests/kernels/conftest.py)"
        )
    assert get_kernel() is Kernel.AUTO
    x = make_hta_inputs([5], [2], q_heads=2, kv_heads=2, head_dim=16, target_only=True, dtype=torch.float32)
    q = x.q.requires_grad_(True)
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    assert type(hta_attention(q, x.k, x.v, *x.meta()).grad_fn).__name__ != "_HTAAttentionFunctionBackward"
    monkeypatch.setenv("TRITON_INTERPRET", "1")
    assert type(hta_attention(q, x.k, x.v, *x.meta()).grad_fn).__name__ == "_HTAAttentionFunctionBackward"


@pytest.mark.slow
@pytest.mark.skipif(
    TRITON_DEVICE is not None or not HAS_TRITON or os.environ.get(SUBPROCESS_MARK) == "1",
    reason="the kernel tests already run in this process",
)
def test_kernel_suite_in_fresh_interpreter_process() -> None:
    """Fallback: triton was imported before tests/kernels/conftest.py, so rerun this folder with the interpreter."""
    env = dict(os.environ, TRITON_INTERPRET="1", **{SUBPROCESS_MARK: "1"})
    proc = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", str(Path(__file__).parent)],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=900,
        check=False,
    )
    assert proc.returncode == 0, proc.stdout[-5000:] + proc.stderr[-2000:]
    assert " passed" in proc.stdout, proc.stdout[-2000:]


@pytest.mark.slow
@pytest.mark.skipif(not HAS_TRITON, reason="triton is not installed")
def test_kernels_compile_for_h100_without_a_gpu() -> None:
    """The interpreter accepts code the compiler rejects: compile every kernel for sm_90 (bf16) with Triton's own
    frontend and bundled ptxas, in a process without TRITON_INTERPRET."""
    from tests.kernels import aot_compile

    if not os.path.exists(aot_compile.PTXAS):
        pytest.skip(f"no ptxas bundled with triton at {aot_compile.PTXAS}")
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    proc = subprocess.run(
        [sys.executable, "-m", "tests.kernels.aot_compile"],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )
    assert proc.returncode == 0 and "compiled: all kernels" in proc.stdout, (
        proc.stdout[-2000:] + proc.stderr[-4000:]
    )
