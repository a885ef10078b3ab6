r"""Group LayerNorm (MTGR): a separate LayerNorm affine per token group.

Shapes::

    x       (N, D)   jagged tokens of all users, flattened (any leading dims are accepted and flattened)
    group   (N,)     int64 group id of each token in [0, G)
    weight  (G, D)   per-group scale
    bias    (G, D)   per-group shift
    out     (N, D)

    out_n = (x_n - mean(x_n)) / sqrt(var(x_n) + eps) * weight[group_n] + bias[group_n]

(biased variance over D, as ``torch.nn.functional.layer_norm``). Backward, with xhat = (x - mean) * rstd and
wdy = weight[group_n] * dy_n::

    dx_n       = rstd_n * (wdy - mean_D(wdy) - xhat_n * mean_D(wdy * xhat_n))
    dweight[g] = sum_{n: group_n = g} dy_n * xhat_n
    dbias[g]   = sum_{n: group_n = g} dy_n

The fused kernels read x (and dy) once: the forward saves mean and rstd per row; the backward writes dx and keeps
per-program partial sums of dweight/dbias for every group in registers, written to a (programs, G, D) buffer that
one ``sum`` reduces (deterministic, no atomics).
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F

from kernels.dispatch import Kernel, check_triton_device, get_kernel, needs_grad, tl, triton, use_triton


def group_layer_norm_reference(
    x: torch.Tensor, group: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor, eps: float = 1e-5
) -> torch.Tensor:
    """Readable PyTorch version: normalise, then gather each token's group affine (output in x's dtype)."""
    y = F.layer_norm(x, (x.shape[-1],), eps=eps)
    # index_select: its backward is an index_add (plain indexing's accumulating index_put sorts on the CPU)
    g = group.reshape(-1)
    w = weight.index_select(0, g).reshape(*group.shape, weight.shape[-1])
    b = bias.index_select(0, g).reshape(*group.shape, bias.shape[-1])
    return (y * w + b).to(x.dtype)


# ---------------------------------------------------------------------------------------------------------------
# Triton kernels: a program owns a tile of BLOCK_M rows x BLOCK_D (>= D) columns; statistics in float32.
# ---------------------------------------------------------------------------------------------------------------


@triton.jit
def _gln_fwd_kernel(
    X,  # (N, D) input; row n at X + n * stride_xn (unit stride along D)
    GRP,  # (N,) int group ids
    W,  # (G, D) per-group weight, contiguous
    B,  # (G, D) per-group bias, contiguous
    Y,  # (N, D) output, contiguous
    MEAN,  # (N,) float32 written here (saved for the backward)
    RSTD,  # (N,) float32 written here
    N,
    D,
    stride_xn,
    eps,
    G: tl.constexpr,  # number of groups (ids are clamped into [0, G) so bad ids cannot read out of bounds)
    BLOCK_M: tl.constexpr,
    BLOCK_D: tl.constexpr,
):
    pid = tl.program_id(0)
    rows = pid * BLOCK_M + tl.arange(0, BLOCK_M)  # (BM,)
    cols = tl.arange(0, BLOCK_D)  # (BD,)
    r_ok = rows < N
    c_ok = cols < D
    mask = r_ok[:, None] & c_ok[None, :]
    x = tl.load(X + rows[:, None].to(tl.int64) * stride_xn + cols[None, :], mask=mask, other=0.0).to(
        tl.float32
    )
    mean = tl.sum(x, 1) / D  # (BM,)
    xc = tl.where(mask, x - mean[:, None], 0.0)
    var = tl.sum(xc * xc, 1) / D
    rstd = 1.0 / tl.sqrt(var + eps)
    g = tl.load(GRP + rows, mask=r_ok, other=0)
    g = tl.minimum(tl.maximum(g, 0), G - 1)
    w = tl.load(W + g[:, None] * D + cols[None, :], mask=mask, other=0.0).to(tl.float32)
    b = tl.load(B + g[:, None] * D + cols[None, :], mask=mask, other=0.0).to(tl.float32)
    y = xc * rstd[:, None] * w + b
    tl.store(Y + rows[:, None].to(tl.int64) * D + cols[None, :], y.to(Y.dtype.element_ty), mask=mask)
    tl.store(MEAN + rows, mean, mask=r_ok)
    tl.store(RSTD + rows, rstd, mask=r_ok)


@triton.jit
def _gln_bwd_kernel(
    X,  # (N, D) input as in the forward
    GRP,  # (N,) int group ids
    W,  # (G, D) weight
    DY,  # (N, D) output gradient, contiguous
    DX,  # (N, D) input gradient, written here, contiguous
    MEAN,  # (N,) float32 from the forward
    RSTD,  # (N,) float32 from the forward
    DW_PART,  # (P, G, D) float32 per-program partial dweight, written here
    DB_PART,  # (P, G, D) float32 per-program partial dbias, written here
    N,
    D,
    stride_xn,
    G: tl.constexpr,
    BLOCK_G: tl.constexpr,  # next power of two >= G
    BLOCK_M: tl.constexpr,
    BLOCK_D: tl.constexpr,
):
    pid = tl.program_id(0)
    n_prog = tl.num_programs(0)
    cols = tl.arange(0, BLOCK_D)
    c_ok = cols < D
    g_idx = tl.arange(0, BLOCK_G)  # (BG,)
    dw_acc = tl.zeros((BLOCK_G, BLOCK_D), dtype=tl.float32)
    db_acc = tl.zeros((BLOCK_G, BLOCK_D), dtype=tl.float32)
    n_tiles = tl.cdiv(N, BLOCK_M)
    for tile in range(pid, n_tiles, n_prog):  # persistent: program pid takes tiles pid, pid + P, ...
        rows = tile * BLOCK_M + tl.arange(0, BLOCK_M)
        r_ok = rows < N
        mask = r_ok[:, None] & c_ok[None, :]
        x = tl.load(X + rows[:, None].to(tl.int64) * stride_xn + cols[None, :], mask=mask, other=0.0).to(
            tl.float32
        )
        dy = tl.load(DY + rows[:, None].to(tl.int64) * D + cols[None, :], mask=mask, other=0.0).to(tl.float32)
        mean = tl.load(MEAN + rows, mask=r_ok, other=0.0)
        rstd = tl.load(RSTD + rows, mask=r_ok, other=0.0)
        g = tl.load(GRP + rows, mask=r_ok, other=0)
        g = tl.minimum(tl.maximum(g, 0), G - 1)
        w = tl.load(W + g[:, None] * D + cols[None, :], mask=mask, other=0.0).to(tl.float32)
        xhat = tl.where(mask, (x - mean[:, None]) * rstd[:, None], 0.0)  # (BM, BD)
        wdy = w * dy
        c1 = tl.sum(xhat * wdy, 1) / D  # (BM,)
        c2 = tl.sum(wdy, 1) / D
        dx = (wdy - (xhat * c1[:, None] + c2[:, None])) * rstd[:, None]
        tl.store(DX + rows[:, None].to(tl.int64) * D + cols[None, :], dx.to(DX.dtype.element_ty), mask=mask)
        # per-group partial sums: sel[gi, m] picks the rows of group gi; (BG, BM, BD) summed over the rows
        sel = (g_idx[:, None] == g[None, :]) & r_ok[None, :]
        dw_acc += tl.sum(tl.where(sel[:, :, None], (dy * xhat)[None, :, :], 0.0), 1)
        db_acc += tl.sum(tl.where(sel[:, :, None], dy[None, :, :], 0.0), 1)
    part = pid * G * D + g_idx[:, None] * D + cols[None, :]
    part_mask = (g_idx[:, None] < G) & c_ok[None, :]
    tl.store(DW_PART + part, dw_acc, mask=part_mask)
    tl.store(DB_PART + part, db_acc, mask=part_mask)


# ---------------------------------------------------------------------------------------------------------------
# Host launchers.
# ---------------------------------------------------------------------------------------------------------------


def _tile(on_gpu: bool, d: int, groups: int) -> tuple[int, int, int]:
    """(BLOCK_M, BLOCK_D, num_warps): about 4K float32 per (rows x D) tile, 16K per (groups x rows x D) slab."""
    block_d = triton.next_power_of_2(max(d, 1))
    block_g = triton.next_power_of_2(groups)
    block_m = max(1, min(64, 4096 // block_d, 16384 // (block_d * block_g)))
    if not on_gpu:
        block_m = max(1, min(block_m, 8))  # the interpreter: several tiles even for small tests
    num_warps = min(16, max(4, block_m * block_d // 256))  # ~8 elements of a (rows x D) tile per thread
    return block_m, block_d, num_warps


def _gln_forward(
    x: torch.Tensor, group: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor, eps: float
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """x (N, D) with unit stride along D -> y (N, D), mean (N,), rstd (N,)."""
    N, D = x.shape
    G = weight.shape[0]
    y = torch.empty((N, D), device=x.device, dtype=x.dtype)
    mean = torch.empty(N, device=x.device, dtype=torch.float32)
    rstd = torch.empty(N, device=x.device, dtype=torch.float32)
    if N == 0 or D == 0:
        return y, mean, rstd
    block_m, block_d, num_warps = _tile(x.is_cuda, D, G)
    _gln_fwd_kernel[(triton.cdiv(N, block_m),)](
        x, group, weight, bias, y, mean, rstd, N, D, x.stride(0), eps,
        G=G, BLOCK_M=block_m, BLOCK_D=block_d, num_warps=num_warps,
    )  # fmt: skip
    return y, mean, rstd


def _gln_backward(
    dy: torch.Tensor,
    x: torch.Tensor,
    group: torch.Tensor,
    weight: torch.Tensor,
    mean: torch.Tensor,
    rstd: torch.Tensor,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """dx (N, D), dweight (G, D), dbias (G, D) (weight's dtype)."""
    N, D = x.shape
    G = weight.shape[0]
    dy = dy.contiguous()
    dx = torch.empty((N, D), device=x.device, dtype=x.dtype)
    if N == 0 or D == 0:
        return dx, torch.zeros_like(weight), torch.zeros_like(weight)
    block_m, block_d, num_warps = _tile(x.is_cuda, D, G)
    n_tiles = triton.cdiv(N, block_m)
    if x.is_cuda:
        n_sm = torch.cuda.get_device_properties(x.device).multi_processor_count
        programs = min(n_tiles, 4 * n_sm)
    else:
        programs = min(n_tiles, 4)
    dw_part = torch.empty((programs, G, D), device=x.device, dtype=torch.float32)
    db_part = torch.empty((programs, G, D), device=x.device, dtype=torch.float32)
    _gln_bwd_kernel[(programs,)](
        x, group, weight, dy, dx, mean, rstd, dw_part, db_part, N, D, x.stride(0),
        G=G, BLOCK_G=triton.next_power_of_2(G), BLOCK_M=block_m, BLOCK_D=block_d, num_warps=num_warps,
    )  # fmt: skip
    return dx, dw_part.sum(0).to(weight.dtype), db_part.sum(0).to(weight.dtype)


class _GroupLayerNormFunction(torch.autograd.Function):
    """Triton forward/backward over (N, D) rows; group ids get no gradient."""

    @staticmethod
    def forward(  # type: ignore[override]
        ctx: Any, x: torch.Tensor, group: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor, eps: float
    ) -> torch.Tensor:
        y, mean, rstd = _gln_forward(x, group, weight, bias, eps)
        ctx.save_for_backward(x, group, weight, mean, rstd)
        return y

    @staticmethod
    def backward(ctx: Any, dy: torch.Tensor) -> tuple[torch.Tensor | None, ...]:  # type: ignore[override]
        x, group, weight, mean, rstd = ctx.saved_tensors
        dx, dw, db = _gln_backward(dy, x, group, weight, mean, rstd)
        return dx, None, dw, db, None


def _validate(x: torch.Tensor, group: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor) -> None:
    """Shape/dtype checks that need no device synchronisation."""
    if x.dim() < 1:
        raise ValueError("x must have a feature dimension")
    if group.shape != x.shape[:-1]:
        raise ValueError(f"group must have shape {tuple(x.shape[:-1])}, got {tuple(group.shape)}")
    if group.is_floating_point() or group.is_complex():
        raise TypeError(f"group must be an integer tensor, got {group.dtype}")
    if weight.dim() != 2 or weight.shape[1] != x.shape[-1] or weight.shape[0] < 1:
        raise ValueError(f"weight must be (G, {x.shape[-1]}), got {tuple(weight.shape)}")
    if bias.shape != weight.shape:
        raise ValueError(f"bias must match weight {tuple(weight.shape)}, got {tuple(bias.shape)}")


def group_layer_norm(
    x: torch.Tensor, group: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor, eps: float = 1e-5
) -> torch.Tensor:
    """Group LayerNorm: fused Triton kernel on CUDA (or under ``TRITON_INTERPRET=1``), the reference otherwise.

    Group ids must lie in ``[0, G)``; CPU inputs are checked, the Triton kernels clamp ids (no device sync on CUDA).

    Example:
        >>> x = torch.randn(5, 8); group = torch.tensor([0, 1, 1, 2, 3])
        >>> weight, bias = torch.ones(4, 8), torch.zeros(4, 8)
        >>> group_layer_norm(x, group, weight, bias).shape
        torch.Size([5, 8])
    """
    _validate(x, group, weight, bias)
    if not x.is_cuda and group.numel() > 0:
        g_lo, g_hi = torch.aminmax(group)
        lo, hi = int(g_lo), int(g_hi)
        if lo < 0 or hi >= weight.shape[0]:
            raise ValueError(f"group ids must lie in [0, {weight.shape[0]}), got [{lo}, {hi}]")
        if not use_triton(x) and lo == hi and get_kernel() is Kernel.AUTO and not needs_grad(x, weight, bias):
            # CPU inference, one group (e.g. only targets): one fused layer_norm with that group's affine
            return F.layer_norm(x, (x.shape[-1],), weight[lo].to(x.dtype), bias[lo].to(x.dtype), eps)
    if not use_triton(x):
        return group_layer_norm_reference(x, group, weight, bias, eps)
    check_triton_device(x, _gln_fwd_kernel, "group_layer_norm")
    shape = x.shape
    x2 = x.reshape(-1, shape[-1])
    if x2.stride(-1) != 1:
        x2 = x2.contiguous()
    y: torch.Tensor = _GroupLayerNormFunction.apply(
        x2, group.reshape(-1).contiguous(), weight.contiguous(), bias.contiguous(), float(eps)
    )
    return y if x.dim() == 2 else y.reshape(shape)
