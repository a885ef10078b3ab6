"""Fused Triton Group LayerNorm vs the float64 PyTorch reference: output, dx, dweight and dbias."""

from __future__ import annotations

import pytest
import torch

from kernels import Kernel, group_layer_norm, group_layer_norm_reference, set_kernel
from tests.kernels.conftest import assert_close_to_fp64, rel_err

# (rows, features, groups); on the CPU a tile holds 8 rows
SHAPES = [
    (0, 8, 4),  # no tokens
    (1, 8, 4),  # one token (three groups get no rows: zero dweight/dbias)
    (37, 24, 4),  # rows and D not multiples of the tile
    (50, 130, 3),  # D > 128, odd group count
    (13, 16, 1),  # a single group = plain LayerNorm
]


def _run(fn, x, group, weight, bias, grad_out, eps=1e-5):  # type: ignore[no-untyped-def]
    leaves = [t.detach().clone().requires_grad_(True) for t in (x, weight, bias)]
    out = fn(leaves[0], group, leaves[1], leaves[2], eps)
    out.backward(grad_out.to(out.dtype))
    return out.detach(), [t.grad if t.grad is not None else torch.zeros_like(t) for t in leaves]


def _inputs(n: int, d: int, groups: int, device: str, seed: int = 0):  # type: ignore[no-untyped-def]
    g = torch.Generator().manual_seed(seed)
    x = (torch.randn(n, d, generator=g, dtype=torch.float64) * 3 + 1).to(device)
    group = torch.randint(0, groups, (n,), generator=g).to(device)
    weight = (1 + 0.5 * torch.randn(groups, d, generator=g, dtype=torch.float64)).to(device)
    bias = torch.randn(groups, d, generator=g, dtype=torch.float64).to(device)
    return x, group, weight, bias


@pytest.mark.parametrize(("n", "d", "groups"), SHAPES, ids=lambda v: str(v))
def test_matches_float64_reference(triton_device: str, n: int, d: int, groups: int) -> None:
    x, group, weight, bias = _inputs(n, d, groups, triton_device)
    grad_out = torch.randn_like(x)
    ref64, g64 = _run(group_layer_norm_reference, x, group, weight, bias, grad_out)
    f32 = [t.float() for t in (x, weight, bias)]
    ref32, g32 = _run(group_layer_norm_reference, f32[0], group, f32[1], f32[2], grad_out)
    out, grads = _run(group_layer_norm, f32[0], group, f32[1], f32[2], grad_out)
    assert out.dtype == torch.float32 and out.shape == x.shape
    assert_close_to_fp64(out, ref32, ref64, "out")
    for name, got, same, exact in zip(("dx", "dweight", "dbias"), grads, g32, g64, strict=True):
        assert got.dtype == torch.float32, name
        assert_close_to_fp64(got, same, exact, name)
    if n == 1:  # groups without rows get exactly zero parameter gradients
        empty = torch.ones(groups, dtype=torch.bool, device=triton_device)
        empty[group] = False
        assert (grads[1][empty] == 0).all() and (grads[2][empty] == 0).all()


def test_leading_dims_strided_input_and_fp32_params(triton_device: str) -> None:
    """x (B, L, D) sliced from a wider tensor (row stride 2D), float64 params with float32 x."""
    wide = torch.randn(2, 7, 48, device=triton_device)
    x = wide[..., :24]
    group = torch.randint(0, 4, (2, 7), device=triton_device)
    weight = torch.randn(4, 24, device=triton_device, dtype=torch.float64)
    bias = torch.randn(4, 24, device=triton_device, dtype=torch.float64)
    out = group_layer_norm(x, group, weight, bias, 1e-3)
    ref = group_layer_norm_reference(x.double(), group, weight, bias, 1e-3)
    assert out.shape == (2, 7, 24) and out.dtype == torch.float32
    assert rel_err(out, ref) < 1e-5


def test_constant_rows_are_finite(triton_device: str) -> None:
    """A constant row has zero variance: eps keeps rstd finite and the output equals the bias."""
    x = torch.full((3, 16), 2.5, device=triton_device, requires_grad=True)
    group = torch.tensor([0, 1, 1], device=triton_device)
    weight = torch.randn(2, 16, device=triton_device)
    bias = torch.randn(2, 16, device=triton_device)
    out = group_layer_norm(x, group, weight, bias)
    assert torch.allclose(out, bias[group], atol=1e-6)
    out.sum().backward()
    assert x.grad is not None and torch.isfinite(x.grad).all()


def test_reference_mode_and_bad_inputs(triton_device: str) -> None:
    x, group, weight, bias = _inputs(5, 8, 2, triton_device)
    x = x.float().requires_grad_(True)
    assert (
        type(group_layer_norm(x, group, weight.float(), bias.float()).grad_fn).__name__
        == "_GroupLayerNormFunctionBackward"
    )
    with pytest.raises(ValueError, match="group must have shape"):
        group_layer_norm(x, group[:3], weight, bias)
    with pytest.raises(ValueError, match="weight must be"):
        group_layer_norm(x, group, weight[:, :4], bias)
    if triton_device == "cpu":
        with pytest.raises(ValueError, match="group ids must lie"):
            group_layer_norm(x, group + 5, weight, bias)
    set_kernel(Kernel.REFERENCE)
    assert (
        type(group_layer_norm(x, group, weight.float(), bias.float()).grad_fn).__name__
        != "_GroupLayerNormFunctionBackward"
    )


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16], ids=str)
def test_gpu_half_precision(dtype: torch.dtype) -> None:
    """16-bit activations with float32 parameters (the model's mixed-precision setting), D = 768."""
    x, group, weight, bias = _inputs(4099, 768, 4, "cuda")
    grad_out = torch.randn_like(x)
    set_kernel(Kernel.AUTO)
    ref64, g64 = _run(group_layer_norm_reference, x, group, weight, bias, grad_out)
    ref16, g16 = _run(group_layer_norm_reference, x.to(dtype), group, weight.float(), bias.float(), grad_out)
    out, grads = _run(group_layer_norm, x.to(dtype), group, weight.float(), bias.float(), grad_out)
    assert out.dtype == dtype
    assert_close_to_fp64(out, ref16, ref64, "out", atol=1e-3)
    for name, got, same, exact in zip(("dx", "dweight", "dbias"), grads, g16, g64, strict=True):
        assert_close_to_fp64(got, same, exact, name, atol=1e-3)
