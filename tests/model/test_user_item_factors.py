"""The Ranker's user × item factorization logits (``RankerConfig.mf_dim``, :class:`model.heads.UserItemFactors`)."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from model import Ranker, RankerConfig
from model.batch import Batch, collate
from model.features import FeatureSpec
from model.heads import UserItemFactors
from model.snapshot import SnapshotMeta, load_snapshot, save_snapshot
from tests.model.helpers import make_sample, seeded, small_config, small_spec


def _batch() -> tuple[FeatureSpec, Batch]:
    spec = small_spec()
    return spec, collate([make_sample(31, n_tgt=5), make_sample(32, n_hist=0, n_rt=0, n_tgt=3)], spec)


def test_the_term_starts_at_zero_and_leaves_the_other_weights_as_they_were() -> None:
    spec, batch = _batch()
    torch.manual_seed(7)
    plain = Ranker(spec, small_config()).eval()
    torch.manual_seed(7)
    with_mf = Ranker(spec, small_config(mf_dim=6)).eval()
    with torch.no_grad():
        a, b = plain(batch), with_mf(batch)
    for task in spec.tasks:
        torch.testing.assert_close(b[task], a[task])


def test_cached_scores_equal_forward_and_the_term_matters() -> None:
    spec, batch = _batch()
    model = seeded(Ranker(spec, small_config(mf_dim=6)), seed=3)
    assert isinstance(model, Ranker)
    with torch.no_grad():
        full = model(batch)
    cached = model.score_candidates(model.encode_user(batch), batch)
    for task in spec.tasks:
        torch.testing.assert_close(cached[task], full[task], atol=1e-5, rtol=1e-5)
    assert model.mf is not None
    with torch.no_grad():
        model.mf.item_proj.weight.zero_()
        without = model(batch)
    assert not torch.allclose(without["click"], full["click"], atol=1e-4)


def test_a_cache_without_user_factors_is_refused() -> None:
    spec, batch = _batch()
    model = seeded(Ranker(spec, small_config(mf_dim=4)), seed=1)
    assert isinstance(model, Ranker)
    cache = model.encode_user(batch)
    cache.mf_user = None
    with pytest.raises(ValueError, match="user factors"):
        model.score_candidates(cache, batch)


def test_training_moves_the_user_factors_and_a_snapshot_keeps_them(tmp_path) -> None:  # type: ignore[no-untyped-def]
    spec, batch = _batch()
    torch.manual_seed(0)
    model = Ranker(spec, small_config(mf_dim=4))
    assert model.mf is not None
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2)
    for _ in range(3):
        out = model(batch)
        loss = sum(torch.nn.functional.binary_cross_entropy_with_logits(out[t], batch.labels[t]) for t in spec.tasks)
        opt.zero_grad()
        loss.backward()  # type: ignore[union-attr]
        opt.step()
    assert model.mf.user_proj.weight.abs().sum() > 0 and model.mf.hist_proj.weight.abs().sum() > 0
    model.eval()
    path = save_snapshot(tmp_path, model, SnapshotMeta(1, 0.0, 0.0, 0))
    loaded = load_snapshot(path).model
    assert loaded.config.mf_dim == 4
    with torch.no_grad():
        torch.testing.assert_close(loaded(batch)["click"], model(batch)["click"])


def test_config_rejects_a_negative_width_and_round_trips() -> None:
    with pytest.raises(ValueError, match="mf_dim"):
        RankerConfig(mf_dim=-1)
    assert RankerConfig.from_json(RankerConfig(mf_dim=8).to_json()).mf_dim == 8


@settings(max_examples=30, deadline=None)
@given(tasks=st.integers(1, 3), dim=st.integers(1, 5), n=st.integers(1, 6), seed=st.integers(0, 10_000))
def test_logits_are_the_per_task_dot_of_user_and_item_factors(tasks: int, dim: int, n: int, seed: int) -> None:
    g = torch.Generator().manual_seed(seed)
    f = UserItemFactors(user_dim=3, hist_dim=4, item_dim=5, tasks=tasks, dim=dim)
    with torch.no_grad():
        for p in f.parameters():
            p.copy_(torch.randn(p.shape, generator=g))
    u, h, item = torch.randn(n, 3, generator=g), torch.randn(n, 4, generator=g), torch.randn(n, 5, generator=g)
    z = f(f.user(u, h), item)
    a, b, c = f.user_proj.weight, f.hist_proj.weight, f.item_proj.weight
    for k in range(tasks):
        rows = slice(k * dim, (k + 1) * dim)
        expected = ((u @ a[rows].T + h @ b[rows].T) * (item @ c.T)).sum(-1)
        torch.testing.assert_close(z[:, k], expected, atol=1e-4, rtol=1e-4)
