"""Host side of the Triton path: autotuned tiles, forward/backward launchers and the ``autograd.Function``.

:func:`hta_attention_triton` runs CUDA tensors, or CPU tensors when the kernels were decorated under
``TRITON_INTERPRET=1``; the kernels themselves are in ``triton_kernels.py``.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import torch

from kernels.attention.reference import AttentionKind, JaggedHTA
from kernels.attention.triton_kernels import _hta_bwd_dkdv_kernel, _hta_bwd_dq_kernel, _hta_fwd_kernel
from kernels.dispatch import HAS_TRITON, check_triton_device, is_interpreted, triton

# GPU tiles are autotuned once per (head dim, heads, kind, dtype, query-length bucket); the candidates compile for
# sm_90 without register spills at D = 128 or stay close (checked offline with ptxas). The interpreter runs the
# untuned kernels with 16x16 tiles so that small test shapes still cross block boundaries.
_INTERPRETER_TILE = {"BLOCK_M": 16, "BLOCK_N": 16}
_TUNE_KEY = ["D", "tune_q_len", "HQ", "HKV", "GQA", "SILU"]  # the autotuner skips names a kernel lacks


def _tile_configs(tiles: list[tuple[int, int, int, int]]) -> list[Any]:
    """(BLOCK_M, BLOCK_N, num_warps, num_stages) -> triton.Config list."""
    return [triton.Config({"BLOCK_M": m, "BLOCK_N": n}, num_warps=w, num_stages=st) for m, n, w, st in tiles]


def _prune_tiles(configs: list[Any], named_args: dict[str, Any], **kwargs: Any) -> list[Any]:
    """Keep tiles whose (rows x head dim) fit the register file; no 128-row query tiles for short query sets."""
    block_d = kwargs["BLOCK_D"]
    q_len = named_args["tune_q_len"]
    kept = [
        c
        for c in configs
        if c.kwargs["BLOCK_M"] * block_d <= 16384
        and c.kwargs["BLOCK_N"] * block_d <= 16384
        and (c.kwargs["BLOCK_M"] <= 64 or q_len > 64)
    ]
    return kept or configs[-1:]


if HAS_TRITON:
    _fwd_tuned = triton.autotune(
        _tile_configs([(128, 64, 8, 2), (128, 32, 8, 3), (64, 64, 4, 2), (64, 32, 4, 3), (32, 32, 4, 2)]),
        key=_TUNE_KEY,
        prune_configs_by={"early_config_prune": _prune_tiles},
    )(_hta_fwd_kernel)
    _dq_tuned = triton.autotune(
        _tile_configs([(128, 32, 8, 2), (64, 32, 4, 2), (32, 64, 4, 2), (64, 64, 8, 2), (32, 32, 4, 2)]),
        key=_TUNE_KEY,
        prune_configs_by={"early_config_prune": _prune_tiles},
    )(_hta_bwd_dq_kernel)
    _dkdv_tuned = triton.autotune(
        _tile_configs([(32, 128, 8, 2), (32, 64, 4, 2), (16, 64, 4, 2), (64, 64, 8, 2), (32, 32, 4, 2)]),
        key=_TUNE_KEY,
        prune_configs_by={"early_config_prune": _prune_tiles},
    )(_hta_bwd_dkdv_kernel)


def _pick(kernel: Any, tuned_name: str, x: torch.Tensor) -> tuple[Any, dict[str, int]]:
    """(launchable kernel, explicit tile kwargs): autotuned on CUDA, fixed small tiles in the interpreter."""
    if x.is_cuda and not is_interpreted(kernel):
        return globals()[tuned_name], {}
    return kernel, dict(_INTERPRETER_TILE, num_warps=1, num_stages=1)


def _tune_q_len(max_q_len: int) -> int:
    return min(1024, triton.next_power_of_2(max(max_q_len, 1)))


def _dot_precision(x: torch.Tensor) -> str:
    """float32 inputs follow torch's matmul setting (tf32 only if the user allowed it); 16-bit inputs ignore it."""
    if x.dtype == torch.float32 and x.is_cuda and not torch.backends.cuda.matmul.allow_tf32:
        return "ieee"
    return "tf32" if x.is_cuda else "ieee"


def _block_d(head_dim: int) -> int:
    return max(16, triton.next_power_of_2(head_dim))  # tl.dot needs >= 16


def _rows_contiguous(x: torch.Tensor) -> torch.Tensor:
    """Kernels index (rows, heads) by stride and assume a unit stride along D."""
    return x if x.stride(-1) == 1 else x.contiguous()



def _hta_forward(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, h: JaggedHTA) -> tuple[torch.Tensor, torch.Tensor]:
    """Launch the forward kernel: out (Nq, Hq, D) and stat (Nq, Hq) float32 (lse2 or visible counts)."""
    Nq, Hq, D = q.shape
    Hkv = k.shape[1]
    B = h.q_offsets.numel() - 1
    out = torch.empty_like(q, memory_format=torch.contiguous_format)
    stat = torch.empty((Nq, Hq), device=q.device, dtype=torch.float32)
    if Nq == 0 or B == 0 or h.max_q_len <= 0:
        return out, stat
    kernel, tile = _pick(_hta_fwd_kernel, "_fwd_tuned", q)
    grid = lambda meta: (B * Hq, triton.cdiv(h.max_q_len, meta["BLOCK_M"]))  # (user x head, query blocks)
    kernel[grid](
        q, k, v, out, stat,
        h.q_offsets, h.kv_offsets, h.q_pos, h.kv_ts, h.kv_group,
        q.stride(0), q.stride(1), k.stride(0), k.stride(1), v.stride(0), v.stride(1), out.stride(0), out.stride(1),
        h.scale_for(D), D, _tune_q_len(h.max_q_len),
        HQ=Hq, GQA=Hq // Hkv, SILU=h.kind is AttentionKind.SILU, DOT_PRECISION=_dot_precision(q), BLOCK_D=_block_d(D),
        **tile,
    )  # fmt: skip
    return out, stat


