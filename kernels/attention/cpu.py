"""Fast CPU paths of :func:`hta_attention` (same math as the reference up to float32 rounding).

Inference (no gradient): :func:`hta_attention_sdpa_cpu`, SDPA with no padding for one user and no mask when every key
is visible. Training: :func:`hta_attention_split_cpu` (context keys + a self slot). Target-only layers against cached
context K/V: :func:`hta_target_attention_cpu`.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from kernels.attention.reference import (
    AttentionKind,
    JaggedHTA,
    TokenGroup,
    hta_attention_padded,
    pad_jagged,
    single_user,
    visibility_mask,
)


def hta_attention_sdpa_cpu(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, h: JaggedHTA) -> torch.Tensor:
    """Inference path of :func:`hta_attention` on the CPU: SDPA (softmax) with a boolean mask built only when needed.

    One user (the serving case) needs no padding; if every key is U/H the mask is all-true (U/H keys are visible to
    all, and each query's own key is one of them) and is dropped. Other inputs pad like the reference.
    """
    Nq, Hq, D = q.shape
    Nk, Hkv = k.shape[0], k.shape[1]
    if Nq == 0 or Nk == 0 or h.kind is not AttentionKind.SOFTMAX or q.dtype != k.dtype or k.dtype != v.dtype:
        return hta_attention_padded(q, k, v, h)
    scale = h.scale_for(D)
    q_offsets, kv_offsets, q_pos, kv_ts, kv_group = h.q_offsets, h.kv_offsets, h.q_pos, h.kv_ts, h.kv_group
    if single_user(q_offsets, Nq) and single_user(kv_offsets, Nk):
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
    qd, q_valid = pad_jagged(q, q_offsets, h.max_q_len)  # (B, Lq, Hq, D)
    kd, _ = pad_jagged(k, kv_offsets, h.max_kv_len)
    vd, _ = pad_jagged(v, kv_offsets, h.max_kv_len)
    vis = visibility_mask(h)
    vis = vis | ~q_valid[:, :, None]  # padded query rows: any finite row (dropped below), never an empty softmax
    out = F.scaled_dot_product_attention(
        qd.transpose(1, 2), kd.transpose(1, 2), vd.transpose(1, 2), attn_mask=vis[:, None], scale=scale,
        enable_gqa=Hq != Hkv,
    )  # (B, Hq, Lq, D)
    return out.transpose(1, 2)[q_valid]


def hta_attention_split_cpu(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, h: JaggedHTA) -> torch.Tensor:
    """:func:`hta_attention` computed against each user's context keys plus each query's own key (differentiable).

    A T key is visible only to its own query, so no query needs the (queries x T keys) block that the padded
    reference builds: scores are (B, Lq, L_ctx) against the user's U/H/R keys (compacted, order kept), with the
    diagonal where a query's own key is a context key, plus one "self" score per query whose own key is a T key.
    Same math as :func:`hta_attention_padded` (same shapes in and out); the padded work drops from
    Lq x L_kv to Lq x (L_ctx + 1), about half for a full layer and more for target layers. Used for CPU training.

    Example:
        >>> q = torch.randn(3, 2, 16); k = v = torch.randn(3, 1, 16)
        >>> off = torch.tensor([0, 3]); grp = torch.tensor([TokenGroup.H, TokenGroup.R, TokenGroup.T])
        >>> h = JaggedHTA(off, off, torch.arange(3), torch.tensor([0.0, 1.0, 2.0]), grp, 3, 3)
        >>> torch.allclose(hta_attention_split_cpu(q, k, v, h), hta_attention_padded(q, k, v, h), atol=1e-6)
        True
    """
    Nq, Hq, D = q.shape
    Nk, Hkv = k.shape[0], k.shape[1]
    if Nq == 0 or Nk == 0 or Hq % Hkv:
        return hta_attention_padded(q, k, v, h)
    rep = Hq // Hkv
    scale = h.scale_for(D)
    q_offsets, kv_offsets, kv_ts, kv_group = h.q_offsets, h.kv_offsets, h.kv_ts, h.kv_group
    B = q_offsets.numel() - 1
    k, v = k.to(q.dtype), v.to(q.dtype)
    is_ctx = kv_group != TokenGroup.T  # (Nk,)
    before = torch.zeros(Nk + 1, dtype=torch.int64, device=q.device)  # context keys before each row
    before[1:] = torch.cumsum(is_ctx, 0)
    ctx_offsets = before[kv_offsets]  # (B+1,)
    Lc = int((ctx_offsets[1:] - ctx_offsets[:-1]).max())
    q_user = torch.repeat_interleave(torch.arange(B, device=q.device), q_offsets.diff(), output_size=Nq)
    own = kv_offsets[q_user] + h.q_pos  # (Nq,) row of each query's own key
    own_ctx = is_ctx[own]  # (Nq,) own key is a context key (then it is in the context block, not a self slot)
    own_c = torch.where(own_ctx, before[own] - ctx_offsets[q_user], -1)  # its column in the context block
    Lq = h.max_q_len
    qd, _ = pad_jagged(q, q_offsets, Lq)  # (B, Lq, Hq, D)
    qts, _ = pad_jagged(kv_ts.index_select(0, own), q_offsets, Lq)  # (B, Lq)
    own_cd, _ = pad_jagged(own_c, q_offsets, Lq)
    own_ctx_d, _ = pad_jagged(own_ctx, q_offsets, Lq)  # padded query rows: False, i.e. a finite self slot (no NaN)
    # self slot: (Nq, Hkv, rep) scores and (Nq, Hkv, D) values of each query's own key
    k_own, v_own = k.index_select(0, own), v.index_select(0, own)
    s_self = (q.view(Nq, Hkv, rep, D) * k_own.view(Nq, Hkv, 1, D)).sum(-1) * scale
    s_self_d = pad_jagged(s_self, q_offsets, Lq)[0].permute(0, 2, 1, 3)  # (B, Hkv, Lq, rep)
    v_self_d = pad_jagged(v_own, q_offsets, Lq)[0].permute(0, 2, 1, 3)  # (B, Hkv, Lq, D)
    self_on = ~own_ctx_d  # (B, Lq)
    if Lc > 0:
        ctx_rows = torch.nonzero(is_ctx).flatten()
        kd, c_valid = pad_jagged(k.index_select(0, ctx_rows), ctx_offsets, Lc)  # (B, Lc, Hkv, D)
        vd, _ = pad_jagged(v.index_select(0, ctx_rows), ctx_offsets, Lc)
        tsd, _ = pad_jagged(kv_ts.index_select(0, ctx_rows), ctx_offsets, Lc)
        grpd, _ = pad_jagged(kv_group.index_select(0, ctx_rows), ctx_offsets, Lc)
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
    if h.kind is AttentionKind.SOFTMAX:
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
    one = B == 1 and single_user(q_offsets, Nq) and single_user(ctx_offsets, Nc)
    if one:
        qd, q_valid = q[None], None  # (1, Lq, Hq, D)
        kd, vd = k_ctx[None], v_ctx[None]  # (1, Lc, Hkv, D)
        tsd, grpd, c_valid = ctx_ts[None], ctx_group[None], None
        qts = q_ts[None]
        Lq, Lc = Nq, Nc
    else:
        Lq, Lc = max_q_len, max_ctx_len
        qd, q_valid = pad_jagged(q, q_offsets, Lq)
        kd, c_valid = pad_jagged(k_ctx, ctx_offsets, Lc)
        vd, _ = pad_jagged(v_ctx, ctx_offsets, Lc)
        tsd, _ = pad_jagged(ctx_ts, ctx_offsets, Lc)
        grpd, _ = pad_jagged(ctx_group, ctx_offsets, Lc)
        qts, _ = pad_jagged(q_ts, q_offsets, Lq)
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
    s_self_d = s_self if one else pad_jagged(s_self, q_offsets, Lq)[0]
    s_self_d = s_self_d.reshape(B, Lq, Hkv, rep).permute(0, 2, 1, 3)  # (B, Hkv, Lq, rep)
    vsd = v_self.to(q.dtype)
    vsd = (vsd[None] if one else pad_jagged(vsd, q_offsets, Lq)[0]).permute(0, 2, 1, 3)  # (B, Hkv, Lq, D)
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

