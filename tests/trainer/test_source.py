"""Decoding, skip reasons and the bounded dedupe memory."""

from __future__ import annotations

import json
from collections import OrderedDict

from hypothesis import given, settings
from hypothesis import strategies as st

from streaming.sample import Sample
from tests.trainer.conftest import make_samples
from trainer.source import RecentIds, decode_records


def test_every_record_is_a_sample_or_a_counted_skip() -> None:
    good = make_samples(3, seed=5)
    newer = good[0].to_json() | {"schema_version": 99, "sample_id": "new"}
    values = [
        good[0].encode(), None, b"\xff\xfe", b"[1, 2]", json.dumps(newer).encode(),
        json.dumps(good[1].to_json() | {"targets": [{"event_id": "x"}]}).encode(),
        Sample("e", "u", []).encode(), good[1].encode(), good[0].encode(), good[2].encode(),
    ]
    samples, skips = decode_records(values, RecentIds(100))
    assert [s.sample_id for s in samples] == [good[0].sample_id, good[1].sample_id, good[2].sample_id]
    assert [r for r, _, _ in skips] == ["invalid_json", "invalid_json", "not_object", "schema_version",
                                        "bad_field", "no_targets", "duplicate"]
    assert len(samples) + len(skips) == len(values)


def test_ids_seen_before_a_restart_are_duplicates() -> None:
    s = make_samples(2, seed=6)
    seen = RecentIds(10, [s[0].sample_id])
    samples, skips = decode_records([x.encode() for x in s], seen)
    assert [x.sample_id for x in samples] == [s[1].sample_id] and skips[0][0] == "duplicate"


@settings(max_examples=100, deadline=None)
@given(st.integers(1, 5), st.lists(st.sampled_from("abcdefgh"), max_size=40))
def test_recent_ids_is_an_lru_of_capacity(capacity: int, ops: list[str]) -> None:
    r = RecentIds(capacity)
    model: OrderedDict[str, None] = OrderedDict()
    for x in ops:
        assert r.add(x) == (x not in model)
        model[x] = None
        model.move_to_end(x)
        while len(model) > capacity:
            model.popitem(last=False)
        assert r.to_list() == list(model)
    assert RecentIds(capacity, r.to_list()).to_list() == r.to_list()


@settings(max_examples=40, deadline=None)
@given(st.integers(0, 4), st.integers(0, 3), st.integers(0, 10_000))
def test_decode_sample_keeps_what_collate_keeps(keep_h: int, keep_r: int, seed: int) -> None:
    """orjson + trimmed behaviors: same Sample fields as the stdlib decode, and the same collated batch."""
    import dataclasses

    import torch

    from model.batch import collate
    from model.features import FeatureSpec
    from streaming.sample import Behavior
    from trainer.source import decode_sample

    [s] = make_samples(1, seed=seed)
    s = dataclasses.replace(s, realtime=[Behavior(f"r{j}", "home", "click", s.span_start + j) for j in range(seed % 5)])
    got = decode_sample(s.encode(), keep_h, keep_r)
    full = Sample.decode(s.encode())
    assert got.history == (full.history[-keep_h:] if keep_h else [])  # collate's slice
    assert got.realtime == (full.realtime[-keep_r:] if keep_r else [])
    assert dataclasses.replace(got, history=full.history, realtime=full.realtime) == full
    spec = FeatureSpec(max_history=keep_h, max_realtime=keep_r)
    a, b = collate([got], spec), collate([full], spec)
    assert torch.equal(a.sparse.values(), b.sparse.values()) and torch.equal(a.token_ts, b.token_ts)
    assert torch.equal(a.float_features.weights(), b.float_features.weights())


def test_decode_sample_falls_back_to_the_stdlib_for_what_orjson_rejects() -> None:
    """NaN literals (stdlib-only JSON) still decode; bad bytes keep the stdlib's reason and detail."""
    from streaming.sample import SampleError
    from trainer.source import decode_sample

    [s] = make_samples(1, seed=3)
    raw = json.dumps(s.to_json() | {"span_end": float("nan")}).encode()  # json.dumps writes NaN
    assert decode_sample(raw).sample_id == s.sample_id
    for bad in (b"{oops", b"\xff\xfe"):
        try:
            Sample.decode(bad)
        except SampleError as e:
            want = (e.reason, e.detail)
        try:
            decode_sample(bad)
        except SampleError as e:
            assert (e.reason, e.detail) == want
        else:
            raise AssertionError("decoded invalid bytes")
