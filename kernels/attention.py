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
from typing import Any

import torch
import torch.nn.functional as F

from kernels.dispatch import (
    HAS_TRITON,
    Kernel,
    check_triton_device,
    get_kernel,
    is_interpreted,
    tl,
    triton,
    use_triton,
)


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
        # index_select: its backward is an index_add (plain indexing's accumulating index_put sorts on the CPU)
        dense = x.index_select(0, flat.reshape(-1)).reshape(B, max_len, *x.shape[1:])
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
        return q[:0].clone()  # (0, Hq, D), still attached to q's graph
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



# ---------------------------------------------------------------------------------------------------------------
# Fast CPU paths. Inference (no gradient): SDPA, no padding for one user, no mask when every key is visible.
# Training: hta_attention_split_cpu (context keys + a self slot). Same math as the reference up to float32 rounding.
# ---------------------------------------------------------------------------------------------------------------


def _needs_grad(*ts: torch.Tensor) -> bool:
    return torch.is_grad_enabled() and any(t.requires_grad for t in ts)


def _single_user(offsets: torch.Tensor, n: int) -> bool:
    """True when ``offsets`` is ``[0, n]`` (one user owning every row)."""
    return offsets.numel() == 2 and offsets.tolist() == [0, n]


def _hta_attention_cpu(
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
    kind: AttentionKind,
    scale: float | None,
) -> torch.Tensor:
    """Inference path of :func:`hta_attention` on the CPU: SDPA (softmax) with a boolean mask built only when needed.

    One user (the serving case) needs no padding; if every key is U/H the mask is all-true (U/H keys are visible to
    all, and each query's own key is one of them) and is dropped. Other inputs pad like the reference.
    """
    Nq, Hq, D = q.shape
    Nk, Hkv = k.shape[0], k.shape[1]
    if Nq == 0 or Nk == 0 or kind is not AttentionKind.SOFTMAX or q.dtype != k.dtype or k.dtype != v.dtype:
        return hta_attention_reference(
            q, k, v, q_offsets, kv_offsets, q_pos, kv_ts, kv_group, max_q_len, max_kv_len, kind, scale
        )
    scale = D**-0.5 if scale is None else scale
    if _single_user(q_offsets, Nq) and _single_user(kv_offsets, Nk):
        pos = q_pos.clamp(0, Nk - 1)
        if bool(((kv_group == TokenGroup.U) | (kv_group == TokenGroup.H)).all()) and bool((q_pos == pos).all()):
            mask = None
        else:
            j = torch.arange(Nk)
            uh = (kv_group == TokenGroup.U) | (kv_group == TokenGroup.H)  # (Lk,)
            r = kv_group == TokenGroup.R
            mask = (pos[:, None] == j[None, :]) | uh[None, :] | (r[None, :] & (kv_ts[None, :] < kv_ts[pos][:, None]))
            mask = mask[None, None]  # (1, 1, Lq, Lk)
        qd = q.transpose(0, 1)[None]  # (1, Hq, Lq, D)
        kd = k.transpose(0, 1)[None]  # (1, Hkv, Lk, D)
        vd = v.transpose(0, 1)[None]
        out = F.scaled_dot_product_attention(qd, kd, vd, attn_mask=mask, scale=scale, enable_gqa=Hq != Hkv)
        return out[0].transpose(0, 1)  # (Nq, Hq, D)
    qd, q_valid = _pad(q, q_offsets, max_q_len)  # (B, Lq, Hq, D)
    kd, _ = _pad(k, kv_offsets, max_kv_len)
    vd, _ = _pad(v, kv_offsets, max_kv_len)
    vis = visibility_mask(q_offsets, kv_offsets, q_pos, kv_ts, kv_group, max_q_len, max_kv_len)
    vis = vis | ~q_valid[:, :, None]  # padded query rows: any finite row (dropped below), never an empty softmax
    out = F.scaled_dot_product_attention(
        qd.transpose(1, 2), kd.transpose(1, 2), vd.transpose(1, 2), attn_mask=vis[:, None], scale=scale,
        enable_gqa=Hq != Hkv,
    )  # (B, Hq, Lq, D)
    return out.transpose(1, 2)[q_valid]


