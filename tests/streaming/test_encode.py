"""Sample.encode / UserState.encode (orjson on the dataclasses + cached behavior JSON) write exactly the bytes of
``dumps(to_json())``, the reference encoding."""

from __future__ import annotations

import pickle

from hypothesis import HealthCheck, given, settings

from streaming.core import StreamCore
from streaming.events import Event, Impression
from streaming.fastjson import dumps
from streaming.sample import Behavior, Sample, Target
from streaming.user_state import UserState
from tests.streaming.gen import event_streams


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(event_streams())
def test_encodings_equal_the_to_json_reference(arrival: list[Event]) -> None:
    core = StreamCore()
    samples: list[Sample] = []
    exported: list[tuple[UserState, bytes]] = []
    for i in range(0, len(arrival) + 7, 7):  # batches as the worker feeds them, then the end-of-stream flush
        outs = core.on_events(arrival[i:i + 7]) if i < len(arrival) else core.flush_all()
        samples += [o for o in outs if isinstance(o, Sample)]
        for uid in sorted({s.user_id for s in samples} | core.take_behavior_users()):
            st = core.export_user_state(uid)
            assert st is not None
            for _ in range(2):  # the second encoding uses the behaviors' cached JSON
                assert st.encode() == dumps(st.to_json())
            assert core.encode_user_state(uid) == st.encode()  # the worker's path: no copies, same bytes
            exported.append((st, st.encode()))
    assert samples or not any(isinstance(e, Impression) for e in arrival)  # the first impression is never late
    for st, raw in exported:  # an exported state is a copy: later events never change it
        assert st.encode() == raw
    for s in samples:
        for _ in range(2):
            assert s.encode() == dumps(s.to_json())
        assert Sample.decode(s.encode()) == s


def test_fallback_and_copies_keep_the_reference_bytes() -> None:
    b = Behavior("i1", "home", "click", 5.0, {"category": "c"})
    big = Target("e1", "r1", "i1", "home", 6.0, position=2**70)  # beyond 64 bits: orjson refuses, stdlib writes it
    s = Sample("x", "u", [big], history=[b], realtime=[b])
    assert s.encode() == dumps(s.to_json())
    assert b"1180591620717411303424" in s.encode()
    b2 = pickle.loads(pickle.dumps(b))  # a cached encoding travels with its (immutable) behavior
    assert b2 == b and b2.encoded() == dumps(b.to_json())
    st = UserState("u", behaviors=[b, b2])
    assert st.encode() == dumps(st.to_json())
