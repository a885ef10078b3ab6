"""The online logistic-regression baseline: stable hashing, progressive (scores before learning), learns, runs in the
evaluation beside the other models."""

from __future__ import annotations

import zlib

import numpy as np
import pytest
import torch

from streaming.datasets.synthetic import SyntheticConfig, generate
from streaming.sample import Sample, Target
from trainer.baselines import LogisticRegressionBaseline, LRConfig, target_features
from trainer.evaluate import (
    EvalConfig,
    build_batches,
    collect_targets,
    default_core,
    make_samples,
    run_model,
    score,
)


def _sample(user: str, item: str, click: int, genres: str = "A") -> Sample:
    t = Target(f"e-{user}-{item}", "r", item, "home", 1.0, item={"genres": genres}, labels={"click": click})
    return Sample(f"s-{user}-{item}", user, [t], user={"age": "25"})


def test_features_hash_to_fixed_rows_in_every_process() -> None:
    lr = LogisticRegressionBaseline(("click",), LRConfig(buckets=4096))
    s = _sample("u1", "i1", 1, genres="A|B")
    feats = target_features(s, s.targets[0])
    assert "it.genres=A" in feats and "it.genres=B" in feats and "u=u1&it.genres=B" in feats
    h = lr.featurize([s, s])
    assert h.count == 2 and h.offsets.tolist() == [0, len(feats)]
    assert h.rows[: len(feats)].tolist() == [zlib.crc32(f.encode()) % 4096 for f in feats]  # no per-process salt


def test_scores_before_learning_and_learns_the_labels() -> None:
    lr = LogisticRegressionBaseline(("click",), LRConfig(buckets=1 << 12, lr=0.1))
    batch = [_sample(f"u{k}", "good", 1) for k in range(8)] + [_sample(f"u{k}", "bad", 0) for k in range(8)]
    h = lr.featurize(batch)
    before = lr.predict(h)["click"]
    assert torch.equal(before, torch.full((16,), 0.5))  # zero weights: scoring learns nothing
    assert torch.equal(lr.predict(h)["click"], before)
    for _ in range(20):
        lr.update(h, {"click": torch.tensor([1.0] * 8 + [0.0] * 8)})
    after = lr.predict(lr.featurize([_sample("new", "good", 0), _sample("new", "bad", 0)]))["click"]
    assert after[0] > 0.7 and after[1] < 0.3  # a new user: the item weights carry it


@pytest.mark.parametrize("bad", [{"buckets": 0}, {"lr": 0.0}])
def test_config_is_validated(bad: dict[str, float]) -> None:
    with pytest.raises(ValueError):
        LRConfig(**bad)  # type: ignore[arg-type]


def test_lr_in_the_progressive_evaluation_beats_chance_and_is_deterministic() -> None:
    torch.set_num_threads(1)
    events = generate(SyntheticConfig(num_users=60, num_items=150, requests_per_user=8, seed=2))
    samples = make_samples(events, default_core("synthetic"), limit_targets=2000)
    config = EvalConfig(models=("lr",))
    spec = config.feature_spec()
    batches = build_batches(samples, spec, 8)
    tg = collect_targets(batches, spec.tasks)
    a = run_model("lr", batches, spec, config)
    b = run_model("lr", batches, spec, config)
    pop = run_model("popularity", batches, spec, config)
    assert len(tg.ts) == 2000 and np.array_equal(a.probs["click"], b.probs["click"])
    auc = score(a.probs["click"], tg.labels["click"], tg.users)["auc"]
    assert auc > 0.57 and auc > score(pop.probs["click"], tg.labels["click"], tg.users)["auc"]  # 0.597 vs 0.564
