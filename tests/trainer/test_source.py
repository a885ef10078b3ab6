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
