r"""Jagged Hybrid-Target attention with grouped-query heads and MTGR's dynamic mask.

Shapes (B users, jagged; no padding in inputs or outputs)::

    q          (Nq, Hq, D)    queries; user b owns rows q_offsets[b]:q_offsets[b+1]
    k, v       (Nk, Hkv, D)   keys/values; user b owns rows kv_offsets[b]:kv_offsets[b+1]; Hq % Hkv == 0
    q_offsets  (B+1,) int64
    kv_offsets (B+1,) int64
    q_pos      (Nq,) int64    index of each query inside its user's key sequence (the query token's own position)
    kv_ts      (Nk,) float32  token timestamps (seconds, relative to any per-user origin; U/H may use -inf/any)
    kv_group   (Nk,) int64    TokenGroup of each key token (U=0, H=1, R=2, T=3)
    out        (Nq, Hq, D)

Query i of user b (key position p_i = q_pos[i], ts_i = kv_ts[kv_offsets[b] + p_i]) sees key j of the same user iff

    j == p_i                                   (every token sees itself)
    or group_j in {U, H}                       (profile and history are visible to all)
    or group_j == R and ts_j < ts_i            (a real-time event only to strictly later tokens)

so a T key is visible only to its own query (targets never see each other). Query head h reads kv head
h // (Hq / Hkv) (grouped-query attention). With S_ij = scale * <q_i, k_j> (scale defaults to D^-1/2):

    SOFTMAX:  out_i = sum_j softmax_j(S_ij | visible) v_j
    SILU:     out_i = (1 / n_i) sum_{j visible} silu(S_ij) v_j,   n_i = number of keys visible to i (HSTU pointwise)

The full layer passes every token as a query (q_pos = arange per user); a target-only layer passes the T tokens
only. Normalising SILU by n_i (not by the padded length) keeps one target's output independent of how many other
targets share its user.

Implementations (each ``(q, k, v, h: JaggedHTA)``; ``h`` holds everything after v, see :class:`JaggedHTA`)::

    reference.py       hta_attention_reference (the public spec) -> hta_attention_padded; visibility_mask
    cpu.py             hta_attention_sdpa_cpu (inference), hta_attention_split_cpu (training),
                       hta_target_attention_cpu (target rows against cached context K/V)
    triton_kernels.py  the @triton.jit forward, dq and dk/dv kernels
    triton.py          tiles, launchers, autograd.Function, hta_attention_triton
    __init__.py        hta_attention: validates once and dispatches (kernels.set_kernel overrides AUTO)
"""

from __future__ import annotations

import torch

from kernels.attention.cpu import hta_attention_sdpa_cpu, hta_attention_split_cpu, hta_target_attention_cpu
from kernels.attention.reference import (
    AttentionKind,
    JaggedHTA,
    TokenGroup,
    hta_attention_padded,
    hta_attention_reference,
    visibility_mask,
)
from kernels.attention.triton import hta_attention_triton
from kernels.dispatch import Kernel, get_kernel, needs_grad, use_triton

__all__ = [
    "AttentionKind",
    "JaggedHTA",
    "TokenGroup",
    "hta_attention",
    "hta_attention_padded",
    "hta_attention_reference",
    "hta_attention_sdpa_cpu",
    "hta_attention_split_cpu",
    "hta_attention_triton",
    "hta_target_attention_cpu",
    "visibility_mask",
]


def _validate(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, h: JaggedHTA) -> None:
    """Shape/dtype checks that need no device synchronisation."""
    if q.dim() != 3 or k.dim() != 3 or v.dim() != 3:
        raise ValueError(
            f"q, k, v must be (N, heads, D); got {tuple(q.shape)}, {tuple(k.shape)}, {tuple(v.shape)}"
        )
    if k.shape != v.shape:
        raise ValueError(f"k and v shapes differ: {tuple(k.shape)} vs {tuple(v.shape)}")
    if q.shape[2] != k.shape[2]:
        raise ValueError(f"head dims differ: q {q.shape[2]} vs k {k.shape[2]}")
    if k.shape[1] == 0 or q.shape[1] % k.shape[1] != 0:
        raise ValueError(f"query heads ({q.shape[1]}) must be a multiple of kv heads ({k.shape[1]})")
    q_offsets, kv_offsets = h.q_offsets, h.kv_offsets
    if (
        q_offsets.dim() != 1
        or kv_offsets.dim() != 1
        or q_offsets.numel() != kv_offsets.numel()
        or q_offsets.numel() < 1
    ):
        raise ValueError(
            f"q_offsets and kv_offsets must be (B+1,); got {tuple(q_offsets.shape)}, {tuple(kv_offsets.shape)}"
        )
    if h.q_pos.shape != (q.shape[0],):
        raise ValueError(f"q_pos must be ({q.shape[0]},); got {tuple(h.q_pos.shape)}")
    if h.kv_ts.shape != (k.shape[0],) or h.kv_group.shape != (k.shape[0],):
        raise ValueError(
            f"kv_ts and kv_group must be ({k.shape[0]},); got {tuple(h.kv_ts.shape)}, {tuple(h.kv_group.shape)}"
        )
    if (
        q_offsets.is_floating_point()
        or kv_offsets.is_floating_point()
        or h.q_pos.is_floating_point()
        or h.kv_group.is_floating_point()
    ):
        raise TypeError("offsets, q_pos and kv_group must be integer tensors")
    if not isinstance(h.kind, AttentionKind):
        raise TypeError(f"kind must be an AttentionKind, got {h.kind!r}")


def hta_attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    q_offsets: torch.Tensor,
    kv_offsets: torch.Tensor,
    q_pos: torch.Tensor,
    kv_ts: torch.Tensor,
    kv_group: torch.Tensor,
    max_q_len: int,
    max_kv_len: int,
    kind: AttentionKind = AttentionKind.SOFTMAX,
    scale: float | None = None,
) -> torch.Tensor:
    """Jagged HTA attention: Triton on CUDA (or under ``TRITON_INTERPRET=1``); on the CPU the SDPA inference path
    without gradients and :func:`hta_attention_split_cpu` with them (``Kernel.REFERENCE`` forces the reference).

    Shapes and the mask are in the package docstring; ``kernels.set_kernel`` overrides the choice.

    Example:
        >>> q = torch.randn(3, 2, 16); k = v = torch.randn(3, 1, 16)
        >>> off = torch.tensor([0, 3]); grp = torch.tensor([TokenGroup.H, TokenGroup.R, TokenGroup.T])
        >>> out = hta_attention(q, k, v, off, off, torch.arange(3), torch.tensor([0.0, 1.0, 2.0]), grp, 3, 3)
        >>> out.shape
        torch.Size([3, 2, 16])
    """
    h = JaggedHTA(q_offsets, kv_offsets, q_pos, kv_ts, kv_group, max_q_len, max_kv_len, kind, scale)
    _validate(q, k, v, h)
    if not use_triton(q) and not q.is_cuda and get_kernel() is Kernel.AUTO:
        if not needs_grad(q, k, v):
            return hta_attention_sdpa_cpu(q, k, v, h)
        return hta_attention_split_cpu(q, k, v, h)
    if not use_triton(q) or (q.is_cuda and q.dtype == torch.float64):  # tl.dot has no float64 on GPUs
        return hta_attention_padded(q, k, v, h)
    return hta_attention_triton(q, k, v, h)