def hta_attention_split_cpu(
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
    """:func:`hta_attention` computed against each user's context keys plus each query's own key (differentiable).

    A T key is visible only to its own query, so no query needs the (queries x T keys) block that the padded
    reference builds: scores are (B, Lq, L_ctx) against the user's U/H/R keys (compacted, order kept), with the
    diagonal where a query's own key is a context key, plus one "self" score per query whose own key is a T key.
    Same math as :func:`hta_attention_reference` (same shapes in and out); the padded work drops from
    Lq x L_kv to Lq x (L_ctx + 1), about half for a full layer and more for target layers. Used for CPU training.

    Example:
        >>> q = torch.randn(3, 2, 16); k = v = torch.randn(3, 1, 16)
        >>> off = torch.tensor([0, 3]); grp = torch.tensor([TokenGroup.H, TokenGroup.R, TokenGroup.T])
        >>> args = (q, k, v, off, off, torch.arange(3), torch.tensor([0.0, 1.0, 2.0]), grp, 3, 3)
        >>> torch.allclose(hta_attention_split_cpu(*args), hta_attention_reference(*args), atol=1e-6)
        True
    """
    Nq, Hq, D = q.shape
    Nk, Hkv = k.shape[0], k.shape[1]
    if Nq == 0 or Nk == 0 or Hq % Hkv:
        return hta_attention_reference(
            q, k, v, q_offsets, kv_offsets, q_pos, kv_ts, kv_group, max_q_len, max_kv_len, kind, scale
        )
    rep = Hq // Hkv
    scale = D**-0.5 if scale is None else scale
    B = q_offsets.numel() - 1
    k, v = k.to(q.dtype), v.to(q.dtype)
    is_ctx = kv_group != TokenGroup.T  # (Nk,)
    before = torch.zeros(Nk + 1, dtype=torch.int64, device=q.device)  # context keys before each row
    before[1:] = torch.cumsum(is_ctx, 0)
    ctx_offsets = before[kv_offsets]  # (B+1,)
    Lc = int((ctx_offsets[1:] - ctx_offsets[:-1]).max())
    q_user = torch.repeat_interleave(torch.arange(B, device=q.device), q_offsets.diff(), output_size=Nq)
    own = kv_offsets[q_user] + q_pos  # (Nq,) row of each query's own key
    own_ctx = is_ctx[own]  # (Nq,) own key is a context key (then it is in the context block, not a self slot)
    own_c = torch.where(own_ctx, before[own] - ctx_offsets[q_user], -1)  # its column in the context block
    Lq = max_q_len
    qd, _ = _pad(q, q_offsets, Lq)  # (B, Lq, Hq, D)
    qts, _ = _pad(kv_ts.index_select(0, own), q_offsets, Lq)  # (B, Lq)
    own_cd, _ = _pad(own_c, q_offsets, Lq)
    own_ctx_d, _ = _pad(own_ctx, q_offsets, Lq)  # padded query rows: False, i.e. a finite self slot (no NaN)
    # self slot: (Nq, Hkv, rep) scores and (Nq, Hkv, D) values of each query's own key
    k_own, v_own = k.index_select(0, own), v.index_select(0, own)
    s_self = (q.view(Nq, Hkv, rep, D) * k_own.view(Nq, Hkv, 1, D)).sum(-1) * scale
    s_self_d = _pad(s_self, q_offsets, Lq)[0].permute(0, 2, 1, 3)  # (B, Hkv, Lq, rep)
    v_self_d = _pad(v_own, q_offsets, Lq)[0].permute(0, 2, 1, 3)  # (B, Hkv, Lq, D)
    self_on = ~own_ctx_d  # (B, Lq)
    if Lc > 0:
        ctx_rows = torch.nonzero(is_ctx).flatten()
        kd, c_valid = _pad(k.index_select(0, ctx_rows), ctx_offsets, Lc)  # (B, Lc, Hkv, D)
        vd, _ = _pad(v.index_select(0, ctx_rows), ctx_offsets, Lc)
        tsd, _ = _pad(kv_ts.index_select(0, ctx_rows), ctx_offsets, Lc)
        grpd, _ = _pad(kv_group.index_select(0, ctx_rows), ctx_offsets, Lc)
        j = torch.arange(Lc, device=q.device)
        uh = (grpd == TokenGroup.U) | (grpd == TokenGroup.H)  # (B, Lc)
        r = grpd == TokenGroup.R
        vis = (uh[:, None, :] | (r[:, None, :] & (tsd[:, None, :] < qts[:, :, None])) | (own_cd[:, :, None] == j))
        vis = vis & c_valid[:, None, :]  # (B, Lq, Lc)
        # (B*Hkv, Lq*rep, D) x (B*Hkv, D, Lc): row (i, r) = query i, head hk*rep + r
        qh = qd.reshape(B, Lq, Hkv, rep, D).permute(0, 2, 1, 3, 4).reshape(B * Hkv, Lq * rep, D)
        kh = kd.permute(0, 2, 3, 1).reshape(B * Hkv, D, Lc)
        vh = vd.permute(0, 2, 1, 3).reshape(B * Hkv, Lc, D)
        s = torch.bmm(qh, kh).mul_(scale).view(B, Hkv, Lq, rep, Lc)
        vis5 = vis[:, None, :, None, :]  # (B, 1, Lq, 1, Lc)
    if kind is AttentionKind.SOFTMAX:
        s_self_d = s_self_d.masked_fill(~self_on[:, None, :, None], float("-inf"))
        if Lc > 0:
            # one softmax over [context scores, self score]; a real row always sees its own key, a padded row
            # its finite self slot, so no row is empty
            p_all = torch.softmax(torch.cat([s.masked_fill(~vis5, float("-inf")), s_self_d[..., None]], dim=-1), -1)
            o = torch.bmm(p_all[..., :Lc].reshape(B * Hkv, Lq * rep, Lc), vh).view(B, Hkv, Lq, rep, D)
            o = o + p_all[..., Lc, None] * v_self_d[:, :, :, None, :]
        else:
            o = torch.softmax(s_self_d[..., None], dim=-1) * v_self_d[:, :, :, None, :]
    else:
        on = self_on[:, None, :, None].to(q.dtype)
        o = (F.silu(s_self_d) * on)[..., None] * v_self_d[:, :, :, None, :]
        n = self_on.to(q.dtype)  # (B, Lq) visible keys per query
        if Lc > 0:
            p = F.silu(s) * vis5.to(q.dtype)
            o = o + torch.bmm(p.reshape(B * Hkv, Lq * rep, Lc), vh).view(B, Hkv, Lq, rep, D)
            n = n + vis.sum(-1).to(q.dtype)
        o = o / n.clamp(min=1.0)[:, None, :, None, None]
    o = o.permute(0, 2, 1, 3, 4).reshape(B * Lq, Hq, D)
    q_row = q_user * Lq + torch.arange(Nq, device=q.device) - q_offsets[q_user]  # each query's padded row
    return o.index_select(0, q_row)  # (Nq, Hq, D), users in order


def hta_target_attention_cpu(
    q: torch.Tensor,
    k_self: torch.Tensor,
    v_self: torch.Tensor,
    q_offsets: torch.Tensor,
    q_ts: torch.Tensor,
    k_ctx: torch.Tensor,
    v_ctx: torch.Tensor,
    ctx_offsets: torch.Tensor,
    ctx_ts: torch.Tensor,
    ctx_group: torch.Tensor,
    max_q_len: int,
    max_ctx_len: int,
    kind: AttentionKind = AttentionKind.SOFTMAX,
    scale: float | None = None,
) -> torch.Tensor:
    """Target-only HTA attention without the target x target block: each T query sees its user's context and itself.

    Equals :func:`hta_attention` for T queries whose user's key sequence is ``[context.., targets..]`` (a T key is
    visible only to its own query), computed as one (T, Hq, L_ctx) score matmul plus the self term::

        q (Nq, Hq, D), k_self/v_self (Nq, Hkv, D) the queries' own keys/values, q_ts (Nq,) their timestamps,
        q_offsets (B+1,); k_ctx/v_ctx (Nc, Hkv, D) context (U/H/R only) keys/values, ctx_offsets (B+1,),
        ctx_ts (Nc,), ctx_group (Nc,).  Returns (Nq, Hq, D).

    Differentiable torch ops (any device); the model uses it on the CPU, where it is the fast path.

    Example:
        >>> q = torch.randn(2, 2, 4); ks = vs = torch.randn(2, 1, 4); kc = vc = torch.randn(3, 1, 4)
        >>> grp = torch.tensor([0, 1, 2]); ts = torch.tensor([float("-inf"), -5.0, 1.0])
        >>> out = hta_target_attention_cpu(q, ks, vs, torch.tensor([0, 2]), torch.tensor([0.0, 2.0]), kc, vc,
        ...                                torch.tensor([0, 3]), ts, grp, 2, 3)
        >>> out.shape
        torch.Size([2, 2, 4])
    """
    Nq, Hq, D = q.shape
    Hkv = k_ctx.shape[1]
    if Hq % Hkv != 0:
        raise ValueError(f"query heads ({Hq}) must be a multiple of kv heads ({Hkv})")
    rep = Hq // Hkv
    scale = D**-0.5 if scale is None else scale
    if Nq == 0:
        return q[:0].clone()
    B = q_offsets.numel() - 1
    # self term: (Nq, Hkv, rep)
    s_self = (q.view(Nq, Hkv, rep, D) * k_self.to(q.dtype).view(Nq, Hkv, 1, D)).sum(-1) * scale
    Nc = k_ctx.shape[0]
    one = B == 1 and _single_user(q_offsets, Nq) and _single_user(ctx_offsets, Nc)
    if one:
        qd, q_valid = q[None], None  # (1, Lq, Hq, D)
        kd, vd = k_ctx[None], v_ctx[None]  # (1, Lc, Hkv, D)
        tsd, grpd, c_valid = ctx_ts[None], ctx_group[None], None
        qts = q_ts[None]
        Lq, Lc = Nq, Nc
    else:
        Lq, Lc = max_q_len, max_ctx_len
        qd, q_valid = _pad(q, q_offsets, Lq)
        kd, c_valid = _pad(k_ctx, ctx_offsets, Lc)
        vd, _ = _pad(v_ctx, ctx_offsets, Lc)
        tsd, _ = _pad(ctx_ts, ctx_offsets, Lc)
        grpd, _ = _pad(ctx_group, ctx_offsets, Lc)
        qts, _ = _pad(q_ts, q_offsets, Lq)
    kd, vd = kd.to(q.dtype), vd.to(q.dtype)
    # (B*Hkv, Lq*rep, D) x (B*Hkv, D, Lc) -> (B*Hkv, Lq*rep, Lc); row (i, r) = query i, head hk*rep + r
    qh = qd.reshape(B, Lq, Hkv, rep, D).permute(0, 2, 1, 3, 4).reshape(B * Hkv, Lq * rep, D)
    kh = kd.permute(0, 2, 3, 1).reshape(B * Hkv, D, Lc)
    vh = vd.permute(0, 2, 1, 3).reshape(B * Hkv, Lc, D)
    s = torch.bmm(qh, kh).mul_(scale).view(B, Hkv, Lq, rep, Lc)
    r = grpd == TokenGroup.R  # (B, Lc)
    vis: torch.Tensor | None = None
    if not one or bool(r.any()):
        vis = ~r[:, None, :] | (tsd[:, None, :] < qts[:, :, None])  # (B, Lq, Lc)
        if c_valid is not None:
            vis = vis & c_valid[:, None, :]
    s_self_d = s_self if one else _pad(s_self, q_offsets, Lq)[0]
    s_self_d = s_self_d.reshape(B, Lq, Hkv, rep).permute(0, 2, 1, 3)  # (B, Hkv, Lq, rep)
    vsd = v_self.to(q.dtype)
    vsd = (vsd[None] if one else _pad(vsd, q_offsets, Lq)[0]).permute(0, 2, 1, 3)  # (B, Hkv, Lq, D)
    vis5 = None if vis is None else vis[:, None, :, None, :]  # (B, 1, Lq, 1, Lc)
    if kind is AttentionKind.SOFTMAX:
        if vis5 is not None:
            s = s.masked_fill(~vis5, float("-inf"))
        # one fused softmax over [context scores, self score]; never empty (the self score is finite)
        p_all = torch.softmax(torch.cat([s, s_self_d[..., None]], dim=-1), dim=-1)
        p, p_self = p_all[..., :Lc], p_all[..., Lc]
        denom = None
    else:
        p = F.silu(s)
        if vis5 is not None:
            p = p * vis5.to(p.dtype)
        p_self = F.silu(s_self_d)
        n = torch.full((B, Lq), float(Lc), dtype=p.dtype) if vis is None else vis.sum(-1).to(p.dtype)
        denom = (n + 1.0)[:, None, :, None].expand_as(p_self)
    o = torch.bmm(p.reshape(B * Hkv, Lq * rep, Lc), vh).view(B, Hkv, Lq, rep, D)
    o = o + p_self[..., None] * vsd[:, :, :, None, :]
    if denom is not None:
        o = o / denom[..., None]
    o = o.permute(0, 2, 1, 3, 4).reshape(B, Lq, Hq, D)
    return o[0] if one else o[q_valid]


# ---------------------------------------------------------------------------------------------------------------
# Triton kernels.
#
# Layout: one program per (user b, query head h, block of BLOCK_M queries of b) in the forward and dq kernels, one per
# (user b, kv head hk, block of BLOCK_N keys of b) in the dk/dv kernel. Programs read their user's slice through the
# offsets, so jagged inputs are never padded; a program whose block starts past its user's length returns at once.
# Every mask below is the module docstring's rule, evaluated per (query, key) tile from q_pos / kv_ts / kv_group:
#
#     vis = (q_pos == j) | (grp_j == U) | (grp_j == H) | ((grp_j == R) & (ts_j < ts_i))
#
# Tiles that cannot contain a visible pair skip their dots. The test is conservative and costs vectors, not a
# (BM, BN) reduction (which cost registers and spills on sm_90): a key block is needed iff it holds a U/H key, an R
# key earlier than the block's latest query, or the own position of one of the block's queries. With targets
# stored together, this skips the T-key blocks for every query block that holds none of those targets.
# Offsets inside one user are int32 (pointers move to the user's rows once, in int64), again for registers.
# Softmax uses base-2 exponentials: p = exp2(s * scale * log2(e) - lse2) with lse2 = m + log2(l) saved per (row, head).
# Every query sees itself, so no real row ends with an empty softmax; the running max starts at -inf and is replaced by
# 0 while a row has seen nothing yet, which keeps exp2(-inf - (-inf)) out of the arithmetic.
# ---------------------------------------------------------------------------------------------------------------


@triton.jit
def _hta_fwd_kernel(
    Q,  # (Nq, Hq, D) queries; row i, head h at Q + i * stride_qn + h * stride_qh (+ d, last dim contiguous)
    K,  # (Nk, Hkv, D) keys
    V,  # (Nk, Hkv, D) values
    OUT,  # (Nq, Hq, D) output, written here
    STAT,  # (Nq, Hq) float32, written here: lse2 (softmax, base-2 log-sum-exp) or n_i (silu, visible-key count)
    Q_OFF,  # (B+1,) int64 query offsets per user
    KV_OFF,  # (B+1,) int64 key offsets per user
    Q_POS,  # (Nq,) int64 each query's position inside its user's keys
    KV_TS,  # (Nk,) float key timestamps
    KV_GRP,  # (Nk,) int key TokenGroup
    stride_qn,  # Q row stride
    stride_qh,  # Q head stride
    stride_kn,  # K row stride
    stride_kh,  # K head stride
    stride_vn,  # V row stride
    stride_vh,  # V head stride
    stride_on,  # OUT row stride
    stride_oh,  # OUT head stride
    scale,  # float, softmax/silu scale
    D,  # head dim (<= BLOCK_D)
    tune_q_len,  # unused in the body: the autotuner's key (longest user's queries, power of two, <= 1024)
    HQ: tl.constexpr,  # query heads
    GQA: tl.constexpr,  # query heads per kv head (Hq // Hkv)
    SILU: tl.constexpr,  # pointwise SiLU attention instead of softmax
    DOT_PRECISION: tl.constexpr,  # "ieee" or "tf32" for float32 inputs (ignored for 16-bit)
    BLOCK_M: tl.constexpr,
    BLOCK_N: tl.constexpr,
    BLOCK_D: tl.constexpr,
):
    pid_bh = tl.program_id(0)
    pid_m = tl.program_id(1)
    b = pid_bh // HQ
    h = pid_bh % HQ
    hk = h // GQA  # grouped-query: this head's kv head
    q_start = tl.load(Q_OFF + b)  # int64
    q_len = (tl.load(Q_OFF + b + 1) - q_start).to(tl.int32)
    if pid_m * BLOCK_M >= q_len:
        return
    kv_start = tl.load(KV_OFF + b)
    kv_len = (tl.load(KV_OFF + b + 1) - kv_start).to(tl.int32)
    # move every pointer to this (user, head) once in int64; offsets inside a user stay int32 (fewer registers)
    Q += q_start * stride_qn + h * stride_qh
    OUT += q_start * stride_on + h * stride_oh
    K += kv_start * stride_kn + hk * stride_kh
    V += kv_start * stride_vn + hk * stride_vh
    STAT += q_start * HQ + h
    Q_POS += q_start
    KV_TS += kv_start
    KV_GRP += kv_start

    offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)  # (BM,) query index inside the user
    offs_d = tl.arange(0, BLOCK_D)
    m_ok = offs_m < q_len
    d_ok = offs_d < D
    q = tl.load(
        Q + offs_m[:, None] * stride_qn + offs_d[None, :], mask=m_ok[:, None] & d_ok[None, :], other=0.0
    )
    pos = tl.load(Q_POS + offs_m, mask=m_ok, other=-1).to(tl.int32)  # (BM,) key position of the query's token
    pos_ok = m_ok & (pos >= 0) & (pos < kv_len)
    q_ts = tl.load(KV_TS + pos, mask=pos_ok, other=0.0)  # (BM,) the query token's own timestamp
    # block-skip summaries of this query block: latest query time, range of the queries' own key positions
    q_ts_max = tl.max(tl.where(pos_ok, q_ts, float("-inf")))
    pos_lo = tl.min(tl.where(pos_ok, pos, 2147483647))
    pos_hi = tl.max(tl.where(pos_ok, pos, -1))

    acc = tl.zeros((BLOCK_M, BLOCK_D), dtype=tl.float32)
    m_i = tl.full((BLOCK_M,), float("-inf"), dtype=tl.float32)  # running max (softmax, base-2 units)
    l_i = tl.zeros((BLOCK_M,), dtype=tl.float32)  # running sum (softmax) or visible count (silu)
    qk_scale = scale * 1.4426950408889634  # log2(e): exp(x) = exp2(x * log2 e)
    for start_n in range(0, kv_len, BLOCK_N):
        offs_n = start_n + tl.arange(0, BLOCK_N)  # (BN,) key index inside the user
        n_ok = offs_n < kv_len
        grp = tl.load(KV_GRP + offs_n, mask=n_ok, other=3).to(tl.int32)
        ts = tl.load(KV_TS + offs_n, mask=n_ok, other=0.0)
        vis = (pos[:, None] == offs_n[None, :]) | (grp[None, :] == 0) | (grp[None, :] == 1)
        vis = vis | ((grp[None, :] == 2) & (ts[None, :] < q_ts[:, None]))
        vis = vis & n_ok[None, :] & m_ok[:, None]  # (BM, BN)
        # skip the dots when no key of this block can be visible to any query of this block (a (BN,) test)
        maybe = (((grp == 0) | (grp == 1) | ((grp == 2) & (ts < q_ts_max))) & n_ok).to(tl.int32)
        if (tl.max(maybe) > 0) | ((pos_hi >= start_n) & (pos_lo < start_n + BLOCK_N)):
            kv_mask = n_ok[:, None] & d_ok[None, :]
            k = tl.load(K + offs_n[:, None] * stride_kn + offs_d[None, :], mask=kv_mask, other=0.0)
            v = tl.load(V + offs_n[:, None] * stride_vn + offs_d[None, :], mask=kv_mask, other=0.0)
            s = tl.dot(q, tl.trans(k), input_precision=DOT_PRECISION)  # (BM, BN) raw scores, fp32
            if SILU:
                x = s * scale
                a = tl.where(vis, x * tl.sigmoid(x), 0.0)
                l_i += tl.sum(vis.to(tl.float32), 1)
                acc += tl.dot(a.to(v.dtype), v, input_precision=DOT_PRECISION)
            else:
                s = tl.where(vis, s * qk_scale, float("-inf"))
                m_new = tl.maximum(m_i, tl.max(s, 1))
                m_safe = tl.where(m_new == float("-inf"), 0.0, m_new)  # rows with nothing visible yet
                alpha = tl.exp2(m_i - m_safe)
                p = tl.exp2(s - m_safe[:, None])
                l_i = l_i * alpha + tl.sum(p, 1)
                acc = acc * alpha[:, None] + tl.dot(p.to(v.dtype), v, input_precision=DOT_PRECISION)
                m_i = m_new

    l_safe = tl.where(l_i > 0.0, l_i, 1.0)  # padded rows (never stored) and malformed rows stay finite
    out = acc / l_safe[:, None]
    if SILU:  # noqa: SIM108 (constexpr branch)
        stat = l_safe
    else:
        stat = tl.where(l_i > 0.0, m_i + tl.log2(l_safe), 0.0)
    out_ptrs = OUT + offs_m[:, None] * stride_on + offs_d[None, :]
    tl.store(out_ptrs, out.to(OUT.dtype.element_ty), mask=m_ok[:, None] & d_ok[None, :])
    tl.store(STAT + offs_m * HQ, stat, mask=m_ok)


