"""First-order terms shared by the Ranker and the DLRM baseline (item bias rows, the user's cross-counter rates) and
the DLRM baseline's generic shortcut options."""

from __future__ import annotations

import dataclasses
import json
import math
from pathlib import Path

import pytest
import torch

from model import DLRMBaseline, DLRMConfig, Ranker
from model.batch import collate
from model.heads import CrossRates, target_item_rows
from streaming.sample import Sample, Target
from tests.model.helpers import make_sample, seeded, small_config, small_spec

_PRIORS = (("click", 0.6), ("conversion", 0.2))


def _target(item: str, j: int, cross: dict[str, float], click: int = 0) -> Target:
    return Target(f"e{item}{j}", f"r{j}", item, "home", 1.7e9 + j, cross=cross,
                  labels={"click": click, "conversion": 0})


def test_target_item_rows_are_the_targets_item_buckets() -> None:
    spec = small_spec()
    samples = [make_sample(3, n_tgt=4), make_sample(4, n_hist=0, n_rt=0, n_tgt=2)]
    expected = [spec.bucket("item_id", t.item_id) for s in samples for t in s.targets]
    assert target_item_rows(collate(samples, spec), spec).tolist() == expected


def test_cross_rates_read_the_lifetime_counters_back_out_of_the_cross_bag() -> None:
    spec = small_spec()
    m, p0 = 5.0, 0.6
    counters = {"all_imp_life": 9.0, "all_click_life": 6.0, "all_conversion_life": 1.0, "other_feature": 3.0}
    batch = collate([Sample("s", "u", [_target("a", 0, counters), _target("b", 1, {})])], spec)
    cr = CrossRates(spec, _PRIORS, smoothing=m, init=0.7)
    z = cr(batch)
    expected = 0.7 * (math.log((6 + m * p0) / (9 + m) / (1 - (6 + m * p0) / (9 + m))) - math.log(p0 / (1 - p0)))
    assert z[0, 0].item() == pytest.approx(expected, rel=1e-4)
    assert z[0, 1].item() == pytest.approx(0.7 * (math.log((1 + m * 0.2) / (9 + m) / (1 - (1 + m * 0.2) / (9 + m)))
                                                  - math.log(0.2 / 0.8)), rel=1e-4)
    assert z[1].abs().max().item() < 1e-6  # no counters: the prior, no offset


@pytest.mark.parametrize("options", [{"cross_rates": True}, {"cross_rates": True, "cross_rates_init": 0.5}])
def test_ranker_cached_scores_equal_forward_with_rate_terms(options: dict[str, object]) -> None:
    spec = small_spec()
    model = seeded(Ranker(spec, small_config(task_priors=_PRIORS, **options)), seed=5).eval()
    assert isinstance(model, Ranker)
    batch = collate([make_sample(70, n_tgt=5), make_sample(71, n_hist=0, n_rt=0, n_tgt=2)], spec)
    with torch.no_grad():
        full = model(batch)
    cached = model.score_candidates(model.encode_user(batch), batch)
    for task in spec.tasks:
        torch.testing.assert_close(cached[task], full[task], atol=1e-5, rtol=1e-5)


def test_dlrm_generic_options() -> None:
    spec = small_spec()
    cfg = DLRMConfig(embed_dim=8, bottom_hidden=8, top_hidden=(16,), item_bias=True, cross_rates=True, linear=True,
                     task_priors=_PRIORS)
    model = DLRMBaseline(spec, cfg)
    tower = model.towers["click"]
    assert isinstance(tower, torch.nn.Sequential)
    last = tower[-1]
    assert isinstance(last, torch.nn.Linear)
    assert last.bias.item() == pytest.approx(math.log(0.6 / 0.4))
    assert model.item_bias is not None
    ib = {id(p) for p in model.item_bias.parameters()}
    assert ib <= {id(p) for p in model.embedding_parameters()}
    assert not ib & {id(p) for p in model.dense_parameters()}
    counters = {"all_imp_life": 4.0, "all_click_life": 3.0, "scn_imp_life": 2.0, "scn_click_life": 2.0}
    with_counters = Sample("s2", "u2", [_target("a", 0, counters, click=1), _target("b", 1, counters)])
    batch = collate([make_sample(90, n_tgt=3), with_counters], spec)
    seeded(model, seed=1)
    with torch.no_grad():
        ref = model(batch)
        assert ref["conversion"].shape == (5,)
        for attr in ("item_bias", "cross_rates", "linear"):  # each generic term is live
            saved = getattr(model, attr)
            setattr(model, attr, None)
            assert not torch.allclose(model(batch)["click"], ref["click"]), attr
            setattr(model, attr, saved)
    assert DLRMConfig.from_json(cfg.to_json()) == cfg
    old = json.loads(DLRMConfig().to_json())
    for k in ("item_bias", "cross_rates", "cross_rates_init",
              "cross_rates_smoothing", "linear", "task_priors"):
        old.pop(k)
    assert DLRMConfig.from_json(old) == DLRMConfig()
    assert dataclasses.replace(cfg, linear=False) != cfg


def test_default_cross_features_do_not_collide_with_the_counters_cross_rates_reads() -> None:
    """Any other default cross feature in the same bucket would overwrite a counter read back by CrossRates."""
    from model.features import FeatureSpec
    from streaming.config import CrossSpec
    from streaming.cross import feature_names

    spec = FeatureSpec()
    n = spec.tables["cross"].num_embeddings
    read = CrossRates(spec).rate_names
    assert set(read) <= set(feature_names(CrossSpec()))
    buckets = {spec.bucket("cross", name) % n for name in read}
    others = [name for name in feature_names(CrossSpec()) if name not in read]
    assert not [name for name in others if spec.bucket("cross", name) % n in buckets]


def test_snapshot_round_trip_keeps_the_cross_rate_term(tmp_path: Path) -> None:
    from model.snapshot import SnapshotMeta, load_snapshot, save_snapshot

    spec = small_spec()
    model = seeded(Ranker(spec, small_config(task_priors=_PRIORS, cross_rates=True, cross_rates_init=0.5)), seed=9)
    assert isinstance(model, Ranker)
    counters = {"all_imp_life": 7.0, "all_click_life": 2.0, "cat_imp_life": 3.0, "cat_click_life": 0.0}
    batch = collate([make_sample(95, n_tgt=2), Sample("s3", "u3", [_target("c", 0, counters)])], spec)
    loaded = load_snapshot(save_snapshot(tmp_path, model, SnapshotMeta(1, 0.0, 0.0, 0))).model
    assert loaded.config == model.config
    with torch.no_grad():
        for task, z in model(batch).items():
            assert torch.equal(loaded(batch)[task], z)
