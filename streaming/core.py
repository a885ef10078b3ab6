"""The pure streaming core facade: events in, user-level samples (and corrections / dead letters) out.

:class:`StreamCore` is what the Faust worker runs per input partition, and what the replay tool and offline
evaluation run unchanged (:func:`run_offline`). It imports no Kafka or Faust.

Watermark: ``W = max(min(max impression ts, max feedback ts) − allowed_lateness, forced)``, where ``forced`` is the
largest value given to :meth:`StreamCore.on_watermark` (e.g. by a driver that knows a stream is idle). Taking the
minimum over the two input streams keeps the worker correct when it reads one topic ahead of the other. Nothing is
released before both streams have been seen (or a watermark is forced, or :meth:`StreamCore.flush_all`).

Late policy (no silent loss, all counted in :class:`CoreCounters` and surfaced as outputs or state):

- impression with ts ≤ W on arrival → :class:`streaming.outputs.DeadLetter` ``late_impression`` (its window and
  its user's sample grouping may already be closed; admitting it could leak the future into H);
- feedback with ts ≤ W on arrival (each counted in exactly one of ``late_feedback``, ``late_behaviors``,
  ``late_orphans``):

  - joins a still-pending impression → a normal join (``late_feedback``);
  - else joins an already released impression (same request_id and item_id, ts in its window) → a history
    behavior of the user like any joined feedback, whatever its action (``late_behaviors``): in the published
    user state and in H/R of samples emitted from then on; samples already emitted are never changed. A mapped
    action also gives one :class:`streaming.outputs.LateLabel` correction per such impression (``late_positives``);
  - else → DeadLetter ``orphan_feedback`` (``late_orphans``, and ``orphans``);
- feedback never joined by the time W passes its ts → DeadLetter ``orphan_feedback`` (``orphans``);
- duplicate event_id (remembered for attribution window + ``late_horizon_s`` of event time) → dropped, counted
  (``duplicates``).

Example:
    >>> from streaming.events import Feedback, Impression
    >>> evs = [Impression("i1", 0.0, "u1", "home", "r1", "a"), Impression("i2", 1.0, "u1", "feed", "r2", "b"),
    ...        Feedback("f1", 2.0, "u1", "home", "r1", "a", "click")]
    >>> [s] = run_offline(evs, CoreConfig())
    >>> [(t.event_id, t.labels["click"]) for t in s.targets]
    [('i1', 1), ('i2', 0)]
"""

from __future__ import annotations

import copy
import heapq
import math
from collections.abc import Iterable
from dataclasses import dataclass, fields
from typing import Any

from streaming.config import CoreConfig
from streaming.cross import CrossCounters
from streaming.events import Event, Impression
from streaming.join import JoinCounts, Tally, UserMachine
from streaming.outputs import DeadLetter, LateLabel, Output
from streaming.sample import Sample
from streaming.spec import keep_last
from streaming.user_state import UserState

__all__ = ["CoreConfig", "CoreCounters", "DeadLetter", "LateLabel", "Output", "StreamCore", "run_offline"]

INF = math.inf


@dataclass
class CoreCounters(JoinCounts):
    """Totals since the core was created (not persisted: the worker exports them as Prometheus counters)."""

    impressions: int = 0
    feedback: int = 0


