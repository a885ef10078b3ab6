"""The serving contract for per-user state, and the request-time sample builder that shares the stream's code.

The streaming worker publishes a :class:`UserState` for a user to the compacted topic ``user_state`` (key = user_id,
value = :meth:`UserState.encode`) every time it emits a sample for that user, and when a user's released behaviors
changed without a sample (at most once per processed batch per user). Serving keeps the latest per user and calls
:func:`build_request_sample` to turn (state, candidates) into a :class:`streaming.sample.Sample` with the same
history and cross-feature code as training (no training/serving skew).

JSON (version 1)::

    {"version": 1, "user_id": str, "user": {str: str}, "updated_ts": float,
     "history_len": int, "behaviors": [Behavior], "counters": {"ts": {key: [float]}, "base": {key: int}},
     "cross": {"category_key": str, "windows_s": [float], "tasks": [str]}}

Example:
    >>> s = build_request_sample(None, "u1", "home", [Candidate("i1", {"category": "c"})], {}, now=100.0)
    >>> (len(s.history), s.targets[0].cross["scn_imp_1h"])
    (0, 0.0)
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import orjson

from streaming.cross import CrossCounters, CrossSpec, cross_features
from streaming.fastjson import dumps
from streaming.sample import Behavior, Sample, Target, fragments, make_sample_id
from streaming.spec import DEFAULT_HISTORY_LEN, keep_last

USER_STATE_VERSION = 1
__all__ = ["DEFAULT_HISTORY_LEN", "USER_STATE_VERSION", "Candidate", "UserState", "UserStateError",
           "build_request_sample"]


class UserStateError(ValueError):
    """A ``user_state`` record that cannot be decoded; ``reason`` is a short code."""

    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(f"{reason}: {detail}")
        self.reason = reason
        self.detail = detail


@dataclass
class UserState:
    """What serving needs about one user: profile, last L behaviors (oldest first) and cross counters.

    Example:
        >>> st = UserState("u1", behaviors=[Behavior("i1", "home", "click", 5.0)])
        >>> UserState.from_json(st.encode()).behaviors[0].item_id
        'i1'
    """

    user_id: str
    user: dict[str, str] = field(default_factory=dict)
    behaviors: list[Behavior] = field(default_factory=list)
    counters: CrossCounters = field(default_factory=CrossCounters)
    cross: CrossSpec = field(default_factory=CrossSpec)
    history_len: int = DEFAULT_HISTORY_LEN
    updated_ts: float = 0.0
    version: int = USER_STATE_VERSION

    def to_json(self) -> dict[str, Any]:
        return {
            "version": self.version,
            "user_id": self.user_id,
            "user": dict(self.user),
            "updated_ts": self.updated_ts,
            "history_len": self.history_len,
            "behaviors": [b.to_json() for b in self.behaviors],
            "counters": self.counters.to_json(),
            "cross": {"category_key": self.cross.category_key, "windows_s": list(self.cross.windows_s),
                      "tasks": list(self.cross.tasks)},
        }

    def encode(self) -> bytes:
        """``dumps(self.to_json())`` without copying behaviors and counters (orjson writes the Behavior dataclasses
        in their ``to_json`` field order); what orjson refuses goes through ``to_json``."""
        c = self.cross
        try:
            return orjson.dumps({
                "version": self.version, "user_id": self.user_id, "user": self.user, "updated_ts": self.updated_ts,
                "history_len": self.history_len, "behaviors": fragments(self.behaviors),
                "counters": {"ts": self.counters.ts, "base": self.counters.base},
                "cross": {"category_key": c.category_key, "windows_s": c.windows_s, "tasks": c.tasks},
            })
        except TypeError:
            return dumps(self.to_json())

    @staticmethod
    def from_json(d: dict[str, Any] | bytes | str) -> UserState:
        """Decode from a dict or from JSON bytes/str; raises :class:`UserStateError`."""
        if isinstance(d, bytes | str):
            try:
                d = json.loads(d)
            except (UnicodeDecodeError, json.JSONDecodeError, RecursionError) as e:
                raise UserStateError("invalid_json", str(e)) from None
        if not isinstance(d, dict):
            raise UserStateError("not_object", f"user state must be a JSON object, got {type(d).__name__}")
        if d.get("version") != USER_STATE_VERSION:
            raise UserStateError("version", f"unsupported version {d.get('version')!r}")
        try:
            c = d.get("cross") or {}
            spec = CrossSpec(category_key=str(c.get("category_key", "category")),
                             windows_s=tuple(float(w) for w in c.get("windows_s", CrossSpec().windows_s)),
                             tasks=tuple(str(x) for x in c.get("tasks", CrossSpec().tasks)))
            return UserState(
                user_id=str(d["user_id"]),
                user={str(k): str(v) for k, v in (d.get("user") or {}).items()},
                behaviors=[Behavior.from_json(b) for b in d.get("behaviors") or []],
                counters=CrossCounters.from_json(d.get("counters") or {}),
                cross=spec,
                history_len=int(d.get("history_len", DEFAULT_HISTORY_LEN)),
                updated_ts=float(d.get("updated_ts", 0.0)),
            )
        except (KeyError, TypeError, ValueError, AttributeError) as e:
            raise UserStateError("bad_field", f"{type(e).__name__}: {e}") from None


@dataclass(frozen=True)
class Candidate:
    """One item to score in a request: its categorical features, extra context and dense features."""

    item_id: str
    item: dict[str, str] = field(default_factory=dict)
    context: dict[str, str] = field(default_factory=dict)
    dense: dict[str, float] = field(default_factory=dict)


def build_request_sample(state: UserState | None, user_id: str, scenario: str, candidates: Sequence[Candidate],
                         context: dict[str, str], now: float, *, cross: CrossSpec | None = None) -> Sample:
    """The serving-time user-level sample: H = the user's last L behaviors before ``now``, R empty, one target per
    candidate at ts ``now`` with cross features from the same :func:`streaming.cross.cross_features` as in-stream.

    ``state=None`` is a cold start (empty history, zero counters). ``cross`` overrides the spec for cold starts
    (a known state carries the spec the worker used). Labels are empty; ``request_id`` comes from
    ``context["request_id"]`` when present.
    """
    spec = state.cross if state is not None else (cross or CrossSpec())
    history: list[Behavior] = []
    counters = None
    user: dict[str, str] = {}
    if state is not None:
        history = [b for b in state.behaviors if b.ts < now]
        if state.history_len >= 0:  # a (malformed) negative L keeps every behavior
            history = keep_last(history, state.history_len)
        counters = state.counters
        user = dict(state.user)
    request_id = context.get("request_id", "")
    targets = []
    # Every candidate shares (counters, scenario, now): its cross features depend only on its category.
    cross_by_cat: dict[str, dict[str, float]] = {}
    for i, c in enumerate(candidates):
        cat = c.item.get(spec.category_key, "")
        feats = cross_by_cat.get(cat)
        if feats is None:
            feats = cross_by_cat[cat] = cross_features(counters, spec, scenario, cat, now)
        targets.append(Target(
            event_id=f"req:{user_id}:{now!r}:{i}:{c.item_id}", request_id=request_id, item_id=c.item_id,
            scenario=scenario, ts=now, position=None, item=dict(c.item), context={**context, **c.context},
            dense=dict(c.dense),
            cross=feats,  # shared by the candidates of one category (read-only; collate memoises on it)
            labels={}))
    return Sample(make_sample_id(t.event_id for t in targets), user_id, targets, user=user, history=history,
                  realtime=[], span_start=now, span_end=now, max_event_ts=now)
