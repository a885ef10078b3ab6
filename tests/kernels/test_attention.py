"""Triton HTA attention vs the float64 PyTorch reference: outputs and dq/dk/dv on awkward jagged shapes.

On the CPU the kernels run in Triton's interpreter (float32); on a CUDA host the same tests run compiled.
"""

from __future__ import annotations

import math

import pytest
import torch

from kernels import AttentionKind, Kernel, TokenGroup, hta_attention, hta_attention_reference, set_kernel
from kernels.testing import HTAInputs, make_hta_inputs
from tests.kernels.conftest import assert_close_to_fp64, rel_err

# (lengths per user, targets per user, q heads, kv heads, head dim); the interpreter uses 16x16 tiles
CASES = {
    "mixed_empty_and_len1": (
        [0, 1, 37, 20, 0],
        [0, 1, 5, 3, 0],
        4,
        2,
        24,
    ),  # empty users, len 1, 37 = 2*16 + 5
    "kv1_many_targets": ([19, 33], [19, 30], 3, 1, 16),  # a user of targets only; kv heads = 1
    "one_target_shuffled": ([50], [1], 2, 2, 32),  # tokens in random order: the mask follows groups and times
    "single_token": ([1], [1], 2, 1, 16),
    "no_tokens": ([0, 0], [0, 0], 2, 2, 16),
}


def _inputs(case: str, layer: str, device: str, dtype: torch.dtype = torch.float64, **kw: bool) -> HTAInputs:
    lengths, targets, hq, hkv, d = CASES[case]
    return make_hta_inputs(
        lengths,
        targets,
        q_heads=hq,
        kv_heads=hkv,
        head_dim=d,
        target_only=layer == "target",
        dtype=dtype,
        device=device,
        seed=len(case),
        shuffle=case == "one_target_shuffled",
        **kw,
    )


def _run(fn, x: HTAInputs, q, k, v, grad_out, kind):  # type: ignore[no-untyped-def]
    """Output and (dq, dk, dv) of ``fn`` for the given leaves."""
    leaves = [t.detach().clone().requires_grad_(True) for t in (q, k, v)]
    out = fn(*leaves, *x.meta(), kind)
    out.backward(grad_out.to(out.dtype))
    grads = [t.grad if t.grad is not None else torch.zeros_like(t) for t in leaves]
    return out.detach(), grads


@pytest.mark.parametrize("kind", list(AttentionKind), ids=lambda k: k.value)
@pytest.mark.parametrize("layer", ["full", "target"])
@pytest.mark.parametrize("case", list(CASES))
def test_matches_float64_reference(triton_device: str, case: str, layer: str, kind: AttentionKind) -> None:
    x = _inputs(case, layer, triton_device, uh_ts_neg_inf=case == "kv1_many_targets")
    grad_out = torch.randn_like(x.q)
    ref64, g64 = _run(hta_attention_reference, x, x.q, x.k, x.v, grad_out, kind)
    ref32, g32 = _run(hta_attention_reference, x, x.q.float(), x.k.float(), x.v.float(), grad_out, kind)
    out, grads = _run(hta_attention, x, x.q.float(), x.k.float(), x.v.float(), grad_out, kind)
    assert out.dtype == torch.float32 and out.shape == x.q.shape
    assert torch.isfinite(out).all()
    assert_close_to_fp64(out, ref32, ref64, "out")
    for name, got, same, exact in zip(("dq", "dk", "dv"), grads, g32, g64, strict=True):
        assert torch.isfinite(got).all(), name
        assert_close_to_fp64(got, same, exact, name)


def test_hand_computed_mask(triton_device: str) -> None:
    """One user: U(t=0) H(t=-inf) R(t=1) R(t=5) T(t=5) T(t=5). The first target sees U, H, R(t=1) and itself, but
    neither the R that ties its time nor the other target."""
    groups = [TokenGroup.U, TokenGroup.H, TokenGroup.R, TokenGroup.R, TokenGroup.T, TokenGroup.T]
    ts = torch.tensor([0.0, float("-inf"), 1.0, 5.0, 5.0, 5.0], device=triton_device)
    grp = torch.tensor([int(g_) for g_ in groups], device=triton_device)
    g = torch.Generator().manual_seed(0)
    q = torch.randn(2, 1, 16, generator=g).to(triton_device)
    k = torch.randn(6, 1, 16, generator=g).to(triton_device)
    v = torch.randn(6, 1, 16, generator=g).to(triton_device)
    off_q = torch.tensor([0, 2], device=triton_device)
    off_k = torch.tensor([0, 6], device=triton_device)
    pos = torch.tensor([4, 5], device=triton_device)
    for kind in AttentionKind:
        out = hta_attention(q, k, v, off_q, off_k, pos, ts, grp, 2, 6, kind)
        for i, self_pos in enumerate((4, 5)):
            keys = [0, 1, 2, self_pos]
            s = (k[keys, 0] @ q[i, 0]) / 4.0  # scale = 16 ** -0.5
            w = (
                torch.softmax(s, 0)
                if kind is AttentionKind.SOFTMAX
                else torch.nn.functional.silu(s) / len(keys)
            )
            expected = w @ v[keys, 0]
            assert rel_err(out[i, 0], expected) < 1e-5, (kind, i)


@pytest.mark.parametrize("kind", list(AttentionKind), ids=lambda k: k.value)
def test_target_layer_equals_target_rows_of_full_layer(triton_device: str, kind: AttentionKind) -> None:
    """Same tokens: the target-only layer's outputs are the T rows of the full layer (different grids/offsets)."""
    full = _inputs("mixed_empty_and_len1", "full", triton_device, dtype=torch.float32)
    tgt = _inputs("mixed_empty_and_len1", "target", triton_device, dtype=torch.float32)
    is_t = full.kv_group == TokenGroup.T  # full layer: query i is token i
    q_full = torch.randn_like(full.q)
    out_full = hta_attention(q_full, full.k, full.v, *full.meta(), kind)
    out_tgt = hta_attention(q_full[is_t], full.k, full.v, *tgt.meta(), kind)
    assert rel_err(out_tgt, out_full[is_t]) < 1e-6


