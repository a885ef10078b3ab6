"""``serving.scoring.UserCacheLRU``: a repeat request with an unchanged context reuses the user's encoding and
scores exactly as encoding again; anything encode_user reads (history, time-gap buckets, R timestamps, the model)
changes the key."""

from __future__ import annotations

import dataclasses
from typing import cast

import pytest
import torch

from model import Ranker
from model.batch import Batch, collate
from serving.scoring import UserCacheLRU, context_digest
from tests.model.helpers import make_sample, seeded, small_config, small_spec

SPEC = small_spec()


@pytest.fixture(autouse=True)
def _one_thread() -> object:
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def model(seed: int = 0) -> Ranker:
    return cast(Ranker, seeded(Ranker(SPEC, small_config()).eval(), seed=seed))


def scores(m: Ranker, batch: Batch, lru: UserCacheLRU | None) -> dict[str, torch.Tensor]:
    with torch.inference_mode():
        cache = m.encode_user(batch) if lru is None else lru.encode(m, batch)
        return m.score_candidates(cache, batch)


def test_repeat_request_hits_and_scores_identically() -> None:
    m, lru = model(), UserCacheLRU(capacity=4)
    base = make_sample(1, n_rt=0, n_tgt=6)
    first = scores(m, collate([base], SPEC), lru)
    # same user and context, fewer candidates: a hit with the same scores as a fresh encoding
    fewer = collate([dataclasses.replace(base, targets=base.targets[:3])], SPEC)
    again = scores(m, fewer, lru)
    assert (lru.hits, lru.misses) == (1, 1)
    fresh = scores(m, fewer, None)
    for task in SPEC.tasks:
        assert torch.equal(again[task], fresh[task])
        torch.testing.assert_close(again[task], first[task][:3], atol=1e-6, rtol=1e-5)


def test_context_changes_miss() -> None:
    m, lru = model(), UserCacheLRU(capacity=8)
    s = make_sample(2, n_rt=2, n_tgt=2)
    scores(m, collate([s], SPEC), lru)
    longer = dataclasses.replace(s, history=[*s.history, make_sample(3).history[0]])
    later = dataclasses.replace(s, targets=[dataclasses.replace(t, ts=t.ts + 5e5) for t in s.targets])  # new buckets
    shifted_r = dataclasses.replace(s, realtime=[dataclasses.replace(b, ts=b.ts + 1.0) for b in s.realtime])
    other_user = dataclasses.replace(s, user_id="someone-else")
    for variant in (longer, later, shifted_r, other_user):
        b = collate([variant], SPEC)
        got = scores(m, b, lru)
        want = scores(m, b, None)
        for task in SPEC.tasks:
            assert torch.equal(got[task], want[task])
    assert lru.hits == 0 and lru.misses == 5


def test_new_model_empties_and_capacity_evicts() -> None:
    lru = UserCacheLRU(capacity=2)
    m1, m2 = model(0), model(1)
    batches = [collate([make_sample(i, n_rt=0)], SPEC) for i in range(3)]
    for b in batches:
        scores(m1, b, lru)
    assert len(lru) == 2  # the oldest was evicted
    scores(m1, batches[0], lru)
    assert lru.hits == 0
    got = scores(m2, batches[2], lru)  # another model: no stale encodings
    assert len(lru) == 1 and lru.hits == 0
    want = scores(m2, batches[2], None)
    for task in SPEC.tasks:
        assert torch.equal(got[task], want[task])


def test_multi_user_batches_are_not_cached() -> None:
    batch = collate([make_sample(1), make_sample(2)], SPEC)
    assert context_digest(batch) is None
    lru = UserCacheLRU()
    scores(model(), batch, lru)
    assert len(lru) == 0 and lru.misses == 0
