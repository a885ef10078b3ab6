"""Dynamic-mask properties of the Ranker end to end (MTGR): targets are independent and causal w.r.t. R."""

from __future__ import annotations

import dataclasses

import pytest
import torch

from kernels.attention import AttentionKind
from model import Ranker
from model.batch import collate
from streaming.sample import Behavior, Sample
from tests.model.helpers import make_sample, seeded, small_config, small_spec

ATOL = 1e-5
KINDS = [AttentionKind.SOFTMAX, AttentionKind.SILU]


def _model(kind: AttentionKind) -> Ranker:
    spec = small_spec()
    return seeded(Ranker(spec, small_config(attention=kind)), seed=1)  # type: ignore[return-value]


@torch.no_grad()
def _scores(model: Ranker, samples: list[Sample]) -> dict[str, torch.Tensor]:
    return model(collate(samples, model.spec))


def _close(a: torch.Tensor, b: torch.Tensor) -> bool:
    return torch.allclose(a, b, atol=ATOL, rtol=1e-5)


@pytest.mark.parametrize("kind", KINDS)
def test_permuting_targets_permutes_scores(kind: AttentionKind) -> None:
    model = _model(kind)
    s = make_sample(3, n_tgt=6)
    perm = [4, 0, 5, 2, 1, 3]
    s_perm = dataclasses.replace(s, targets=[s.targets[i] for i in perm])
    base, permuted = _scores(model, [make_sample(9), s]), _scores(model, [make_sample(9), s_perm])
    off = 5  # first user's targets come first
    for task in model.spec.tasks:
        assert _close(permuted[task][off:], base[task][off:][perm])
        assert _close(permuted[task][:off], base[task][:off])
    assert base["click"][off:].std() > 1e-3  # scores differ between targets, so the permutation is visible


@pytest.mark.parametrize("kind", KINDS)
def test_adding_or_removing_a_target_leaves_other_scores(kind: AttentionKind) -> None:
    model = _model(kind)
    s = make_sample(4, n_tgt=5)
    extra = dataclasses.replace(make_sample(5, n_tgt=3).targets[2], event_id="extra", ts=s.targets[1].ts + 3.0)
    added = dataclasses.replace(s, targets=[*s.targets[:2], extra, *s.targets[2:]])
    removed = dataclasses.replace(s, targets=[t for i, t in enumerate(s.targets) if i != 3])
    base, with_extra, without = _scores(model, [s]), _scores(model, [added]), _scores(model, [removed])
    for task in model.spec.tasks:
        assert _close(torch.cat([with_extra[task][:2], with_extra[task][3:]]), base[task])
        assert _close(without[task], torch.cat([base[task][:3], base[task][4:]]))


@pytest.mark.parametrize("kind", KINDS)
def test_realtime_event_after_a_target_is_invisible_to_it(kind: AttentionKind) -> None:
    model = _model(kind)
    s = make_sample(6, n_rt=4, n_tgt=5)  # R at t0+5, +15, +25, +35; targets at t0, +10, +20, +30, +40
    r = s.realtime[2]  # ts = t0 + 25: after targets 0..2, before targets 3..4
    changed_r = Behavior("a-very-different-item", "search", "order", r.ts, {"cat": "zzz"})
    changed = dataclasses.replace(s, realtime=[*s.realtime[:2], changed_r, s.realtime[3]])
    a, b = _scores(model, [s]), _scores(model, [changed])
    for task in model.spec.tasks:
        assert _close(a[task][:3], b[task][:3])
    assert not _close(a["click"][3:], b["click"][3:])  # later targets do see it


@pytest.mark.parametrize("kind", KINDS)
def test_history_change_changes_scores(kind: AttentionKind) -> None:
    model = _model(kind)
    s = make_sample(7)
    h = s.history[-1]
    changed = dataclasses.replace(s, history=[*s.history[:-1], Behavior("other-item", "cart", "order", h.ts)])
    a, b = _scores(model, [s]), _scores(model, [changed])
    assert ((a["click"] - b["click"]).abs() > 1e-6).all()  # every target sees history


def test_other_users_do_not_leak() -> None:
    model = _model(AttentionKind.SOFTMAX)
    s = make_sample(8)
    alone = _scores(model, [s])["click"]
    together = _scores(model, [make_sample(10, n_hist=20), s, make_sample(11, n_tgt=1)])["click"]
    assert _close(together[5 : 5 + s.num_targets], alone)
