"""Token groups, the jagged layout object, padding helpers, the dynamic mask and the readable PyTorch reference."""

from __future__ import annotations

import enum
from dataclasses import dataclass

import torch
import torch.nn.functional as F


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


@dataclass(frozen=True)
class JaggedHTA:
    """Everything :func:`hta_attention` takes besides q, k, v: the jagged layout, the mask inputs and the kind.

    Shapes are in the package docstring (``q_offsets``/``kv_offsets`` (B+1,), ``q_pos`` (Nq,), ``kv_ts``/``kv_group``
    (Nk,)). Every implementation takes ``(q, k, v, h: JaggedHTA)``; only the public reference and dispatcher spell
    the fields out as arguments.
    """

    q_offsets: torch.Tensor
    kv_offsets: torch.Tensor
    q_pos: torch.Tensor
    kv_ts: torch.Tensor
    kv_group: torch.Tensor
    max_q_len: int
    max_kv_len: int
    kind: AttentionKind = AttentionKind.SOFTMAX
    scale: float | None = None

    def scale_for(self, head_dim: int) -> float:
        """The score scale: ``scale``, or head_dim^-1/2 when it is None."""
        return head_dim**-0.5 if self.scale is None else self.scale


def _lengths(offsets: torch.Tensor) -> torch.Tensor:
    return offsets[1:] - offsets[:-1]


def pad_jagged(x: torch.Tensor, offsets: torch.Tensor, max_len: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Jagged (N, ...) -> dense (B, max_len, ...) and a (B, max_len) validity mask."""
    B = offsets.numel() - 1
    lengths = _lengths(offsets)
    idx = torch.arange(max_len, device=x.device)
    valid = idx[None, :] < lengths[:, None]  # (B, L)
    flat = (offsets[:-1, None] + idx[None, :]).clamp(max=max(x.shape[0] - 1, 0))  # (B, L)
    if x.shape[0] == 0:
        dense = x.new_zeros((B, max_len, *x.shape[1:]))
    else:
        # index_select: its backward is an index_add (plain indexing's accumulating index_put sorts on the CPU)
        dense = x.index_select(0, flat.reshape(-1)).reshape(B, max_len, *x.shape[1:])
        dense = dense * valid.reshape(B, max_len, *([1] * (x.dim() - 1))).to(dense.dtype)
    return dense, valid


def single_user(offsets: torch.Tensor, n: int) -> bool:
    """True when ``offsets`` is ``[0, n]`` (one user owning every row)."""
    return offsets.numel() == 2 and offsets.tolist() == [0, n]


def visibility_mask(h: JaggedHTA) -> torch.Tensor:
    """The dynamic mask as a dense (B, max_q_len, max_kv_len) bool tensor (False on padding)."""
    max_q_len, max_kv_len = h.max_q_len, h.max_kv_len
    ts_pad, kv_valid = pad_jagged(h.kv_ts, h.kv_offsets, max_kv_len)  # (B, Lk)
    grp_pad, _ = pad_jagged(h.kv_group, h.kv_offsets, max_kv_len)  # (B, Lk)
    pos_pad, q_valid = pad_jagged(h.q_pos, h.q_offsets, max_q_len)  # (B, Lq)
    pos_pad = pos_pad.clamp(min=0, max=max(max_kv_len - 1, 0))
    q_ts = torch.gather(ts_pad, 1, pos_pad) if max_kv_len > 0 else ts_pad.new_zeros(pos_pad.shape)  # (B, Lq)
    j = torch.arange(max_kv_len, device=h.kv_ts.device)
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
    """Readable PyTorch version of the op (pads to the longest user); see the package docstring for the math."""
    h = JaggedHTA(q_offsets, kv_offsets, q_pos, kv_ts, kv_group, max_q_len, max_kv_len, kind, scale)
    return hta_attention_padded(q, k, v, h)


def hta_attention_padded(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, h: JaggedHTA) -> torch.Tensor:
    """:func:`hta_attention_reference` on a :class:`JaggedHTA`: every user padded to the longest, a dense mask."""
    Nq, Hq, D = q.shape
    Hkv = k.shape[1]
    if Hq % Hkv != 0:
        raise ValueError(f"query heads ({Hq}) must be a multiple of kv heads ({Hkv})")
    if Nq == 0:
        return q[:0].clone()  # (0, Hq, D), still attached to q's graph
    scale = h.scale_for(D)
    qd, q_valid = pad_jagged(q, h.q_offsets, h.max_q_len)  # (B, Lq, Hq, D)
    kd, _ = pad_jagged(k, h.kv_offsets, h.max_kv_len)  # (B, Lk, Hkv, D)
    vd, _ = pad_jagged(v, h.kv_offsets, h.max_kv_len)
    rep = Hq // Hkv
    kd = kd.repeat_interleave(rep, dim=2)  # (B, Lk, Hq, D)
    vd = vd.repeat_interleave(rep, dim=2)
    s = torch.einsum("bqhd,bkhd->bhqk", qd, kd) * scale  # (B, Hq, Lq, Lk)
    vis = visibility_mask(h)[:, None]
    if h.kind is AttentionKind.SOFTMAX:
        s = s.masked_fill(~vis, float("-inf"))
        p = torch.softmax(s, dim=-1)
        p = torch.nan_to_num(p, nan=0.0)  # rows with nothing visible (padding) -> 0
    else:
        n = vis.sum(-1, keepdim=True).clamp(min=1).to(s.dtype)
        p = F.silu(s) * vis.to(s.dtype) / n
    out = torch.einsum("bhqk,bkhd->bqhd", p, vd)  # (B, Lq, Hq, D)
    return out[q_valid]  # (Nq, Hq, D), users in order