@triton.jit
def _hta_bwd_dq_kernel(
    Q,  # (Nq, Hq, D) queries
    K,  # (Nk, Hkv, D) keys
    V,  # (Nk, Hkv, D) values
    DO,  # (Nq, Hq, D) gradient of the output
    DQ,  # (Nq, Hq, D) written here (allocated like DO: same strides)
    STAT,  # (Nq, Hq) float32 from the forward (lse2 or n_i)
    DELTA,  # (Nq, Hq) float32 rowsum(dO * O) (softmax only; unused for silu)
    Q_OFF,  # (B+1,) int64 query offsets per user
    KV_OFF,  # (B+1,) int64 key offsets per user
    Q_POS,  # (Nq,) int64 query positions inside the user's keys
    KV_TS,  # (Nk,) float key timestamps
    KV_GRP,  # (Nk,) int key TokenGroup
    stride_qn,  # Q row stride
    stride_qh,  # Q head stride
    stride_kn,  # K row stride
    stride_kh,  # K head stride
    stride_vn,  # V row stride
    stride_vh,  # V head stride
    stride_don,  # DO (and DQ) row stride
    stride_doh,  # DO (and DQ) head stride
    scale,
    D,
    tune_q_len,  # autotuner key only
    HQ: tl.constexpr,
    GQA: tl.constexpr,
    SILU: tl.constexpr,
    DOT_PRECISION: tl.constexpr,
    BLOCK_M: tl.constexpr,
    BLOCK_N: tl.constexpr,
    BLOCK_D: tl.constexpr,
):
    pid_bh = tl.program_id(0)
    pid_m = tl.program_id(1)
    b = pid_bh // HQ
    h = pid_bh % HQ
    hk = h // GQA
    q_start = tl.load(Q_OFF + b)
    q_len = (tl.load(Q_OFF + b + 1) - q_start).to(tl.int32)
    if pid_m * BLOCK_M >= q_len:
        return
    kv_start = tl.load(KV_OFF + b)
    kv_len = (tl.load(KV_OFF + b + 1) - kv_start).to(tl.int32)
    Q += q_start * stride_qn + h * stride_qh
    DO += q_start * stride_don + h * stride_doh
    DQ += q_start * stride_don + h * stride_doh
    K += kv_start * stride_kn + hk * stride_kh
    V += kv_start * stride_vn + hk * stride_vh
    STAT += q_start * HQ + h
    DELTA += q_start * HQ + h
    Q_POS += q_start
    KV_TS += kv_start
    KV_GRP += kv_start

    offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_d = tl.arange(0, BLOCK_D)
    m_ok = offs_m < q_len
    d_ok = offs_d < D
    md_mask = m_ok[:, None] & d_ok[None, :]
    q = tl.load(Q + offs_m[:, None] * stride_qn + offs_d[None, :], mask=md_mask, other=0.0)
    do = tl.load(DO + offs_m[:, None] * stride_don + offs_d[None, :], mask=md_mask, other=0.0)
    stat = tl.load(STAT + offs_m * HQ, mask=m_ok, other=1.0)  # (BM,)
    delta = tl.load(DELTA + offs_m * HQ, mask=m_ok, other=0.0)  # (BM,)
    pos = tl.load(Q_POS + offs_m, mask=m_ok, other=-1).to(tl.int32)
    pos_ok = m_ok & (pos >= 0) & (pos < kv_len)
    q_ts = tl.load(KV_TS + pos, mask=pos_ok, other=0.0)
    q_ts_max = tl.max(tl.where(pos_ok, q_ts, float("-inf")))
    pos_lo = tl.min(tl.where(pos_ok, pos, 2147483647))
    pos_hi = tl.max(tl.where(pos_ok, pos, -1))

    dq = tl.zeros((BLOCK_M, BLOCK_D), dtype=tl.float32)
    qk_scale = scale * 1.4426950408889634
    for start_n in range(0, kv_len, BLOCK_N):
        offs_n = start_n + tl.arange(0, BLOCK_N)
        n_ok = offs_n < kv_len
        grp = tl.load(KV_GRP + offs_n, mask=n_ok, other=3).to(tl.int32)
        ts = tl.load(KV_TS + offs_n, mask=n_ok, other=0.0)
        vis = (pos[:, None] == offs_n[None, :]) | (grp[None, :] == 0) | (grp[None, :] == 1)
        vis = vis | ((grp[None, :] == 2) & (ts[None, :] < q_ts[:, None]))
        vis = vis & n_ok[None, :] & m_ok[:, None]  # (BM, BN)
        # skip the dots when no key of this block can be visible to any query of this block (a (BN,) test)
        maybe = (((grp == 0) | (grp == 1) | ((grp == 2) & (ts < q_ts_max))) & n_ok).to(tl.int32)
        if (tl.max(maybe) > 0) | ((pos_hi >= start_n) & (pos_lo < start_n + BLOCK_N)):
            kv_mask = n_ok[:, None] & d_ok[None, :]
            k = tl.load(K + offs_n[:, None] * stride_kn + offs_d[None, :], mask=kv_mask, other=0.0)
            v = tl.load(V + offs_n[:, None] * stride_vn + offs_d[None, :], mask=kv_mask, other=0.0)
            s = tl.dot(q, tl.trans(k), input_precision=DOT_PRECISION)  # (BM, BN)
            dp = tl.dot(do, tl.trans(v), input_precision=DOT_PRECISION)  # (BM, BN) dL/dP
            if SILU:
                x = s * scale
                sig = tl.sigmoid(x)
                ds = tl.where(vis, dp * sig * (1.0 + x * (1.0 - sig)), 0.0) / stat[:, None]
            else:
                p = tl.exp2(tl.where(vis, s * qk_scale, float("-inf")) - stat[:, None])
                ds = p * (dp - delta[:, None])
            dq += tl.dot(ds.to(k.dtype), k, input_precision=DOT_PRECISION)
    dq = dq * scale
    tl.store(DQ + offs_m[:, None] * stride_don + offs_d[None, :], dq.to(DQ.dtype.element_ty), mask=md_mask)


