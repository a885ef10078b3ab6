"""Per-user state machine: impression⋈feedback join, behavior history, cross counters and sample aggregation.

Pure Python, no Kafka/Faust. :class:`streaming.core.StreamCore` owns one :class:`UserMachine` per user and a
partition watermark ``W``; it calls ``on_impression`` / ``on_feedback`` as events arrive and ``advance(W)`` when
``W`` passes the user's next due time (:meth:`UserMachine.next_due`).

Determinism: everything a sample contains depends only on the user's own events, never on when ``W`` advances,
provided no event is late (ts > W on arrival):

- targets are released in (ts, event_id) order once ``W ≥ ts + window``; their labels use only feedback with
  ts ≤ ts + window, all of which arrived before (else it would be late);
- a sample is the run of consecutive released targets with ts in [span_start, span_start + span_s), capped at
  ``max_targets``; it is closed by the cap, by the next target falling outside, or once ``W ≥ span_start + span_s``
  and no pending impression of the user is inside the span;
- H = the last L behaviors with ts < span_start, R = behaviors with span_start ≤ ts ≤ span_end; behaviors are kept
  (pruned only below ``min(W, pending ts, open span_start)`` beyond the last L) so newer ones never displace them;
- cross features of a target use only counters with ts < the target's ts;
- an impression released with no positive label adds a ``skip_action`` behavior at ``ts + window`` (when its
  negative label became final): it is released before any sample whose span reaches that ts is emitted.

Late feedback (ts ≤ W on arrival) that joins an impression already released still becomes a behavior (inserted by
its ts, whatever its action): samples emitted from then on see it in H/R, samples already emitted are never changed;
a mapped action also yields a :class:`streaming.outputs.LateLabel` (see the late policy in ``streaming/core.py``).
"""

from __future__ import annotations

import math
from bisect import insort
from dataclasses import dataclass, field, replace
from typing import Any

from streaming.config import CoreConfig
from streaming.cross import CrossCounters, cross_features
from streaming.events import Feedback, Impression, event_from_dict
from streaming.outputs import DeadLetter, LateLabel, Output
from streaming.sample import Behavior, Sample, Target, make_sample_id
from streaming.spec import keep_last

INF = math.inf
Key = tuple[str, str]  # (request_id, item_id)


@dataclass
class JoinCounts:
    """The join's outcome counts (shared by the machines' :class:`Tally` and the core's ``CoreCounters``)."""

    duplicates: int = 0  # events whose event_id was already seen (dropped)
    late_impressions: int = 0  # impressions at or below the watermark (dead letter late_impression)
    # every late feedback (ts at or below the watermark on arrival, not a duplicate) is counted in exactly one of:
    late_feedback: int = 0  # joined a still-pending impression (a normal join)
    late_behaviors: int = 0  # joined an already released impression: a history behavior from now on
    late_orphans: int = 0  # joined nothing (dead letter orphan_feedback; also in ``orphans``)
    late_positives: int = 0  # LateLabel corrections (one per released impression a late mapped feedback labels)
    orphans: int = 0
    joined: int = 0
    positives: dict[str, int] = field(default_factory=dict)
    negatives: dict[str, int] = field(default_factory=dict)
    samples: int = 0
    targets: int = 0


@dataclass
class Tally(JoinCounts):
    """Counts a :class:`UserMachine` adds to while processing (the core sums them into its counters)."""

    behavior_users: set[str] = field(default_factory=set)  # users that gained a behavior (drained by the core)


@dataclass(slots=True)
class _Pending:
    imp: Impression
    labels: dict[str, int]
    label_ts: float  # largest ts of a feedback that set a label (for max_event_ts), -inf if none
    ts: float  # imp.ts
    cat: str  # the item's category (cfg.cross.category_key, "" if absent): its cross-counter value


@dataclass
class _Open:
    targets: list[Target]
    label_ts: float
    user: dict[str, str]  # merged user features of its impressions, in (ts, event_id) order (later keys win)