class StreamCore:
    """Join + history + cross features + aggregation for the users of one partition (or one offline run).

    Example:
        >>> core = StreamCore(CoreConfig(attribution_window_s=10.0, allowed_lateness_s=0.0))
        >>> from streaming.events import Feedback, Impression
        >>> core.on_event(Impression("i1", 0.0, "u1", "home", "r1", "a"))
        []
        >>> core.on_event(Feedback("f1", 5.0, "u1", "home", "r1", "a", "click"))  # W = min(0, 5) = 0
        []
        >>> core.on_event(Feedback("f2", 99.0, "u2", "home", "r9", "z", "like"))  # W = 0 still
        []
        >>> core.on_event(Impression("i2", 20.0, "u1", "feed", "r2", "b"))  # W = 20: i1 released (sample open)
        []
        >>> [type(o).__name__ for o in core.flush_all()]  # u1's sample, then u2's orphan feedback
        ['Sample', 'DeadLetter']
        >>> core.counters.positives
        {'click': 1}
    """

    def __init__(self, config: CoreConfig | None = None) -> None:
        self.config = config or CoreConfig()
        self.users: dict[str, UserMachine] = {}
        self.max_ts = {"impression": -INF, "feedback": -INF}
        self.forced = -INF
        self._wm = -INF
        self._heap: list[tuple[float, str]] = []
        self._tally = Tally()
        self._in = {"impression": 0, "feedback": 0}
        self.dirty: set[str] = set()  # users changed since the last take_dirty() (the worker persists them)

    # ------------------------------------------------------------------ inputs
    @property
    def watermark(self) -> float:
        return self._wm

    def on_event(self, ev: Event) -> list[Output]:
        """Apply one event, then advance the watermark; returns what became final."""
        out: list[Output] = []
        self._apply(ev, out)
        self._advance(out)
        return out

    def on_events(self, events: Iterable[Event]) -> list[Output]:
        """Apply a batch, each against the watermark as of the batch start, then advance once (faster)."""
        out: list[Output] = []
        for ev in events:
            self._apply(ev, out)
        self._advance(out)
        return out

    def on_watermark(self, ts: float) -> list[Output]:
        """Force the watermark to at least ``ts`` (a driver that knows no event ≤ ts will come)."""
        out: list[Output] = []
        if ts > self.forced:
            self.forced = ts
            self._advance(out)
        return out

    def flush_all(self) -> list[Output]:
        """End of stream: release every pending impression and emit every open sample (users in id order)."""
        out: list[Output] = []
        self.forced = INF
        self._wm = INF
        self._heap.clear()
        for uid in sorted(self.users):
            m = self.users[uid]
            m.advance(INF, self.config, out, self._tally)
            m._sched = INF
            self.dirty.add(uid)
        return out

    def _apply(self, ev: Event, out: list[Output]) -> None:
        cfg = self.config
        m = self.users.get(ev.user_id)
        if m is None:
            m = self.users[ev.user_id] = UserMachine(ev.user_id)
        self.dirty.add(ev.user_id)
        if isinstance(ev, Impression):
            self._in["impression"] += 1
            m.on_impression(ev, self._wm, cfg, out, self._tally)
            due = ev.ts + cfg.attribution_window_s
            if ev.ts > self.max_ts["impression"]:
                self.max_ts["impression"] = ev.ts
        else:
            self._in["feedback"] += 1
            m.on_feedback(ev, self._wm, cfg, out, self._tally)
            due = ev.ts
            if ev.ts > self.max_ts["feedback"]:
                self.max_ts["feedback"] = ev.ts
        if due < m._sched:
            m._sched = due
            heapq.heappush(self._heap, (due, ev.user_id))

    def _advance(self, out: list[Output]) -> None:
        cfg = self.config
        wm = max(min(self.max_ts.values()) - cfg.allowed_lateness_s, self.forced)
        if wm <= self._wm:
            return
        self._wm = wm
        heap = self._heap
        while heap and heap[0][0] <= wm:
            due, uid = heapq.heappop(heap)
            m = self.users.get(uid)
            if m is None or m._sched != due:
                continue  # stale entry
            m.advance(wm, cfg, out, self._tally)
            self.dirty.add(uid)
            nxt = m.next_due(cfg)
            m._sched = nxt
            if nxt < INF:
                heapq.heappush(heap, (nxt, uid))

    # ------------------------------------------------------------------ outputs / state
    @property
    def counters(self) -> CoreCounters:
        counts = {f.name: copy.copy(getattr(self._tally, f.name)) for f in fields(JoinCounts)}
        return CoreCounters(**counts, impressions=self._in["impression"], feedback=self._in["feedback"])

    def take_dirty(self) -> set[str]:
        """Users changed since the last call (and forget them)."""
        d, self.dirty = self.dirty, set()
        return d

    def take_behavior_users(self) -> set[str]:
        """Users that gained a behavior since the last call (and forget them)."""
        d = self._tally.behavior_users
        self._tally.behavior_users = set()
        return d

    def export_user_state(self, user_id: str) -> UserState | None:
        """The serving view of a user: profile, last L known behaviors and cross counters (None if unknown)."""
        m = self.users.get(user_id)
        return None if m is None else self._user_state(m, copy_state=True)

    def encode_user_state(self, user_id: str) -> bytes | None:
        """``export_user_state(user_id).encode()`` without copying the user's counters and profile first (the
        state is encoded at once, before the core changes again)."""
        m = self.users.get(user_id)
        return None if m is None else self._user_state(m, copy_state=False).encode()

    def _user_state(self, m: UserMachine, copy_state: bool) -> UserState:
        L = self.config.history_len
        behaviors = [b for _, _, b in keep_last(m.behaviors, L)]
        latest = max(m.user_key[0], behaviors[-1].ts if behaviors else -INF)
        counters, user = m.counters, m.user
        if copy_state:
            counters = CrossCounters({k: v[:] for k, v in counters.ts.items()}, counters.base.copy(), counters.lo)
            user = dict(user)
        return UserState(m.user_id, user, behaviors, counters, self.config.cross, L,
                         latest if math.isfinite(latest) else 0.0)

    def user_to_json(self, user_id: str) -> dict[str, Any] | None:
        m = self.users.get(user_id)
        return None if m is None else m.to_json()

    def meta_to_json(self) -> dict[str, Any]:
        """Partition-level state (stream maxima and forced watermark), JSON-able (±inf as None)."""

        def fin(x: float) -> float | None:
            return x if math.isfinite(x) else None

        return {"v": 1, "max_imp": fin(self.max_ts["impression"]), "max_fb": fin(self.max_ts["feedback"]),
                "forced": fin(self.forced)}

    def restore(self, meta: dict[str, Any] | None, users: Iterable[dict[str, Any]]) -> list[Output]:
        """Load persisted state (from :meth:`meta_to_json` and :meth:`user_to_json`) into an empty core.

        Returns what the restored watermark makes final (normally nothing)."""
        if meta is not None:
            def val(x: float | None) -> float:
                return -INF if x is None else float(x)

            self.max_ts = {"impression": val(meta.get("max_imp")), "feedback": val(meta.get("max_fb"))}
            self.forced = val(meta.get("forced"))
        for d in users:
            m = UserMachine.from_json(d, self.config)
            self.users[m.user_id] = m
            nxt = m.next_due(self.config)
            m._sched = nxt
            if nxt < INF:
                heapq.heappush(self._heap, (nxt, m.user_id))
        out: list[Output] = []
        self._wm = -INF
        self._advance(out)
        return out


def run_offline(events: Iterable[Event], config: CoreConfig | None = None) -> list[Sample]:
    """Feed ``events`` in the given order to one :class:`StreamCore`, then :meth:`~StreamCore.flush_all`.

    Returns the samples in emission order (corrections and dead letters are dropped; use :class:`StreamCore`
    directly to see them).
    """
    core = StreamCore(config)
    out: list[Output] = []
    for ev in events:
        out.extend(core.on_event(ev))
    out.extend(core.flush_all())
    return [o for o in out if isinstance(o, Sample)]
