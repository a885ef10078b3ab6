"""Property tests of the pure streaming core (no Kafka): join, aggregation, no-leakage, determinism, recovery."""

from __future__ import annotations

import json
import math
import random

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from streaming.config import CoreConfig, CrossSpec
from streaming.core import StreamCore, run_offline
from streaming.cross import cross_features, feature_names
from streaming.events import Event, Feedback, Impression
from streaming.outputs import DeadLetter, LateLabel
from streaming.sample import Sample, make_sample_id
from streaming.user_state import Candidate, UserState, build_request_sample
from tests.streaming.gen import GenSpec, event_streams, generate

CFG = CoreConfig(attribution_window_s=1800.0, allowed_lateness_s=60.0, history_len=8, max_targets=5,
                 span_s=3000.0, late_horizon_s=3600.0, skip_action="skip")
PROPS = settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def unique(events: list[Event]) -> dict[str, Event]:
    out: dict[str, Event] = {}
    for e in events:
        out.setdefault(e.event_id, e)
    return out


def joined_feedback(events: dict[str, Event], cfg: CoreConfig) -> dict[str, tuple[Feedback, Impression]]:
    """Brute force: feedback event_id -> (feedback, first matching impression) for every in-window join."""
    imps = [e for e in events.values() if isinstance(e, Impression)]
    out = {}
    for f in events.values():
        if isinstance(f, Feedback):
            for i in imps:  # arrival order: the core joins the first impression that arrived
                if (i.user_id, i.request_id, i.item_id) == (f.user_id, f.request_id, f.item_id) and \
                        i.ts <= f.ts <= i.ts + cfg.attribution_window_s:
                    out[f.event_id] = (f, i)
                    break
    return out


def sample_key(s: Sample) -> str:
    return json.dumps(s.to_json(), sort_keys=True)


@PROPS
@given(event_streams())
def test_each_impression_in_exactly_one_sample_with_correct_labels(arrival: list[Event]) -> None:
    events = unique(arrival)
    samples = run_offline(arrival, CFG)
    seen: dict[str, int] = {}
    for s in samples:
        assert s.sample_id == make_sample_id(t.event_id for t in s.targets)
        assert 1 <= len(s.targets) <= CFG.max_targets
        assert s.span_end - s.span_start < CFG.span_s
        assert [(t.ts, t.event_id) for t in s.targets] == sorted((t.ts, t.event_id) for t in s.targets)
        for t in s.targets:
            seen[t.event_id] = seen.get(t.event_id, 0) + 1
    imps = {k: e for k, e in events.items() if isinstance(e, Impression)}
    assert seen == dict.fromkeys(imps, 1)
    fbs = [e for e in events.values() if isinstance(e, Feedback)]
    for s in samples:
        for t in s.targets:
            imp = imps[t.event_id]
            for task in CFG.tasks:
                expect = any(f.user_id == imp.user_id and f.request_id == imp.request_id and f.item_id == imp.item_id
                             and CFG.task_of(f.action) == task and imp.ts <= f.ts <= imp.ts + CFG.attribution_window_s
                             for f in fbs)
                assert t.labels[task] == int(expect), (t.event_id, task)