@dataclass
class _Released:
    event_id: str
    ts: float
    sample_id: str | None
    scenario: str | None  # the impression's (None in states persisted before it was kept: the feedback's is used)
    item: dict[str, str]  # the impression's item features (shared with its target, never mutated)


@dataclass
class _Buffered:
    fb: Feedback
    matched: bool


def _release_order(p: _Pending) -> tuple[float, str]:
    return (p.ts, p.imp.event_id)


class UserMachine:
    """All streaming state of one user. See the module docstring for the semantics.

    Example:
        >>> from streaming.core import CoreCounters
        >>> m, cfg, out, t = UserMachine("u1"), CoreConfig(attribution_window_s=10.0), [], Tally()
        >>> m.on_impression(Impression("i1", 0.0, "u1", "home", "r1", "it1"), -1.0, cfg, out, t)
        >>> m.on_feedback(Feedback("f1", 5.0, "u1", "home", "r1", "it1", "click"), -1.0, cfg, out, t)
        >>> m.advance(math.inf, cfg, out, t)
        >>> out[0].targets[0].labels
        {'click': 1, 'conversion': 0}
    """

    __slots__ = ("_sched", "behaviors", "buffered", "counters", "open", "pending", "pending_by_key", "released",
                 "seen", "seen_min", "user", "user_id", "user_key")

    def __init__(self, user_id: str) -> None:
        self.user_id = user_id
        self.pending: dict[str, _Pending] = {}
        self.pending_by_key: dict[Key, list[str]] = {}
        self.buffered: dict[Key, list[_Buffered]] = {}
        self.released: dict[Key, list[_Released]] = {}
        self.seen: dict[str, float] = {}  # event_id -> ts, for duplicate detection
        self.seen_min = INF  # a lower bound of min(seen.values()), exact after each prune
        # (ts, feedback event_id, Behavior), sorted
        self.behaviors: list[tuple[float, str, Behavior]] = []
        self.counters = CrossCounters()
        self.open: _Open | None = None
        self.user: dict[str, str] = {}  # latest user features (by (ts, event_id)) for the published UserState
        self.user_key: tuple[float, str] = (-INF, "")
        self._sched = INF  # due time of this user's live heap entry in the core (INF: none)

    # ---------------------------------------------------------------- events
    def on_impression(self, imp: Impression, wm: float, cfg: CoreConfig, out: list[Output], t: Tally) -> None:
        eid, ts = imp.event_id, imp.ts
        if eid in self.seen:
            t.duplicates += 1
            return
        self.seen[eid] = ts
        if ts < self.seen_min:
            self.seen_min = ts
        if ts <= wm:
            t.late_impressions += 1
            out.append(DeadLetter("late_impression", self.user_id, "impression", imp.to_json(),
                                  f"ts {ts} <= watermark {wm}"))
            return
        cat = imp.item.get(cfg.cross.category_key, "")
        p = _Pending(imp, dict.fromkeys(cfg.tasks, 0), -INF, ts, cat)
        self.pending[eid] = p
        key = (imp.request_id, imp.item_id)
        ids = self.pending_by_key.get(key)
        if ids is None:
            self.pending_by_key[key] = [eid]
        else:
            ids.append(eid)
        self.counters.add("imp", imp.scenario, cat, ts)
        if imp.user and (ts, eid) >= self.user_key:
            # events are values nobody changes once given to the core: the dict is shared, not copied
            self.user, self.user_key = imp.user, (ts, eid)
        if self.buffered:
            for b in self.buffered.get(key, ()):
                self._join(p, b, cfg, t)

    def on_feedback(self, fb: Feedback, wm: float, cfg: CoreConfig, out: list[Output], t: Tally) -> None:
        if fb.event_id in self.seen:
            t.duplicates += 1
            return
        self.seen[fb.event_id] = fb.ts
        if fb.ts < self.seen_min:
            self.seen_min = fb.ts
        key = (fb.request_id, fb.item_id)
        b = _Buffered(fb, False)
        for eid in self.pending_by_key.get(key, ()):
            self._join(self.pending[eid], b, cfg, t)
        if fb.ts > wm:
            self.buffered.setdefault(key, []).append(b)  # impressions may still arrive (until W >= fb.ts)
            return
        if b.matched:
            t.late_feedback += 1  # late, but its impression was still pending: joined normally
            return
        task = cfg.task_of(fb.action)
        first: _Released | None = None
        for r in self.released.get(key, ()):
            if r.ts <= fb.ts <= r.ts + cfg.attribution_window_s:
                if first is None:
                    first = r
                if task is not None:
                    t.late_positives += 1
                    out.append(LateLabel(self.user_id, r.event_id, r.ts, r.sample_id, task, fb.action,
                                         fb.event_id, fb.ts))
        if first is not None:
            # its impression was released: a behavior like any joined feedback (H/R of samples emitted from now on,
            # the published state, cross counters); samples already emitted stay as they were
            t.late_behaviors += 1
            b.matched = True
            scenario = fb.scenario if first.scenario is None else first.scenario
            self._add_behavior(fb.event_id, Behavior(fb.item_id, scenario, fb.action, fb.ts, dict(first.item)), t)
            if task is not None:
                self.counters.add(task, scenario, first.item.get(cfg.cross.category_key, ""), fb.ts)
            return
        t.late_orphans += 1
        t.orphans += 1
        out.append(DeadLetter("orphan_feedback", self.user_id, "feedback", fb.to_json(),
                              f"late (ts {fb.ts} <= watermark {wm}) and no impression to join"))

    def _join(self, p: _Pending, b: _Buffered, cfg: CoreConfig, t: Tally) -> None:
        imp, fb = p.imp, b.fb
        if not imp.ts <= fb.ts <= imp.ts + cfg.attribution_window_s:
            return
        task = cfg.task_of(fb.action)
        if task is not None:
            p.labels[task] = 1
            p.label_ts = max(p.label_ts, fb.ts)
        if b.matched:
            return  # one behavior per feedback, even if it labels several impressions
        b.matched = True
        t.joined += 1
        self._add_behavior(fb.event_id, Behavior(imp.item_id, imp.scenario, fb.action, fb.ts, dict(imp.item)), t)
        if task is not None:
            self.counters.add(task, imp.scenario, p.cat, fb.ts)

    def _add_behavior(self, eid: str, beh: Behavior, t: Tally) -> None:
        """Insert ``beh`` in (ts, event_id) order; its user's published state is due."""
        t.behavior_users.add(self.user_id)
        insort(self.behaviors, (beh.ts, eid, beh), key=lambda x: (x[0], x[1]))

    # ---------------------------------------------------------------- time
    def next_due(self, cfg: CoreConfig) -> float:
        """The smallest watermark at which :meth:`advance` has something to do."""
        due = INF
        if self.pending:
            due = min([p.ts for p in self.pending.values()]) + cfg.attribution_window_s
        if self.open is not None:
            limit = self.open.targets[0].ts + cfg.span_s
            if all(p.ts >= limit for p in self.pending.values()):  # else advance() waits for those releases
                due = min(due, limit)
        for lst in self.buffered.values():
            for b in lst:
                due = min(due, b.fb.ts)
        if self.seen:
            # prune keeps ts >= cut, so the first watermark that drops seen_min is strictly above it
            due = min(due, math.nextafter(self.seen_min + cfg.attribution_window_s + cfg.late_horizon_s, INF))
        return due

    def advance(self, wm: float, cfg: CoreConfig, out: list[Output], t: Tally) -> None:
        """Apply watermark ``wm``: release due impressions, close samples, expire buffers, prune."""
        window = cfg.attribution_window_s
        due = [p for p in self.pending.values() if p.ts + window <= wm]
        if due:
            if len(due) > 1:
                due.sort(key=_release_order)
            for p in due:
                self._release(p, cfg, out, t)
        if self.open is not None:
            limit = self.open.targets[0].ts + cfg.span_s
            if wm >= limit and all(p.ts >= limit for p in self.pending.values()):
                self._emit(cfg, out, t)
        if self.buffered:
            for key in [k for k, lst in self.buffered.items() if any(b.fb.ts <= wm for b in lst)]:
                keep = []
                for b in self.buffered[key]:
                    if b.fb.ts > wm:
                        keep.append(b)
                    elif not b.matched:
                        t.orphans += 1
                        out.append(DeadLetter("orphan_feedback", self.user_id, "feedback", b.fb.to_json(),
                                              "no impression joined before the watermark passed its ts"))
                if keep:
                    self.buffered[key] = keep
                else:
                    del self.buffered[key]
        self._prune(wm, cfg)

    def _release(self, p: _Pending, cfg: CoreConfig, out: list[Output], t: Tally) -> None:
        imp = p.imp
        del self.pending[imp.event_id]
        key = (imp.request_id, imp.item_id)
        ids = self.pending_by_key[key]
        ids.remove(imp.event_id)
        if not ids:
            del self.pending_by_key[key]
        for task, y in p.labels.items():
            d = t.positives if y else t.negatives
            d[task] = d.get(task, 0) + 1
        cross = cross_features(self.counters, cfg.cross, imp.scenario, p.cat, imp.ts)
        # the pending impression is gone after this: its dicts move into the target instead of being copied
        tgt = Target(imp.event_id, imp.request_id, imp.item_id, imp.scenario, imp.ts, imp.position, imp.item,
                     imp.context, imp.dense, cross, p.labels)
        self.released.setdefault(key, []).append(_Released(imp.event_id, imp.ts, None, imp.scenario, imp.item))
        if cfg.skip_action is not None and not any(p.labels.values()):
            end = imp.ts + cfg.attribution_window_s
            self._add_behavior(imp.event_id, Behavior(imp.item_id, imp.scenario, cfg.skip_action, end,
                                                      dict(imp.item)), t)
        if self.open is not None and imp.ts >= self.open.targets[0].ts + cfg.span_s:
            self._emit(cfg, out, t)
        if self.open is None:
            self.open = _Open([], -INF, {})
        self.open.targets.append(tgt)
        self.open.label_ts = max(self.open.label_ts, p.label_ts)
        self.open.user.update(imp.user)
        if len(self.open.targets) >= cfg.max_targets:
            self._emit(cfg, out, t)

    def _emit(self, cfg: CoreConfig, out: list[Output], t: Tally) -> None:
        op = self.open
        assert op is not None
        self.open = None
        targets = op.targets
        start, end = targets[0].ts, targets[-1].ts
        hist: list[Behavior] = []
        real: list[Behavior] = []
        for ts, _, b in self.behaviors:
            if ts < start:
                hist.append(b)
            elif ts <= end:
                real.append(b)
            else:
                break
        hist = keep_last(hist, cfg.history_len)
        sid = make_sample_id(x.event_id for x in targets)
        max_ts = max(end, op.label_ts, real[-1].ts if real else -INF)
        out.append(Sample(sid, self.user_id, targets, user=dict(op.user), history=hist, realtime=real, span_start=start,
                          span_end=end, max_event_ts=max_ts))
        t.samples += 1
        t.targets += len(targets)
        for x in targets:
            for r in self.released.get((x.request_id, x.item_id), ()):
                if r.event_id == x.event_id:
                    r.sample_id = sid

    def _prune(self, wm: float, cfg: CoreConfig) -> None:
        horizon = cfg.attribution_window_s + cfg.late_horizon_s
        cut = wm - horizon
        if self.seen and self.seen_min < cut:
            self.seen = {k: v for k, v in self.seen.items() if v >= cut}
            self.seen_min = min(self.seen.values(), default=INF)
            for key in list(self.released):  # released impressions are in seen with the same ts
                keep = [r for r in self.released[key] if r.ts >= cut]
                if keep:
                    self.released[key] = keep
                else:
                    del self.released[key]
        floor = wm
        if self.pending:
            floor = min(floor, min([p.ts for p in self.pending.values()]))
        if self.open is not None:
            floor = min(floor, self.open.targets[0].ts)
        if floor == INF or floor == -INF:
            return
        # keep every behavior with ts >= floor plus the last L before it (what keep_last(H, L) of a later sample
        # or user state can still need)
        i = 0
        n = len(self.behaviors)
        while i < n and self.behaviors[i][0] < floor:
            i += 1
        drop = i - cfg.history_len
        if drop > 0:
            del self.behaviors[:drop]
        self.counters.prune(floor, cfg.cross)

    # ---------------------------------------------------------------- persistence (worker tables)
    def to_json(self) -> dict[str, Any]:
        """The whole state as JSON-able data (the Faust worker stores it per user in a changelog-backed table)."""

        def fin(x: float) -> float | None:
            return None if x == -INF else x

        return {
            "v": 1,
            "user_id": self.user_id,
            "pending": [[p.imp.to_json(), p.labels, fin(p.label_ts)] for p in self.pending.values()],
            "buffered": [[b.fb.to_json(), b.matched] for lst in self.buffered.values() for b in lst],
            "released": [[k[0], k[1], r.event_id, r.ts, r.sample_id, r.scenario, r.item]
                         for k, lst in self.released.items() for r in lst],
            "seen": self.seen,
            "behaviors": [[ts, eid, b.to_json()] for ts, eid, b in self.behaviors],
            "counters": self.counters.to_json(),
            # open targets without their cross features: recomputed exactly on load (counters keep what they need)
            "open": None if self.open is None else {
                "targets": [{**x.to_json(), "cross": {}} for x in self.open.targets],
                "label_ts": fin(self.open.label_ts), "user": self.open.user},
            "user": self.user,
            "user_key": [fin(self.user_key[0]), self.user_key[1]],
        }

    @staticmethod
    def from_json(d: dict[str, Any], cfg: CoreConfig) -> UserMachine:
        def inf(x: float | None) -> float:
            return -INF if x is None else float(x)

        m = UserMachine(str(d["user_id"]))
        for imp_d, labels, label_ts in d["pending"]:
            imp = event_from_dict(imp_d, "impression")
            assert isinstance(imp, Impression)
            m.pending[imp.event_id] = _Pending(imp, {str(k): int(v) for k, v in labels.items()}, inf(label_ts), imp.ts,
                                               imp.item.get(cfg.cross.category_key, ""))
            m.pending_by_key.setdefault((imp.request_id, imp.item_id), []).append(imp.event_id)
        for fb_d, matched in d["buffered"]:
            fb = event_from_dict(fb_d, "feedback")
            assert isinstance(fb, Feedback)
            m.buffered.setdefault((fb.request_id, fb.item_id), []).append(_Buffered(fb, bool(matched)))
        for req, item, eid, ts, sid, *rest in d["released"]:  # [scenario, item features] since late behaviors
            scenario, feats = rest if rest else (None, {})
            m.released.setdefault((req, item), []).append(_Released(eid, float(ts), sid, scenario, dict(feats)))
        m.seen = {str(k): float(v) for k, v in d["seen"].items()}
        m.seen_min = min(m.seen.values(), default=INF)
        m.behaviors = [(float(ts), str(eid), Behavior.from_json(b)) for ts, eid, b in d["behaviors"]]
        m.counters = CrossCounters.from_json(d["counters"])
        if d["open"] is not None:
            o = d["open"]
            targets = []
            for x in o["targets"]:
                tg = Target.from_json(x)
                cross = cross_features(m.counters, cfg.cross, tg.scenario, tg.item.get(cfg.cross.category_key, ""),
                                       tg.ts)
                targets.append(replace(tg, cross=cross))
            m.open = _Open(targets, inf(o["label_ts"]), dict(o["user"]))
        m.user = dict(d["user"])
        m.user_key = (inf(d["user_key"][0]), str(d["user_key"][1]))
        return m
