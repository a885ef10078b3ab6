"""Feature spec and ``collate``: structure invariants (hypothesis), batching is concatenation, stable hashing."""

from __future__ import annotations

import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from kernels.attention import TokenGroup
from model.batch import Batch, collate
from model.features import FLOAT_FEATURES, SPARSE_FEATURES, FeatureSpec
from streaming.sample import Behavior, Sample, Target
from tests.model.helpers import make_sample, small_spec

SPEC = small_spec(max_history=5, max_realtime=3, num_user_tokens=2)
text = st.text(alphabet="abcxyz=é\x00 ", max_size=6)
finite_or_not = st.one_of(st.floats(-1e6, 1e6), st.sampled_from([math.nan, math.inf, -math.inf]))
ts = st.floats(1e9, 1e9 + 1e4)
behaviors = st.lists(st.builds(Behavior, text, text, text, ts, st.dictionaries(text, text, max_size=3)), max_size=8)
targets = st.lists(
    st.builds(Target, text, text, text, text, ts, st.one_of(st.none(), st.integers(-1, 50)),
              st.dictionaries(text, text, max_size=2), st.dictionaries(text, text, max_size=2),
              st.dictionaries(text, finite_or_not, max_size=3), st.dictionaries(text, finite_or_not, max_size=3),
              st.dictionaries(st.sampled_from(["click", "conversion", "other"]), st.integers(0, 1), max_size=3)),
    max_size=5)
samples = st.builds(lambda uid, user, h, r, t: Sample("sid-" + uid, uid, t, user=user, history=h, realtime=r),
                    text, st.dictionaries(text, text, max_size=4), behaviors, behaviors, targets)


def _per_token(kjt: object, key: str) -> list[list[int]]:
    jt = kjt.to_dict()[key]  # type: ignore[attr-defined]
    return [x.tolist() for x in jt.to_dense()]


def _check_structure(batch: Batch, ss: list[Sample]) -> None:
    G = SPEC.num_user_tokens
    groups = []
    for s in ss:
        h, r = min(len(s.history), SPEC.max_history), min(len(s.realtime), SPEC.max_realtime)
        groups += [TokenGroup.U] * G + [TokenGroup.H] * h + [TokenGroup.R] * r + [TokenGroup.T] * len(s.targets)
    assert batch.token_group.tolist() == groups
    assert batch.num_tokens == int(batch.seq_offsets[-1]) and batch.sparse.stride() == batch.num_tokens
    assert batch.num_targets == sum(len(s.targets) for s in ss) == int(batch.target_offsets[-1])
    if batch.num_targets:
        assert batch.float_features.stride() == batch.num_targets
    assert batch.max_seq_len == max((int(x) for x in batch.seq_offsets.diff()), default=0)
    # q_pos points at the user's own T tokens
    t_user = torch.repeat_interleave(torch.arange(len(ss)), batch.target_offsets.diff())
    rows = batch.seq_offsets[t_user] + batch.target_pos
    assert torch.equal(rows, batch.group_rows[TokenGroup.T])
    for g in TokenGroup:
        assert bool((batch.token_group[batch.group_rows[g]] == g).all())
    # U tokens see no R token: their ts is -inf; every other ts is finite
    assert bool(torch.isinf(batch.token_ts[batch.group_rows[TokenGroup.U]]).all())
    assert bool(torch.isfinite(batch.token_ts[batch.token_group != TokenGroup.U]).all())
    assert bool(torch.isfinite(batch.float_features.weights()).all())
    for task in SPEC.tasks:
        want = [float(t.labels.get(task, 0)) for s in ss for t in s.targets]
        assert batch.labels[task].tolist() == want and batch.labels[task].dtype == torch.float32
    assert batch.target_user_ids == [s.user_id for s in ss for _ in s.targets]
    assert batch.target_scenarios == [t.scenario for s in ss for t in s.targets]
    assert batch.user_ids == [s.user_id for s in ss] and batch.sample_ids == [s.sample_id for s in ss]
    for key in SPARSE_FEATURES:
        vals = batch.sparse.to_dict()[key].values()
        assert bool((vals >= 0).all()) and bool((vals < SPEC.tables[key].num_embeddings).all())


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(samples, max_size=4))
def test_collate_structure(ss: list[Sample]) -> None:
    _check_structure(collate(ss, SPEC), ss)


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(samples, samples)
def test_batching_is_concatenation(a: Sample, b: Sample) -> None:
    both, one, two = collate([a, b], SPEC), collate([a], SPEC), collate([b], SPEC)
    for key in SPARSE_FEATURES:
        assert _per_token(both.sparse, key) == _per_token(one.sparse, key) + _per_token(two.sparse, key)
    for key in FLOAT_FEATURES:
        assert torch.equal(both.float_features.to_dict()[key].weights(),
                           torch.cat([one.float_features.to_dict()[key].weights(),
                                      two.float_features.to_dict()[key].weights()]))
    assert torch.equal(both.token_ts, torch.cat([one.token_ts, two.token_ts]))
    assert torch.equal(both.target_pos, torch.cat([one.target_pos, two.target_pos]))
    assert torch.equal(both.target_dense, torch.cat([one.target_dense, two.target_dense]))