def _hta_backward(
    do: torch.Tensor,
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    out: torch.Tensor,
    stat: torch.Tensor,
    h: JaggedHTA,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Launch the dq kernel (grid over query blocks) and the dk/dv kernel (grid over key blocks)."""
    Nq, Hq, D = q.shape
    Nk, Hkv, _ = k.shape
    B = h.q_offsets.numel() - 1
    silu, scale, max_q_len, max_kv_len = h.kind is AttentionKind.SILU, h.scale_for(D), h.max_q_len, h.max_kv_len
    do = do.contiguous()
    dq = torch.empty_like(do)
    dk = torch.empty((Nk, Hkv, D), device=k.device, dtype=k.dtype)
    dv = torch.empty((Nk, Hkv, D), device=v.device, dtype=v.dtype)
    if Nq == 0 or B == 0:  # no query sees any key: every gradient is zero
        return dq.zero_(), dk.zero_(), dv.zero_()
    # (Nq, Hq) rowsum(dO * O) for softmax; the silu branches never read it (any float32 buffer will do)
    delta = stat if silu else (do.float() * out.float()).sum(-1)
    prec, block_d, tune_q = _dot_precision(q), _block_d(D), _tune_q_len(max_q_len)
    layout = (h.q_offsets, h.kv_offsets, h.q_pos, h.kv_ts, h.kv_group)
    strides = (q.stride(0), q.stride(1), k.stride(0), k.stride(1), v.stride(0), v.stride(1), do.stride(0), do.stride(1))
    if max_q_len > 0:
        kernel, tile = _pick(_hta_bwd_dq_kernel, "_dq_tuned", q)
        kernel[lambda meta: (B * Hq, triton.cdiv(max_q_len, meta["BLOCK_M"]))](
            q, k, v, do, dq, stat, delta, *layout, *strides, scale, D, tune_q,
            HQ=Hq, GQA=Hq // Hkv, SILU=silu, DOT_PRECISION=prec, BLOCK_D=block_d,
            **tile,
        )  # fmt: skip
    else:
        dq.zero_()
    if Nk > 0 and max_kv_len > 0:
        kernel, tile = _pick(_hta_bwd_dkdv_kernel, "_dkdv_tuned", q)
        kernel[lambda meta: (B * Hkv, triton.cdiv(max_kv_len, meta["BLOCK_N"]))](
            q, k, v, do, dk, dv, stat, delta, *layout, *strides, dk.stride(0), dk.stride(1), scale, D, tune_q,
            HKV=Hkv, GQA=Hq // Hkv, SILU=silu, DOT_PRECISION=prec, BLOCK_D=block_d,
            **tile,
        )  # fmt: skip
    else:
        dk.zero_()
        dv.zero_()
    return dq, dk, dv


class _HTAAttentionFunction(torch.autograd.Function):
    """Triton forward/backward; the jagged layout ``h`` gets no gradient."""

    @staticmethod
    def forward(  # type: ignore[override]
        ctx: Any, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, h: JaggedHTA
    ) -> torch.Tensor:
        out, stat = _hta_forward(q, k, v, h)
        ctx.save_for_backward(q, k, v, out, stat)
        ctx.layout = h  # metadata tensors only (no gradient): kept on ctx, not in saved_tensors
        return out

    @staticmethod
    def backward(ctx: Any, do: torch.Tensor) -> tuple[torch.Tensor | None, ...]:  # type: ignore[override]
        q, k, v, out, stat = ctx.saved_tensors
        dq, dk, dv = _hta_backward(do, q, k, v, out, stat, ctx.layout)
        return dq, dk, dv, None


def hta_attention_triton(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, h: JaggedHTA) -> torch.Tensor:
    """The Triton path of :func:`hta_attention` (differentiable); inputs already validated by the dispatcher."""
    check_triton_device(q, _hta_fwd_kernel, "hta_attention")
    k = _rows_contiguous(k.to(q.dtype))
    v = _rows_contiguous(v.to(q.dtype))
    h = dataclasses.replace(
        h,
        q_offsets=h.q_offsets.long(),  # int64 row arithmetic in the kernels
        kv_offsets=h.kv_offsets.long(),
        q_pos=h.q_pos.contiguous(),
        kv_ts=(h.kv_ts if h.kv_ts.is_floating_point() else h.kv_ts.float()).contiguous(),
        kv_group=h.kv_group.contiguous(),
        max_q_len=int(h.max_q_len),
        max_kv_len=int(h.max_kv_len),
        scale=q.shape[2] ** -0.5 if h.scale is None else float(h.scale),
    )
    out: torch.Tensor = _HTAAttentionFunction.apply(_rows_contiguous(q), k, v, h)
    return out
