"""Hybrid Target Attention and grouped-query attention equivalences at layer level."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from kernels.attention import AttentionKind, TokenGroup, hta_attention
from model.batch import Batch, collate
from model.hta import HTALayer, KVLayout
from model.ranker import _positions
from tests.model.helpers import make_sample, seeded, small_spec


def _batch() -> Batch:
    return collate([make_sample(1, n_hist=5, n_rt=3, n_tgt=4), make_sample(2, n_hist=0, n_rt=2, n_tgt=2),
                    make_sample(3, n_hist=9, n_rt=0, n_tgt=6)], small_spec())


def _dense_mask(batch: Batch) -> list[torch.Tensor]:
    """Per user (L, L) bool: may query i see key j — written from the rules, independent of kernels."""
    masks = []
    for b in range(batch.num_samples):
        lo, hi = int(batch.seq_offsets[b]), int(batch.seq_offsets[b + 1])
        grp, ts = batch.token_group[lo:hi].tolist(), batch.token_ts[lo:hi].tolist()
        L = hi - lo
        m = torch.zeros(L, L, dtype=torch.bool)
        for i in range(L):
            for j in range(L):
                m[i, j] = (i == j or grp[j] in (TokenGroup.U, TokenGroup.H)
                           or (grp[j] == TokenGroup.R and ts[j] < ts[i]))
        masks.append(m)
    return masks


@pytest.mark.parametrize("kind", [AttentionKind.SOFTMAX, AttentionKind.SILU])
def test_target_layer_equals_full_layer_restricted_to_targets(kind: AttentionKind) -> None:
    batch = _batch()
    layer = seeded(HTALayer(d_model=12, q_heads=3, kv_heads=1, head_dim=4, kind=kind))
    assert isinstance(layer, HTALayer)
    x = torch.randn(batch.num_tokens, 12, generator=torch.Generator().manual_seed(0))
    group, t = batch.token_group, batch.group_rows[TokenGroup.T]
    kv = KVLayout(batch.seq_offsets, batch.token_ts, group, batch.max_seq_len)
    with torch.no_grad():
        xn = layer.norm_in(x, group)
        k, v = layer.kv(xn)
        full = layer.query_update(x, xn, group, k, v, kv, batch.seq_offsets, _positions(batch.seq_offsets, len(x)),
                                  batch.max_seq_len)
        tgt = layer.query_update(x[t], xn[t], group[t], k, v, kv, batch.target_offsets, batch.target_pos,
                                 batch.max_targets)
    torch.testing.assert_close(tgt, full[t], atol=1e-6, rtol=1e-5)


def _mha_reference(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, batch: Batch) -> torch.Tensor:
    """Plain multi-head attention per user through torch SDPA with the rule-built mask (Hq == Hkv)."""
    outs = []
    for b, m in enumerate(_dense_mask(batch)):
        lo, hi = int(batch.seq_offsets[b]), int(batch.seq_offsets[b + 1])
        qb, kb, vb = (t[lo:hi].transpose(0, 1) for t in (q, k, v))  # (H, L, D)
        outs.append(F.scaled_dot_product_attention(qb, kb, vb, attn_mask=m).transpose(0, 1))
    return torch.cat(outs)


def test_full_attention_matches_rule_built_mask_and_gqa_1to1_is_multihead() -> None:
    batch = _batch()
    g = torch.Generator().manual_seed(1)
    N, H, D = batch.num_tokens, 3, 8
    q, k, v = (torch.randn(N, H, D, generator=g, dtype=torch.float64) for _ in range(3))
    pos = _positions(batch.seq_offsets, N)
    out = hta_attention(q, k, v, batch.seq_offsets, batch.seq_offsets, pos, batch.token_ts, batch.token_group,
                        batch.max_seq_len, batch.max_seq_len)
    torch.testing.assert_close(out, _mha_reference(q, k, v, batch))
    # the target-only call equals the same reference restricted to T rows
    t = batch.group_rows[TokenGroup.T]
    out_t = hta_attention(q[t], k, v, batch.target_offsets, batch.seq_offsets, batch.target_pos, batch.token_ts,
                          batch.token_group, batch.max_targets, batch.max_seq_len)
    torch.testing.assert_close(out_t, _mha_reference(q, k, v, batch)[t])


def test_gqa_equals_multihead_with_shared_kv_weights() -> None:
    """q:kv = 3:1 gives exactly MHA whose three kv heads are copies of the single one."""
    batch = _batch()
    gqa = seeded(HTALayer(d_model=12, q_heads=3, kv_heads=1, head_dim=4), seed=2)
    mha = HTALayer(d_model=12, q_heads=3, kv_heads=3, head_dim=4).eval()
    state = dict(gqa.state_dict())
    w = state["kv_proj.weight"].view(2, 1, 4, 12).expand(2, 3, 4, 12).reshape(24, 12)
    bias = state["kv_proj.bias"].view(2, 1, 4).expand(2, 3, 4).reshape(24)
    state["kv_proj.weight"], state["kv_proj.bias"] = w, bias
    mha.load_state_dict(state)
    x = torch.randn(batch.num_tokens, 12, generator=torch.Generator().manual_seed(3))
    group = batch.token_group
    kv = KVLayout(batch.seq_offsets, batch.token_ts, group, batch.max_seq_len)
    pos = _positions(batch.seq_offsets, len(x))
    with torch.no_grad():
        outs = []
        for layer in (gqa, mha):
            assert isinstance(layer, HTALayer)
            xn = layer.norm_in(x, group)
            k, v = layer.kv(xn)
            outs.append(layer.query_update(x, xn, group, k, v, kv, batch.seq_offsets, pos, batch.max_seq_len))
    torch.testing.assert_close(outs[0], outs[1], atol=1e-6, rtol=1e-5)
