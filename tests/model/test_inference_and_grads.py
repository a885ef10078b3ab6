"""Cached inference equals the training path; gradients reach every parameter (Ranker and DLRM baseline)."""

from __future__ import annotations

import dataclasses

import pytest
import torch

from kernels.attention import AttentionKind
from model import DLRMBaseline, DLRMConfig, Ranker, RankerConfig
from model.batch import collate
from tests.model.helpers import make_sample, seeded, small_config, small_spec


@pytest.mark.parametrize("config", [small_config(), small_config(attention=AttentionKind.SILU, target_layers=0),
                                    small_config(kv_heads=3, target_layers=1, num_blocks=1)])
def test_cached_scores_equal_forward(config: RankerConfig) -> None:
    spec = small_spec()
    model = seeded(Ranker(spec, config), seed=4)
    assert isinstance(model, Ranker)
    samples = [make_sample(20, n_tgt=7), make_sample(21, n_hist=0, n_rt=0, n_tgt=2), make_sample(22, n_rt=9)]
    batch = collate(samples, spec)
    with torch.no_grad():
        full = model(batch)
    cache = model.encode_user(batch).to("cpu", non_blocking=True)
    cached = model.score_candidates(cache, batch)
    for task in spec.tasks:
        torch.testing.assert_close(cached[task], full[task], atol=1e-5, rtol=1e-5)
    # the same cache scores a different candidate set (same request time) like a fresh forward pass
    other = [dataclasses.replace(s, targets=make_sample(30 + i, n_tgt=3 + i).targets) for i, s in enumerate(samples)]
    other = [dataclasses.replace(o, targets=[dataclasses.replace(t, ts=t.ts - make_sample(30 + i).targets[0].ts
                                                                 + s.targets[0].ts) for t in o.targets])
             for i, (o, s) in enumerate(zip(other, samples, strict=True))]
    cand = collate(other, spec)
    with torch.no_grad():
        want = model(cand)
    got = model.score_candidates(cache, cand)
    for task in spec.tasks:
        torch.testing.assert_close(got[task], want[task], atol=1e-5, rtol=1e-5)


def test_score_candidates_rejects_other_users() -> None:
    spec = small_spec()
    model = Ranker(spec, small_config()).eval()
    cache = model.encode_user(collate([make_sample(1)], spec))
    with pytest.raises(ValueError, match="users"):
        model.score_candidates(cache, collate([make_sample(2)], spec))


@pytest.mark.parametrize("kind", [AttentionKind.SOFTMAX, AttentionKind.SILU])
def test_gradients_reach_every_ranker_parameter(kind: AttentionKind) -> None:
    spec = small_spec()
    model = seeded(Ranker(spec, small_config(attention=kind)), seed=5).train()
    assert isinstance(model, Ranker)
    batch = collate([make_sample(40), make_sample(41, n_tgt=3)], spec)
    out = model(batch)
    loss = torch.stack([torch.nn.functional.binary_cross_entropy_with_logits(out[t], batch.labels[t])
                        for t in spec.tasks]).sum()
    loss.backward()
    names = {id(p): n for n, p in model.named_parameters()}
    dead = [n for n, p in model.named_parameters() if p.grad is None or not p.grad.abs().sum() > 0]
    assert not dead, f"no gradient: {dead}"
    emb, dense = model.embedding_parameters(), model.dense_parameters()
    assert {id(p) for p in emb} | {id(p) for p in dense} == set(names) and not {id(p) for p in emb} & {id(p) for p in dense}
    assert all("embedding_bags" in names[id(p)] for p in emb)


def test_gradients_reach_every_dlrm_parameter() -> None:
    spec = small_spec()
    model = seeded(DLRMBaseline(spec, DLRMConfig(embed_dim=8, bottom_hidden=16, top_hidden=(16,))), seed=6).train()
    assert isinstance(model, DLRMBaseline)
    batch = collate([make_sample(50), make_sample(51, n_hist=0, n_rt=0, n_tgt=2)], spec)
    out = model(batch)
    assert set(out) == set(spec.tasks) and all(v.shape == (batch.num_targets,) for v in out.values())
    torch.stack([out[t].sum() for t in spec.tasks]).sum().backward()
    dead = [n for n, p in model.named_parameters() if p.grad is None or not p.grad.abs().sum() > 0]
    assert not dead, f"no gradient: {dead}"


def test_dlrm_realtime_is_causal() -> None:
    spec = small_spec()
    model = seeded(DLRMBaseline(spec, DLRMConfig(embed_dim=8)), seed=7)
    assert isinstance(model, DLRMBaseline)
    s = make_sample(52, n_rt=4, n_tgt=5)
    r = s.realtime[2]
    changed = dataclasses.replace(s, realtime=[*s.realtime[:2], dataclasses.replace(r, item_id="zz"), s.realtime[3]])
    with torch.no_grad():
        a, b = model(collate([s], spec))["click"], model(collate([changed], spec))["click"]
    torch.testing.assert_close(a[:3], b[:3])
    assert not torch.allclose(a[3:], b[3:])


def test_empty_targets_batch() -> None:
    spec = small_spec()
    model = Ranker(spec, small_config()).eval()
    batch = collate([make_sample(60, n_tgt=0)], spec)
    with torch.no_grad():
        assert model(batch)["click"].shape == (0,)