@triton.jit
def _hta_bwd_dkdv_kernel(
    Q,  # (Nq, Hq, D) queries
    K,  # (Nk, Hkv, D) keys
    V,  # (Nk, Hkv, D) values
    DO,  # (Nq, Hq, D) gradient of the output
    DK,  # (Nk, Hkv, D) written here, contiguous
    DV,  # (Nk, Hkv, D) written here, contiguous
    STAT,  # (Nq, Hq) float32 from the forward (lse2 or n_i)
    DELTA,  # (Nq, Hq) float32 rowsum(dO * O) (softmax only)
    Q_OFF,  # (B+1,) int64 query offsets per user
    KV_OFF,  # (B+1,) int64 key offsets per user
    Q_POS,  # (Nq,) int64 query positions inside the user's keys
    KV_TS,  # (Nk,) float key timestamps
    KV_GRP,  # (Nk,) int key TokenGroup
    stride_qn,  # Q row stride
    stride_qh,  # Q head stride
    stride_kn,  # K row stride
    stride_kh,  # K head stride
    stride_vn,  # V row stride
    stride_vh,  # V head stride
    stride_don,  # DO row stride
    stride_doh,  # DO head stride
    stride_dkn,  # DK and DV row stride
    stride_dkh,  # DK and DV head stride
    scale,
    D,
    tune_q_len,  # autotuner key only
    HKV: tl.constexpr,  # kv heads
    GQA: tl.constexpr,  # query heads per kv head: this program sums their contributions (no atomics)
    SILU: tl.constexpr,
    DOT_PRECISION: tl.constexpr,
    BLOCK_M: tl.constexpr,
    BLOCK_N: tl.constexpr,
    BLOCK_D: tl.constexpr,
):
    pid_bh = tl.program_id(0)
    pid_n = tl.program_id(1)
    b = pid_bh // HKV
    hk = pid_bh % HKV
    kv_start = tl.load(KV_OFF + b)
    kv_len = (tl.load(KV_OFF + b + 1) - kv_start).to(tl.int32)
    if pid_n * BLOCK_N >= kv_len:
        return
    q_start = tl.load(Q_OFF + b)
    q_len = (tl.load(Q_OFF + b + 1) - q_start).to(tl.int32)
    K += kv_start * stride_kn + hk * stride_kh
    V += kv_start * stride_vn + hk * stride_vh
    DK += kv_start * stride_dkn + hk * stride_dkh
    DV += kv_start * stride_dkn + hk * stride_dkh
    KV_TS += kv_start
    KV_GRP += kv_start
    Q += q_start * stride_qn  # the head offset is added per query head below
    DO += q_start * stride_don
    STAT += q_start * (HKV * GQA)
    DELTA += q_start * (HKV * GQA)
    Q_POS += q_start

    offs_n = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)  # (BN,) key index inside the user
    offs_d = tl.arange(0, BLOCK_D)
    n_ok = offs_n < kv_len
    d_ok = offs_d < D
    nd_mask = n_ok[:, None] & d_ok[None, :]
    k = tl.load(K + offs_n[:, None] * stride_kn + offs_d[None, :], mask=nd_mask, other=0.0)
    v = tl.load(V + offs_n[:, None] * stride_vn + offs_d[None, :], mask=nd_mask, other=0.0)
    grp = tl.load(KV_GRP + offs_n, mask=n_ok, other=3).to(tl.int32)
    ts = tl.load(KV_TS + offs_n, mask=n_ok, other=0.0)
    uh = (grp == 0) | (grp == 1)  # (BN,) visible to every query
    r = grp == 2  # (BN,) visible to later queries
    any_uh = tl.max((uh & n_ok).to(tl.int32)) > 0  # then every query block sees this key block
    r_ts_min = tl.min(tl.where(r & n_ok, ts, float("inf")))  # earliest R key: later queries see it
    n_lo = pid_n * BLOCK_N

    dk = tl.zeros((BLOCK_N, BLOCK_D), dtype=tl.float32)
    dv = tl.zeros((BLOCK_N, BLOCK_D), dtype=tl.float32)
    qk_scale = scale * 1.4426950408889634
    for g in range(GQA):
        h = hk * GQA + g  # query heads sharing this kv head
        for start_m in range(0, q_len, BLOCK_M):
            offs_m = start_m + tl.arange(0, BLOCK_M)
            m_ok = offs_m < q_len
            pos = tl.load(Q_POS + offs_m, mask=m_ok, other=-1).to(tl.int32)
            pos_ok = m_ok & (pos >= 0) & (pos < kv_len)
            q_ts = tl.load(KV_TS + pos, mask=pos_ok, other=0.0)
            # transposed tile (BN, BM): keys along rows
            vis_t = (
                (offs_n[:, None] == pos[None, :]) | uh[:, None] | (r[:, None] & (ts[:, None] < q_ts[None, :]))
            )
            vis_t = vis_t & n_ok[:, None] & m_ok[None, :]
            q_ts_max = tl.max(tl.where(pos_ok, q_ts, float("-inf")))
            pos_lo = tl.min(tl.where(pos_ok, pos, 2147483647))
            pos_hi = tl.max(tl.where(pos_ok, pos, -1))
            if any_uh | (r_ts_min < q_ts_max) | ((pos_hi >= n_lo) & (pos_lo < n_lo + BLOCK_N)):
                md_mask = m_ok[:, None] & d_ok[None, :]
                q = tl.load(
                    Q + offs_m[:, None] * stride_qn + h * stride_qh + offs_d[None, :], mask=md_mask, other=0.0
                )
                do = tl.load(
                    DO + offs_m[:, None] * stride_don + h * stride_doh + offs_d[None, :],
                    mask=md_mask,
                    other=0.0,
                )
                stat = tl.load(STAT + offs_m * (HKV * GQA) + h, mask=m_ok, other=1.0)  # (BM,)
                s_t = tl.dot(k, tl.trans(q), input_precision=DOT_PRECISION)  # (BN, BM)
                dp_t = tl.dot(v, tl.trans(do), input_precision=DOT_PRECISION)  # (BN, BM)
                if SILU:
                    x = s_t * scale
                    sig = tl.sigmoid(x)
                    inv_n = 1.0 / stat
                    a_t = tl.where(vis_t, x * sig, 0.0) * inv_n[None, :]
                    ds_t = tl.where(vis_t, dp_t * sig * (1.0 + x * (1.0 - sig)), 0.0) * inv_n[None, :]
                else:
                    delta = tl.load(DELTA + offs_m * (HKV * GQA) + h, mask=m_ok, other=0.0)
                    a_t = tl.exp2(tl.where(vis_t, s_t * qk_scale, float("-inf")) - stat[None, :])
                    ds_t = a_t * (dp_t - delta[None, :])
                dv += tl.dot(a_t.to(do.dtype), do, input_precision=DOT_PRECISION)
                dk += tl.dot(ds_t.to(q.dtype), q, input_precision=DOT_PRECISION)
    dk = dk * scale
    out_offs = offs_n[:, None] * stride_dkn + offs_d[None, :]
    tl.store(DK + out_offs, dk.to(DK.dtype.element_ty), mask=nd_mask)
    tl.store(DV + out_offs, dv.to(DV.dtype.element_ty), mask=nd_mask)