@PROPS
@given(event_streams())
def test_no_target_sees_its_future(arrival: list[Event]) -> None:
    events = unique(arrival)
    joins = joined_feedback(events, CFG)
    behaviors_by_user: dict[str, list[tuple[float, str]]] = {}
    for fid, (f, _) in joins.items():
        behaviors_by_user.setdefault(f.user_id, []).append((f.ts, fid))
    imps = [e for e in events.values() if isinstance(e, Impression)]
    # an impression no mapped feedback labels becomes a skip behavior once its window has closed
    fbs = [e for e in events.values() if isinstance(e, Feedback) and CFG.task_of(e.action) is not None]
    for i in imps:
        if not any((f.user_id, f.request_id, f.item_id) == (i.user_id, i.request_id, i.item_id)
                   and i.ts <= f.ts <= i.ts + CFG.attribution_window_s for f in fbs):
            behaviors_by_user.setdefault(i.user_id, []).append((i.ts + CFG.attribution_window_s, i.event_id))
    spec = CFG.cross
    for s in run_offline(arrival, CFG):
        beh = sorted(behaviors_by_user.get(s.user_id, []))
        # H: exactly the last L behaviors strictly before the earliest target; R: those within the span
        exp_h = [ts for ts, _ in beh if ts < s.span_start][-CFG.history_len:]
        assert [b.ts for b in s.history] == exp_h
        assert [b.ts for b in s.realtime] == [ts for ts, _ in beh if s.span_start <= ts <= s.span_end]
        for t in s.targets:
            assert all(b.ts < t.ts for b in s.history)
            # cross features = brute force over events strictly before the target
            cat = t.item.get("category", "")
            exp = {}
            for dim, match_i, match_f in (
                ("scn", lambda i, t=t: i.scenario == t.scenario, lambda i, t=t: i.scenario == t.scenario),
                ("cat", lambda i, c=cat: i.item.get("category", "") == c, lambda i, c=cat: i.item.get("category", "") == c),
                ("all", lambda i: True, lambda i: True),
            ):
                for wname, w in (("1h", 3600.0), ("1d", 86400.0), ("life", math.inf)):
                    n_imp = sum(1 for i in imps if i.user_id == s.user_id and match_i(i)
                                and t.ts - w <= i.ts < t.ts)
                    exp[f"{dim}_imp_{wname}"] = float(n_imp)
                    for task in spec.tasks:
                        n = sum(1 for f, i in joins.values() if f.user_id == s.user_id and match_f(i)
                                and CFG.task_of(f.action) == task and t.ts - w <= f.ts < t.ts)
                        exp[f"{dim}_{task}_{wname}"] = float(n)
                        exp[f"{dim}_{task}_rate_{wname}"] = n / max(n_imp, 1)
            assert t.cross == exp, t.event_id
            assert sorted(t.cross) == sorted(feature_names(spec))


@PROPS
@given(event_streams(), st.integers(1, 4), st.integers(0, 2**16))
def test_determinism_across_partitioning_batching_and_watermarks(arrival: list[Event], parts: int, seed: int) -> None:
    rng = random.Random(seed)
    expected = sorted(sample_key(s) for s in run_offline(arrival, CFG))
    cores = [StreamCore(CFG) for _ in range(parts)]
    streams: list[list[Event]] = [[] for _ in range(parts)]
    for e in arrival:
        streams[hash(e.user_id) % parts].append(e)
    got = []
    for core, evs in zip(cores, streams, strict=True):
        i = 0
        while i < len(evs):
            n = rng.randint(1, 7)
            got += core.on_events(evs[i:i + n])
            i += n
        got += core.flush_all()
        c = core.counters
        assert c.late_impressions == 0 and c.late_feedback == 0
    assert sorted(sample_key(o) for o in got if isinstance(o, Sample)) == expected


@PROPS
@given(event_streams(), st.floats(0.1, 0.9))
def test_restore_mid_stream_gives_identical_outputs(arrival: list[Event], cut: float) -> None:
    k = int(len(arrival) * cut)
    a = StreamCore(CFG)
    outs = [o for e in arrival for o in a.on_event(e)] + a.flush_all()
    b = StreamCore(CFG)
    first = [o for e in arrival[:k] for o in b.on_event(e)]
    blob = json.dumps({"meta": b.meta_to_json(), "users": [b.user_to_json(u) for u in sorted(b.users)]})
    d = json.loads(blob)
    c = StreamCore(CFG)
    rest = c.restore(d["meta"], d["users"])
    rest += [o for e in arrival[k:] for o in c.on_event(e)] + c.flush_all()
    assert [repr(o) for o in outs] == [repr(o) for o in first + rest] or \
        sorted(map(repr, outs)) == sorted(map(repr, first + rest))