@pytest.mark.parametrize("kind", list(AttentionKind), ids=lambda k: k.value)
def test_targets_do_not_see_each_other(triton_device: str, kind: AttentionKind) -> None:
    """Dropping every other target leaves the remaining targets' outputs unchanged (SiLU normalises by n_i)."""
    x = _inputs("kv1_many_targets", "target", triton_device, dtype=torch.float32)
    out = hta_attention(x.q, x.k, x.v, *x.meta(), kind)
    keep = torch.arange(x.q.shape[0], device=triton_device) % 2 == 0
    users = torch.bucketize(torch.arange(x.q.shape[0], device=triton_device), x.q_offsets[1:], right=True)
    counts = torch.bincount(users[keep], minlength=x.q_offsets.numel() - 1)
    q_offsets = torch.cat([counts.new_zeros(1), counts.cumsum(0)])
    max_q = int(counts.max())
    sub = hta_attention(
        x.q[keep],
        x.k,
        x.v,
        q_offsets,
        x.kv_offsets,
        x.q_pos[keep],
        x.kv_ts,
        x.kv_group,
        max_q,
        x.max_kv_len,
        kind,
    )
    assert rel_err(sub, out[keep]) < 1e-6


def test_strided_views_and_mixed_dtypes(triton_device: str) -> None:
    """q sliced out of a fused projection (row stride != Hq * D), float64 k/v cast to q's dtype, custom scale."""
    x = _inputs("mixed_empty_and_len1", "full", triton_device, dtype=torch.float32)
    fused = torch.randn(x.q.shape[0], 3 * x.q.shape[1], x.q.shape[2], device=triton_device)
    q = fused[:, x.q.shape[1] : 2 * x.q.shape[1]]  # a view: stride(0) = 3 * Hq * D
    assert not q.is_contiguous()
    out = hta_attention(q, x.k.double(), x.v.double(), *x.meta(), AttentionKind.SOFTMAX, 0.3)
    ref = hta_attention_reference(
        q.double(), x.k.double(), x.v.double(), *x.meta(), AttentionKind.SOFTMAX, 0.3
    )
    assert out.dtype == torch.float32
    assert rel_err(out, ref) < 1e-5


def test_reference_kernel_mode_bypasses_triton(triton_device: str) -> None:
    x = _inputs("single_token", "full", triton_device, dtype=torch.float32)
    q = x.q.clone().requires_grad_(True)
    assert type(hta_attention(q, x.k, x.v, *x.meta()).grad_fn).__name__ == "_HTAAttentionFunctionBackward"
    set_kernel(Kernel.REFERENCE)
    assert type(hta_attention(q, x.k, x.v, *x.meta()).grad_fn).__name__ != "_HTAAttentionFunctionBackward"


def test_bad_inputs_raise_clear_errors() -> None:
    x = make_hta_inputs([4], [1], q_heads=3, kv_heads=2, head_dim=16, target_only=False, dtype=torch.float32)
    with pytest.raises(ValueError, match="multiple of kv heads"):
        hta_attention(x.q, x.k, x.v, *x.meta())
    y = make_hta_inputs([4], [1], q_heads=2, kv_heads=1, head_dim=16, target_only=False, dtype=torch.float32)
    with pytest.raises(ValueError, match="q_pos"):
        hta_attention(y.q, y.k, y.v, y.q_offsets, y.kv_offsets, y.q_pos[:2], y.kv_ts, y.kv_group, 4, 4)
    with pytest.raises(ValueError, match="head dims differ"):
        hta_attention(y.q, y.k[..., :8], y.v[..., :8], *y.meta())
    with pytest.raises(TypeError, match="AttentionKind"):
        hta_attention(y.q, y.k, y.v, *y.meta(), "softmax")  # type: ignore[arg-type]


# ------------------------------------------------------------------------------------------------ GPU (bf16/fp16)


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16], ids=str)
@pytest.mark.parametrize("kind", list(AttentionKind), ids=lambda k: k.value)
@pytest.mark.parametrize("layer", ["full", "target"])
def test_gpu_half_precision(dtype: torch.dtype, kind: AttentionKind, layer: str) -> None:
    """Realistic sizes (1k-token users, GQA 3:1, d_head 64) in 16-bit vs the float64 reference on the GPU."""
    x = make_hta_inputs(
        [1024, 700, 0, 1, 333],
        [64, 200, 0, 1, 17],
        q_heads=6,
        kv_heads=2,
        head_dim=64,
        target_only=layer == "target",
        device="cuda",
    )
    set_kernel(Kernel.AUTO)
    grad_out = torch.randn_like(x.q)
    ref64, g64 = _run(hta_attention_reference, x, x.q, x.k, x.v, grad_out, kind)
    half = [t.to(dtype) for t in (x.q, x.k, x.v)]
    ref16, g16 = _run(hta_attention_reference, x, half[0], half[1], half[2], grad_out, kind)
    out, grads = _run(hta_attention, x, half[0], half[1], half[2], grad_out, kind)
    assert out.dtype == dtype
    assert_close_to_fp64(out, ref16, ref64, "out", atol=1e-3)
    for name, got, same, exact in zip(("dq", "dk", "dv"), grads, g16, g64, strict=True):
        assert_close_to_fp64(got, same, exact, name, atol=1e-3)
    assert math.isfinite(rel_err(out, ref64))
