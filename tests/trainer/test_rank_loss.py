"""OptimConfig.rank_loss_weight: a pairwise ranking loss over each user-level sample's targets, next to the BCE."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from model.batch import collate
from tests.trainer.conftest import make_samples, tiny_ranker_trainer
from trainer.loop import Trainer
from trainer.optim import OptimConfig, multitask_bce, pairwise_rank_loss

# a batch: per sample, its targets' (logit, click label); conversion labels are drawn separately
_target = st.tuples(st.floats(-6, 6), st.booleans(), st.booleans())
_batches = st.lists(st.lists(_target, min_size=0, max_size=6), min_size=1, max_size=5)


def _tensors(samples: list[list[tuple[float, bool, bool]]]) -> tuple[dict[str, torch.Tensor],
                                                                       dict[str, torch.Tensor], torch.Tensor]:
    flat = [t for s in samples for t in s]
    z = torch.tensor([t[0] for t in flat], dtype=torch.float64)
    logits = {"click": z, "conversion": -z}
    labels = {"click": torch.tensor([float(t[1]) for t in flat]), "conversion": torch.tensor([float(t[2]) for t in flat])}
    offsets = torch.tensor([0, *torch.tensor([len(s) for s in samples]).cumsum(0).tolist()])
    return logits, labels, offsets


@settings(max_examples=200, deadline=None)
@given(samples=_batches)
def test_the_loss_is_the_mean_over_each_samples_positive_negative_pairs_summed_over_tasks(
        samples: list[list[tuple[float, bool, bool]]]) -> None:
    logits, labels, offsets = _tensors(samples)
    expected, any_pair = 0.0, False
    for task, column in (("click", 1), ("conversion", 2)):
        sign = 1.0 if task == "click" else -1.0
        pairs = [math.log1p(math.exp(-sign * (i[0] - j[0])))  # brute force over every pair of the same sample
                 for s in samples for i in s for j in s if i[column] and not j[column]]
        if pairs:
            expected += sum(pairs) / len(pairs)
            any_pair = True
    got = pairwise_rank_loss(logits, labels, offsets)
    if not any_pair:
        assert got is None
    else:
        assert got is not None and abs(float(got) - expected) < 1e-9


@settings(max_examples=100, deadline=None)
@given(samples=_batches, shifts=st.lists(st.floats(-5, 5), min_size=5, max_size=5))
def test_a_constant_added_to_one_samples_logits_changes_nothing(
        samples: list[list[tuple[float, bool, bool]]], shifts: list[float]) -> None:
    logits, labels, offsets = _tensors(samples)
    per_target = torch.repeat_interleave(torch.tensor(shifts[:len(samples)], dtype=torch.float64),
                                         offsets[1:] - offsets[:-1])
    shifted = {t: z + per_target for t, z in logits.items()}
    a, b = pairwise_rank_loss(logits, labels, offsets), pairwise_rank_loss(shifted, labels, offsets)
    assert (a is None) == (b is None)
    if a is not None and b is not None:
        assert abs(float(a) - float(b)) < 1e-9


def test_targets_of_different_samples_are_never_paired() -> None:
    z = {"click": torch.tensor([3.0, -3.0])}
    y = {"click": torch.tensor([0.0, 1.0])}  # ranked the wrong way round, but in two samples
    assert pairwise_rank_loss(z, y, torch.tensor([0, 1, 2])) is None
    one_sample = pairwise_rank_loss(z, y, torch.tensor([0, 2]))
    assert one_sample is not None and float(one_sample) == pytest.approx(math.log1p(math.exp(6.0)))


def test_negative_weights_are_refused() -> None:
    with pytest.raises(ValueError, match="rank_loss_weight"):
        OptimConfig(rank_loss_weight=-0.1)


def _trainer(run_dir: Path, weight: float) -> Trainer:
    return tiny_ranker_trainer(run_dir, OptimConfig(rank_loss_weight=weight))


def test_the_training_step_adds_the_weighted_rank_loss_to_the_bce(tmp_path: Path) -> None:
    samples = make_samples(8, seed=3)
    trainers = {w: _trainer(tmp_path / str(w), w) for w in (0.0, 0.5)}
    batch = collate(samples, trainers[0.0].spec)
    assert int((batch.target_offsets[1:] - batch.target_offsets[:-1]).max()) > 1
    with torch.no_grad():
        logits = trainers[0.0].model(batch)  # both trainers' models start from the same seed
        bce, _ = multitask_bce(logits, batch.labels)
        rank = pairwise_rank_loss(logits, batch.labels, batch.target_offsets)
    assert rank is not None and float(rank) > 0
    off, on = (trainers[w].train_step(batch)["total"] for w in (0.0, 0.5))
    assert off == pytest.approx(float(bce), rel=1e-5)
    assert on == pytest.approx(float(bce) + 0.5 * float(rank), rel=1e-5)
    # the extra term changes what is learned: the two models' next scores differ
    with torch.no_grad():
        after = [trainers[w].model(batch)["click"] for w in (0.0, 0.5)]
    assert not torch.allclose(after[0], after[1])