@settings(max_examples=30, deadline=None)
@given(st.integers(0, 2**32 - 1))
def test_heavy_disorder_never_loses_an_impression(seed: int) -> None:
    _, arrival = generate(seed, GenSpec(impressions=50, jitter=5000.0))
    core = StreamCore(CFG)
    outs = [o for e in arrival for o in core.on_event(e)] + core.flush_all()
    in_samples = [t.event_id for o in outs if isinstance(o, Sample) for t in o.targets]
    late = [o.event["event_id"] for o in outs if isinstance(o, DeadLetter) and o.reason == "late_impression"]
    imps = {e.event_id for e in arrival if isinstance(e, Impression)}
    assert sorted(in_samples + late) == sorted(imps)
    c = core.counters
    assert c.late_impressions == len(late)
    assert c.late_positives == sum(isinstance(o, LateLabel) for o in outs)
    assert c.orphans == sum(isinstance(o, DeadLetter) and o.reason == "orphan_feedback" for o in outs)


def test_late_positive_becomes_a_correction_and_duplicates_are_counted() -> None:
    cfg = CoreConfig(attribution_window_s=10.0, allowed_lateness_s=0.0)
    core = StreamCore(cfg)
    imp = Impression("i1", 0.0, "u", "home", "r", "a")
    outs = core.on_event(imp) + core.on_event(imp)
    outs += core.on_event(Feedback("tick", 50.0, "x", "home", "q", "z", "share"))
    outs += core.on_event(Impression("tick2", 50.0, "x", "home", "q2", "z"))  # W = 50: i1 released
    outs += core.on_event(Feedback("f1", 5.0, "u", "home", "r", "a", "click"))  # late, in window
    late = [o for o in outs if isinstance(o, LateLabel)]
    assert len(late) == 1 and late[0].impression_event_id == "i1" and late[0].task == "click"
    assert late[0].sample_id is None  # the sample is still open
    outs2 = core.flush_all()
    [s] = [o for o in outs2 if isinstance(o, Sample) and o.user_id == "u"]
    assert s.targets[0].labels == {"click": 0, "conversion": 0}
    c = core.counters
    assert (c.duplicates, c.late_feedback, c.late_behaviors, c.late_positives) == (1, 0, 1, 1)


@pytest.mark.parametrize("action", ["share", "click"])
def test_late_feedback_on_a_released_impression_becomes_a_behavior(action: str) -> None:
    """Late feedback that joins an already released impression is a history behavior whatever its action (samples
    emitted afterwards see it, the emitted one does not change); a mapped action also yields a LateLabel."""
    cfg = CoreConfig(attribution_window_s=10.0, allowed_lateness_s=0.0, span_s=5.0, history_len=8)
    core = StreamCore(cfg)
    item = {"category": "c1"}
    outs = core.on_event(Impression("i1", 0.0, "u", "home", "r", "a", item=item))
    outs += core.on_event(Impression("tick-i", 50.0, "x", "home", "q", "z"))
    outs += core.on_event(Feedback("tick-f", 50.0, "x", "home", "q", "z", "share"))  # W = 50: u's i1 sample out
    [s1] = [o for o in outs if isinstance(o, Sample) and o.user_id == "u"]
    before = sample_key(s1)
    late = core.on_event(Feedback("f1", 5.0, "u", "home", "r", "a", action))  # ts 5 <= W: late, i1 released
    assert [type(o).__name__ for o in late] == (["LateLabel"] if action == "click" else [])
    state = core.export_user_state("u")
    assert state is not None
    assert [(b.item_id, b.action, b.ts, b.item) for b in state.behaviors] == [("a", action, 5.0, item)]
    outs = core.on_event(Impression("i2", 60.0, "u", "home", "r2", "b", item=item))
    outs += core.on_event(Impression("tick-i2", 100.0, "x", "home", "q3", "z"))
    outs += core.on_event(Feedback("tick-f2", 100.0, "x", "home", "q3", "z", "share"))  # W = 100: i2's sample out
    [s2] = [o for o in outs if isinstance(o, Sample) and o.user_id == "u"]
    assert [(b.action, b.ts) for b in s2.history] == [(action, 5.0)] and s2.realtime == []
    assert s2.targets[0].cross["scn_click_life"] == (1.0 if action == "click" else 0.0)
    assert sample_key(s1) == before and s1.history == [] and s1.realtime == []
    c = core.counters
    assert (c.late_feedback, c.late_behaviors, c.late_orphans, c.orphans) == (0, 1, 0, 0)
    assert c.late_positives == (action == "click")


