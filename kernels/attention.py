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
"""

from __future__ import annotations

import enum

import torch
import torch.nn.functional as F

from kernels.dispatch import use_triton


class AttentionKind(enum.Enum):
    """Attention nonlinearity."""

    SOFTMAX = "softmax"
    SILU = "silu"


class TokenGroup(enum.IntEnum):
    """Token groups of the heterogeneous sequence (values stored in ``kv_group``)."""

    U = 0
    H = 1
    R = 2
    T = 3


def _lengths(offsets: torch.Tensor) -> torch.Tensor:
    return offsets[1:] - offsets[:-1]


def _pad(x: torch.Tensor, offsets: torch.Tensor, max_len: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Jagged (N, ...) -> dense (B, max_len, ...) and a (B, max_len) validity mask."""
    B = offsets.numel() - 1
    lengths = _lengths(offsets)
    idx = torch.arange(max_len, device=x.device)
    valid = idx[None, :] < lengths[:, None]  # (B, L)
    flat = (offsets[:-1, None] + idx[None, :]).clamp(max=max(x.shape[0] - 1, 0))  # (B, L)
    if x.shape[0] == 0:
        dense = x.new_zeros((B, max_len, *x.shape[1:]))
    else:
        dense = x[flat.reshape(-1)].reshape(B, max_len, *x.shape[1:])
        dense = dense * valid.reshape(B, max_len, *([1] * (x.dim() - 1))).to(dense.dtype)
    return dense, valid


def visibility_mask(
    q_offsets: torch.Tensor,
    kv_offsets: torch.Tensor,
    q_pos: torch.Tensor,
    kv_ts: torch.Tensor,
    kv_group: torch.Tensor,
    max_q_len: int,
    max_kv_len: int,
) -> torch.Tensor:
    """The dynamic mask as a dense (B, max_q_len, max_kv_len) bool tensor (False on padding)."""
    ts_pad, kv_valid = _pad(kv_ts, kv_offsets, max_kv_len)  # (B, Lk)
    grp_pad, _ = _pad(kv_group, kv_offsets, max_kv_len)  # (B, Lk)
    pos_pad, q_valid = _pad(q_pos, q_offsets, max_q_len)  # (B, Lq)
    pos_pad = pos_pad.clamp(min=0, max=max(max_kv_len - 1, 0))
    q_ts = torch.gather(ts_pad, 1, pos_pad) if max_kv_len > 0 else ts_pad.new_zeros(pos_pad.shape)  # (B, Lq)
    j = torch.arange(max_kv_len, device=kv_ts.device)
    diag = pos_pad[:, :, None] == j[None, None, :]
    uh = (grp_pad == TokenGroup.U) | (grp_pad == TokenGroup.H)
    r_earlier = (grp_pad == TokenGroup.R)[:, None, :] & (ts_pad[:, None, :] < q_ts[:, :, None])
    vis = diag | uh[:, None, :] | r_earlier
    return vis & q_valid[:, :, None] & kv_valid[:, None, :]


def hta_attention_reference(
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
    """Readable PyTorch version of the op (pads to the longest user); see the module docstring for the math."""
    Nq, Hq, D = q.shape
    Hkv = k.shape[1]
    if Hq % Hkv != 0:
        raise ValueError(f"query heads ({Hq}) must be a multiple of kv heads ({Hkv})")
    if Nq == 0:
        return q.new_zeros((0, Hq, D))
    scale = D**-0.5 if scale is None else scale
    qd, q_valid = _pad(q, q_offsets, max_q_len)  # (B, Lq, Hq, D)
    kd, _ = _pad(k, kv_offsets, max_kv_len)  # (B, Lk, Hkv, D)
    vd, _ = _pad(v, kv_offsets, max_kv_len)
    rep = Hq // Hkv
    kd = kd.repeat_interleave(rep, dim=2)  # (B, Lk, Hq, D)
    vd = vd.repeat_interleave(rep, dim=2)
    s = torch.einsum("bqhd,bkhd->bhqk", qd, kd) * scale  # (B, Hq, Lq, Lk)
    vis = visibility_mask(q_offsets, kv_offsets, q_pos, kv_ts, kv_group, max_q_len, max_kv_len)[:, None]
    if kind is AttentionKind.SOFTMAX:
        s = s.masked_fill(~vis, float("-inf"))
        p = torch.softmax(s, dim=-1)
        p = torch.nan_to_num(p, nan=0.0)  # rows with nothing visible (padding) -> 0
    else:
        n = vis.sum(-1, keepdim=True).clamp(min=1).to(s.dtype)
        p = F.silu(s) * vis.to(s.dtype) / n
    out = torch.einsum("bhqk,bkhd->bqhd", p, vd)  # (B, Lq, Hq, D)
    return out[q_valid]  # (Nq, Hq, D), users in order


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
    """Jagged HTA attention: Triton on CUDA (or under ``TRITON_INTERPRET=1``), the reference otherwise."""
    if use_triton(q):
        try:
            from kernels import attention_triton  # type: ignore[attr-defined]
        except ImportError:
            attention_triton = None
        if attention_triton is not None:
            return attention_triton.hta_attention_triton(  # type: ignore[no-any-return]
                q, k, v, q_offsets, kv_offsets, q_pos, kv_ts, kv_group, max_q_len, max_kv_len, kind, scale
            )
    return hta_attention_reference(
        q, k, v, q_offsets, kv_offsets, q_pos, kv_ts, kv_group, max_q_len, max_kv_len, kind, scale
    )
