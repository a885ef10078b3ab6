"""OptimConfig.ema_decay: the trainer scores, snapshots and checkpoints an average of the dense weights."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

from model import Ranker
from model.batch import collate
from model.snapshot import load_snapshot
from tests.trainer.conftest import make_samples, tiny_ranker_trainer
from trainer.loop import Trainer
from trainer.optim import OptimConfig, WeightAverage


@settings(max_examples=50, deadline=None)
@given(decay=st.floats(0.01, 0.999), steps=st.lists(st.floats(-10, 10), min_size=1, max_size=30))
def test_average_is_the_warmed_up_exponential_average_and_swapping_restores_the_weights(
        decay: float, steps: list[float]) -> None:
    w = nn.Parameter(torch.zeros(3, dtype=torch.float64))
    avg = WeightAverage([w], decay)
    expected = 0.0
    for t, value in enumerate(steps):
        with torch.no_grad():
            w.fill_(value)
        avg.update()
        d = min(decay, (1 + t) / (10 + t))
        expected = d * expected + (1 - d) * value
    with avg.swapped():
        assert torch.allclose(w, torch.full((3,), expected, dtype=torch.float64), atol=1e-9)
    assert torch.equal(w, torch.full((3,), steps[-1], dtype=torch.float64))  # the trained weights, bit for bit
    state = avg.state_dict()
    again = WeightAverage([nn.Parameter(torch.zeros(3, dtype=torch.float64))], decay)
    again.load_state_dict(state)
    assert again.updates == len(steps) and torch.equal(again.average[0], avg.average[0])


def test_bad_decays_are_refused() -> None:
    with pytest.raises(ValueError, match="ema_decay"):
        OptimConfig(ema_decay=1.0)
    with pytest.raises(ValueError, match="decay"):
        WeightAverage([nn.Parameter(torch.zeros(1))], 0.0)
    with pytest.raises(ValueError, match="does not fit"):
        WeightAverage([nn.Parameter(torch.zeros(2))], 0.5).load_state_dict({"updates": 1, "average": [torch.zeros(3)]})


def _trainer(run_dir: Path, ema_decay: float) -> Trainer:
    return tiny_ranker_trainer(run_dir, OptimConfig(dense_lr=1e-2, ema_decay=ema_decay))


def _averaged_copy(t: Trainer) -> Ranker:
    """A copy of the trainer's Ranker with the average put into its dense parameters by name."""
    assert t.average is not None
    model = t.model
    assert isinstance(model, Ranker)
    copy = Ranker(t.spec, model.config)
    copy.load_state_dict(model.state_dict())
    names = {id(p): n for n, p in model.named_parameters()}
    params = dict(copy.named_parameters())
    with torch.no_grad():
        for p, a in zip(t.average.params, t.average.average, strict=True):
            params[names[id(p)]].copy_(a)
    return copy.eval()


def test_scores_and_snapshots_come_from_the_average_and_training_from_the_weights(tmp_path: Path) -> None:
    samples = make_samples(80, seed=5)
    t = _trainer(tmp_path / "ema", 0.9)
    plain = _trainer(tmp_path / "plain", 0.0)
    batches = [collate(samples[i:i + 10], t.spec) for i in range(0, 80, 10)]
    for b in batches[:-1]:
        t.train_step(b)
        plain.train_step(b)
    # training itself is unchanged: the trained weights are those of a trainer without the average
    for (k, v), (_, v2) in zip(t.model.state_dict().items(), plain.model.state_dict().items(), strict=True):
        assert torch.equal(v, v2), k
    expected = _averaged_copy(t)
    with torch.no_grad():
        want = {k: torch.sigmoid(z) for k, z in expected(batches[-1]).items()}
    t.train_step(batches[-1])
    plain.train_step(batches[-1])
    for task, p in t.last_probs.items():
        assert torch.allclose(p, want[task], atol=1e-6), task
        assert not torch.allclose(p, plain.last_probs[task], atol=1e-4), task  # the average is not the weights

    path = t.snapshot()
    served = load_snapshot(path).model
    averaged = _averaged_copy(t)
    for (k, v), (_, v2) in zip(served.state_dict().items(), averaged.state_dict().items(), strict=True):
        assert torch.equal(v, v2), k
    # after the snapshot the trainer holds its trained weights again
    for (k, v), (_, v2) in zip(t.model.state_dict().items(), plain.model.state_dict().items(), strict=True):
        assert torch.equal(v, v2), k


def test_a_resumed_trainer_continues_the_same_average(tmp_path: Path) -> None:
    samples = make_samples(60, seed=6)
    a = _trainer(tmp_path / "run", 0.8)
    batches = [collate(samples[i:i + 15], a.spec) for i in range(0, 60, 15)]
    for b in batches[:3]:
        a.train_step(b)
    a.checkpoint()
    b_ = _trainer(tmp_path / "run", 0.8)  # same run dir: resumes
    assert b_.resumed_from is not None and b_.average is not None and a.average is not None
    assert b_.average.updates == a.average.updates == 3
    a.train_step(batches[3])
    b_.train_step(batches[3])
    for task in a.last_probs:
        assert torch.equal(a.last_probs[task], b_.last_probs[task]), task
