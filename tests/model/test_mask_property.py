"""Hypothesis: for random users, a target's score depends only on the context and itself, and the cached path agrees."""

from __future__ import annotations

import dataclasses

import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from model import Ranker
from model.batch import collate
from tests.model.helpers import make_sample, seeded, small_config, small_spec

SPEC = small_spec()
MODEL = Ranker(SPEC, small_config(num_blocks=1, target_layers=2))
seeded(MODEL, seed=11)


@settings(max_examples=20, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(seed=st.integers(0, 10_000), n_hist=st.integers(0, 6), n_rt=st.integers(0, 6), n_tgt=st.integers(1, 6),
       pick=st.integers(0, 5))
def test_target_score_depends_only_on_context_and_itself(seed: int, n_hist: int, n_rt: int, n_tgt: int,
                                                          pick: int) -> None:
    s = make_sample(seed, n_hist=n_hist, n_rt=n_rt, n_tgt=n_tgt)
    j = pick % n_tgt
    # keep the earliest target (it is the sample's time origin) and target j; drop the rest
    alone = dataclasses.replace(s, targets=[t for i, t in enumerate(s.targets) if i in (0, j)])
    with torch.no_grad():
        full = MODEL(collate([s], SPEC))
        part = MODEL(collate([alone], SPEC))
    cached = MODEL.score_candidates(MODEL.encode_user(collate([s], SPEC)), collate([s], SPEC))
    for task in SPEC.tasks:
        torch.testing.assert_close(part[task][-1], full[task][j], atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(cached[task], full[task], atol=1e-5, rtol=1e-5)