def test_truncation_keeps_most_recent_and_time_is_relative() -> None:
    s = make_sample(1, n_hist=9, n_rt=6, n_tgt=2)
    b = collate([s], SPEC)
    h = b.token_ts[b.group_rows[TokenGroup.H]].double() + b.ts_origin[0]
    assert torch.allclose(h, torch.tensor([x.ts for x in s.history[-5:]], dtype=torch.float64))
    assert b.ts_origin.tolist() == [s.targets[0].ts] and b.token_ts[b.group_rows[TokenGroup.T]].tolist() == [0.0, 10.0]


def test_batch_to_and_pin_memory() -> None:
    b = collate([make_sample(2), make_sample(3, n_tgt=1)], SPEC)
    m = b.to("meta")
    assert m.token_ts.device.type == "meta" and m.sparse.values().device.type == "meta"
    assert all(t.device.type == "meta" for t in (*m.group_rows, *m.labels.values(), m.float_features.weights()))
    assert m.sample_ids == b.sample_ids and m.num_targets == b.num_targets
    assert b.pin_memory().num_targets == b.num_targets  # a no-op without CUDA, pinned with it
    back = b.to("cpu", non_blocking=True)
    assert torch.equal(back.sparse.values(), b.sparse.values())


def test_spec_json_round_trip_and_validation() -> None:
    spec = small_spec(max_history=17, tasks=("click", "like"), managed_collision=True)
    assert FeatureSpec.from_json(spec.to_json()) == spec and hash(spec) == hash(FeatureSpec.from_json(spec.to_json()))
    with pytest.raises(ValueError, match="version"):
        FeatureSpec.from_json(spec.to_json().replace('"version": 1', '"version": 2'))
    with pytest.raises(ValueError, match="lacks"):
        FeatureSpec(tables={})
    assert spec.bucket("item_id", "x") >= SPEC.tables["item_id"].num_embeddings  # raw 63-bit id under MC


def test_hash_is_stable_across_processes() -> None:
    code = "from model.features import FeatureSpec; s=FeatureSpec(); print([s.bucket('item_id', 'i%d' % i) for i in range(5)], s.bucket('scenario', 'new'))"
    repo = Path(__file__).resolve().parents[2]
    outs = {subprocess.run([sys.executable, "-c", code], cwd=repo, capture_output=True, text=True, check=True,
                           env={**os.environ, "PYTHONPATH": str(repo), "PYTHONHASHSEED": seed}).stdout
            for seed in ("1", "2")}
    spec = FeatureSpec()
    here = f"{[spec.bucket('item_id', f'i{i}') for i in range(5)]} {spec.bucket('scenario', 'new')}\n"
    assert outs == {here}