# ---------------------------------------------------------------------------------------------------------------
# Host launchers.
# ---------------------------------------------------------------------------------------------------------------


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


def _hta_forward(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    q_offsets: torch.Tensor,
    kv_offsets: torch.Tensor,
    q_pos: torch.Tensor,
    kv_ts: torch.Tensor,
    kv_group: torch.Tensor,
    max_q_len: int,
    silu: bool,
    scale: float,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Launch the forward kernel: out (Nq, Hq, D) and stat (Nq, Hq) float32 (lse2 or visible counts)."""
    Nq, Hq, D = q.shape
    Hkv = k.shape[1]
    B = q_offsets.numel() - 1
    out = torch.empty_like(q, memory_format=torch.contiguous_format)
    stat = torch.empty((Nq, Hq), device=q.device, dtype=torch.float32)
    if Nq == 0 or B == 0 or max_q_len <= 0:
        return out, stat
    kernel, tile = _pick(_hta_fwd_kernel, "_fwd_tuned", q)
    grid = lambda meta: (B * Hq, triton.cdiv(max_q_len, meta["BLOCK_M"]))  # (user x head, query blocks)
    kernel[grid](
        q, k, v, out, stat,
        q_offsets, kv_offsets, q_pos, kv_ts, kv_group,
        q.stride(0), q.stride(1), k.stride(0), k.stride(1), v.stride(0), v.stride(1), out.stride(0), out.stride(1),
        scale, D, _tune_q_len(max_q_len),
        HQ=Hq, GQA=Hq // Hkv, SILU=silu, DOT_PRECISION=_dot_precision(q), BLOCK_D=_block_d(D),
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
    q_offsets: torch.Tensor,
    kv_offsets: torch.Tensor,
    q_pos: torch.Tensor,
    kv_ts: torch.Tensor,
    kv_group: torch.Tensor,
    max_q_len: int,
    max_kv_len: int,
    silu: bool,
    scale: float,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Launch the dq kernel (grid over query blocks) and the dk/dv kernel (grid over key blocks)."""
    Nq, Hq, D = q.shape
    Nk, Hkv, _ = k.shape
    B = q_offsets.numel() - 1
    do = do.contiguous()
    dq = torch.empty_like(do)
    dk = torch.empty((Nk, Hkv, D), device=k.device, dtype=k.dtype)
    dv = torch.empty((Nk, Hkv, D), device=v.device, dtype=v.dtype)
    if Nq == 0 or B == 0:  # no query sees any key: every gradient is zero
        return dq.zero_(), dk.zero_(), dv.zero_()
    # (Nq, Hq) rowsum(dO * O) for softmax; the silu branches never read it (any float32 buffer will do)
    delta = stat if silu else (do.float() * out.float()).sum(-1)
    prec, block_d, tune_q = _dot_precision(q), _block_d(D), _tune_q_len(max_q_len)
    if max_q_len > 0:
        kernel, tile = _pick(_hta_bwd_dq_kernel, "_dq_tuned", q)
        kernel[lambda meta: (B * Hq, triton.cdiv(max_q_len, meta["BLOCK_M"]))](
            q, k, v, do, dq, stat, delta,
            q_offsets, kv_offsets, q_pos, kv_ts, kv_group,
            q.stride(0), q.stride(1), k.stride(0), k.stride(1), v.stride(0), v.stride(1), do.stride(0), do.stride(1),
            scale, D, tune_q,
            HQ=Hq, GQA=Hq // Hkv, SILU=silu, DOT_PRECISION=prec, BLOCK_D=block_d,
            **tile,
        )  # fmt: skip
    else:
        dq.zero_()
    if Nk > 0 and max_kv_len > 0:
        kernel, tile = _pick(_hta_bwd_dkdv_kernel, "_dkdv_tuned", q)
        kernel[lambda meta: (B * Hkv, triton.cdiv(max_kv_len, meta["BLOCK_N"]))](
            q, k, v, do, dk, dv, stat, delta,
            q_offsets, kv_offsets, q_pos, kv_ts, kv_group,
            q.stride(0), q.stride(1), k.stride(0), k.stride(1), v.stride(0), v.stride(1), do.stride(0), do.stride(1),
            dk.stride(0), dk.stride(1),
            scale, D, tune_q,
            HKV=Hkv, GQA=Hq // Hkv, SILU=silu, DOT_PRECISION=prec, BLOCK_D=block_d,
            **tile,
        )  # fmt: skip
    else:
        dk.zero_()
        dv.zero_()
    return dq, dk, dv


class _HTAAttentionFunction(torch.autograd.Function):
    """Triton forward/backward; the jagged metadata gets no gradient."""

    @staticmethod
    def forward(  # type: ignore[override]
        ctx: Any,
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
        silu: bool,
        scale: float,
    ) -> torch.Tensor:
        out, stat = _hta_forward(
            q, k, v, q_offsets, kv_offsets, q_pos, kv_ts, kv_group, max_q_len, silu, scale
        )
        ctx.save_for_backward(q, k, v, out, stat, q_offsets, kv_offsets, q_pos, kv_ts, kv_group)
        ctx.meta = (max_q_len, max_kv_len, silu, scale)
        return out

    @staticmethod
    def backward(ctx: Any, do: torch.Tensor) -> tuple[torch.Tensor | None, ...]:  # type: ignore[override]
        q, k, v, out, stat, q_offsets, kv_offsets, q_pos, kv_ts, kv_group = ctx.saved_tensors
        max_q_len, max_kv_len, silu, scale = ctx.meta
        dq, dk, dv = _hta_backward(
            do,
            q,
            k,
            v,
            out,
            stat,
            q_offsets,
            kv_offsets,
            q_pos,
            kv_ts,
            kv_group,
            max_q_len,
            max_kv_len,
            silu,
            scale,
        )
        return dq, dk, dv, None, None, None, None, None, None, None, None, None


def _validate(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    q_offsets: torch.Tensor,
    kv_offsets: torch.Tensor,
    q_pos: torch.Tensor,
    kv_ts: torch.Tensor,
    kv_group: torch.Tensor,
    kind: AttentionKind,
) -> None:
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
    if (
        q_offsets.dim() != 1
        or kv_offsets.dim() != 1
        or q_offsets.numel() != kv_offsets.numel()
        or q_offsets.numel() < 1
    ):
        raise ValueError(
            f"q_offsets and kv_offsets must be (B+1,); got {tuple(q_offsets.shape)}, {tuple(kv_offsets.shape)}"
        )
    if q_pos.shape != (q.shape[0],):
        raise ValueError(f"q_pos must be ({q.shape[0]},); got {tuple(q_pos.shape)}")
    if kv_ts.shape != (k.shape[0],) or kv_group.shape != (k.shape[0],):
        raise ValueError(
            f"kv_ts and kv_group must be ({k.shape[0]},); got {tuple(kv_ts.shape)}, {tuple(kv_group.shape)}"
        )
    if (
        q_offsets.is_floating_point()
        or kv_offsets.is_floating_point()
        or q_pos.is_floating_point()
        or kv_group.is_floating_point()
    ):
        raise TypeError("offsets, q_pos and kv_group must be integer tensors")
    if not isinstance(kind, AttentionKind):
        raise TypeError(f"kind must be an AttentionKind, got {kind!r}")


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

    Shapes and the mask are in the module docstring; ``kernels.set_kernel`` overrides the choice.

    Example:
        >>> q = torch.randn(3, 2, 16); k = v = torch.randn(3, 1, 16)
        >>> off = torch.tensor([0, 3]); grp = torch.tensor([TokenGroup.H, TokenGroup.R, TokenGroup.T])
        >>> out = hta_attention(q, k, v, off, off, torch.arange(3), torch.tensor([0.0, 1.0, 2.0]), grp, 3, 3)
        >>> out.shape
        torch.Size([3, 2, 16])
    """
    _validate(q, k, v, q_offsets, kv_offsets, q_pos, kv_ts, kv_group, kind)
    if not use_triton(q) and not q.is_cuda and get_kernel() is Kernel.AUTO:
        if not _needs_grad(q, k, v):
            return _hta_attention_cpu(q, k, v, q_offsets, kv_offsets, q_pos, kv_ts, kv_group, max_q_len, max_kv_len,
                                      kind, scale)  # fmt: skip
        return hta_attention_split_cpu(q, k, v, q_offsets, kv_offsets, q_pos, kv_ts, kv_group, max_q_len, max_kv_len,
                                       kind, scale)  # fmt: skip
    if not use_triton(q) or (q.is_cuda and q.dtype == torch.float64):  # tl.dot has no float64 on GPUs
        return hta_attention_reference(
            q, k, v, q_offsets, kv_offsets, q_pos, kv_ts, kv_group, max_q_len, max_kv_len, kind, scale
        )
    check_triton_device(q, _hta_fwd_kernel, "hta_attention")
    scale = q.shape[2] ** -0.5 if scale is None else float(scale)
    k = _rows_contiguous(k.to(q.dtype))
    v = _rows_contiguous(v.to(q.dtype))
    q_offsets, kv_offsets = q_offsets.long(), kv_offsets.long()  # int64 row arithmetic in the kernels
    if not kv_ts.is_floating_point():
        kv_ts = kv_ts.float()
    out: torch.Tensor = _HTAAttentionFunction.apply(
        _rows_contiguous(q), k, v, q_offsets, kv_offsets, q_pos.contiguous(), kv_ts.contiguous(), kv_group.contiguous(),
        int(max_q_len), int(max_kv_len), kind is AttentionKind.SILU, scale,
    )  # fmt: skip
    return out