@settings(max_examples=30, deadline=None)
@given(st.integers(0, 2**32 - 1))
def test_every_feedback_is_joined_a_late_behavior_or_an_orphan(seed: int) -> None:
    """No silent loss under heavy disorder: each unique feedback is joined (on time or late to a pending
    impression), a late behavior, or an orphan dead letter; each late one is counted in exactly one late kind."""
    _, arrival = generate(seed, GenSpec(impressions=50, jitter=5000.0, fb_rate=0.6))
    core = StreamCore(CFG)
    seen: set[str] = set()
    n_late = n_fb = 0
    outs = []
    for e in arrival:
        if isinstance(e, Feedback) and e.event_id not in seen:
            n_fb += 1
            n_late += e.ts <= core.watermark
        seen.add(e.event_id)
        outs += core.on_event(e)
    outs += core.flush_all()
    c = core.counters
    orphan_dl = sum(isinstance(o, DeadLetter) and o.reason == "orphan_feedback" for o in outs)
    assert c.joined + c.late_behaviors + orphan_dl == n_fb
    assert c.late_feedback + c.late_behaviors + c.late_orphans == n_late
    assert c.late_orphans <= c.orphans == orphan_dl


def test_user_state_serving_matches_stream_cross_features() -> None:
    cfg = CoreConfig(history_len=4)
    _, arrival = generate(7, GenSpec(users=2, impressions=80, horizon=50_000.0))
    core = StreamCore(cfg)
    samples = [o for e in arrival for o in core.on_event(e) if isinstance(o, Sample)]
    uid = samples[-1].user_id
    state = UserState.from_json(core.export_user_state(uid).encode())  # type: ignore[union-attr]
    assert len(state.behaviors) <= 4
    t = samples[-1].targets[-1]
    req = build_request_sample(state, uid, t.scenario, [Candidate(t.item_id, t.item, {}, t.dense)],
                               {"request_id": "q"}, now=t.ts)
    assert req.targets[0].cross == t.cross
    assert all(b.ts < t.ts for b in req.history)
    cold = build_request_sample(None, "new", "home", [Candidate("i1", {"category": "c1"})], {}, now=1.0)
    assert cold.history == [] and set(cold.targets[0].cross.values()) == {0.0}
    assert cross_features(None, CrossSpec(), "s", "c", 0.0) == cold.targets[0].cross


@pytest.mark.parametrize("bad", [b"{", b'{"version": 2}', b"[]", b'{"version": 1}'])
def test_user_state_rejects_bad_records(bad: bytes) -> None:
    with pytest.raises(ValueError):
        UserState.from_json(bad)


def test_state_saved_without_released_item_features_still_loads() -> None:
    """A user state persisted before released impressions kept their scenario and item features loads; a late
    feedback on such an impression becomes a behavior with the feedback's scenario and no item features."""
    cfg = CoreConfig(attribution_window_s=10.0, allowed_lateness_s=0.0)
    core = StreamCore(cfg)
    core.on_event(Impression("i1", 0.0, "u", "home", "r", "a", item={"category": "c"}))
    core.on_event(Impression("tick", 50.0, "x", "home", "q", "z"))
    core.on_event(Feedback("tick-f", 50.0, "x", "home", "q", "z", "share"))
    d = json.loads(json.dumps(core.user_to_json("u")))
    d["released"] = [r[:5] for r in d["released"]]
    again = StreamCore(cfg)
    again.restore(core.meta_to_json(), [d, core.user_to_json("x")])
    again.on_event(Feedback("f1", 5.0, "u", "feed", "r", "a", "like"))
    state = again.export_user_state("u")
    assert state is not None
    assert [(b.scenario, b.action, b.item) for b in state.behaviors] == [("feed", "like", {})]
