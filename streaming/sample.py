"""The user-level sample contract (MTFM multi-scenario aggregation): one user, history once, many targets.

Written by the streaming worker to the ``samples`` topic (key = user_id, value = JSON below) and by the offline
pipeline in memory; read by the trainer, serving (for parity) and evaluation. Single owner of this schema.

Schema version 1 (JSON object)::

    schema_version: 1
    sample_id:      str    sha1 of the sorted target event_ids (deterministic: a replayed sample has the same id)
    user_id:        str
    user:           {str: str}        user profile features (latest seen on the user's impressions)
    history:        [Behavior]        H: the user's behaviors strictly before the earliest target ts, oldest first,
                                      at most L (config) entries
    realtime:       [Behavior]        R: the user's behaviors with ts in [span_start, span_end], oldest first;
                                      a target may only use those with ts < its own ts (the model's mask does this)
    targets:        [Target]          T: labeled impressions, ordered by (ts, event_id)
    span_start:     float             earliest target ts
    span_end:       float             latest target ts
    max_event_ts:   float             largest event ts (impression or feedback) that contributed to this sample

    Behavior = {item_id: str, scenario: str, action: str, ts: float, item: {str: str}}
        A joined feedback action (ts = the feedback's event time) with the impressed item's features.
    Target = {event_id, request_id, item_id, scenario, ts, position: int|null, item: {str:str}, context: {str:str},
              dense: {str: float}, cross: {str: float}, labels: {task: 0|1}}
        ``cross`` are in-stream counters computed strictly from events before the target's ts.

Example:
    >>> s = Sample.from_json(Sample(sample_id="x", user_id="u", targets=[]).to_json())
    >>> s.user_id
    'u'
"""

from __future__ import annotations

import hashlib
import json
import math
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

import orjson

from streaming.fastjson import dumps

SCHEMA_VERSION = 1
TASKS: tuple[str, ...] = ("click", "conversion")


class SampleError(ValueError):
    """A sample that cannot be decoded; ``reason`` is a short stable code (``invalid_json``, ``schema_version``...)."""

    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(f"{reason}: {detail}")
        self.reason = reason
        self.detail = detail


@dataclass(frozen=True, slots=True)
class Behavior:
    """One past user action with the acted-on item's features (an H or R token)."""

    item_id: str
    scenario: str
    action: str
    ts: float
    item: dict[str, str] = field(default_factory=dict)
    # its encoded to_json, made on first use: a behavior is in every sample of its user for L behaviors (H, R)
    # and in each published UserState, and never changes (the item dict is its own copy)
    _json: bytes | None = field(default=None, init=False, repr=False, compare=False)

    def to_json(self) -> dict[str, Any]:
        return {"item_id": self.item_id, "scenario": self.scenario, "action": self.action, "ts": self.ts,
                "item": dict(self.item)}

    def encoded(self) -> bytes:
        """``dumps(self.to_json())``, cached."""
        b = self._json
        if b is None:
            b = dumps(self.to_json())
            object.__setattr__(self, "_json", b)
        return b

    @staticmethod
    def from_json(d: dict[str, Any]) -> Behavior:
        return Behavior(str(d["item_id"]), str(d["scenario"]), str(d["action"]), float(d["ts"]),
                        {str(k): str(v) for k, v in (d.get("item") or {}).items()})


@dataclass(frozen=True, slots=True)
class Target:
    """One labeled impression to score and train on (a T token)."""

    event_id: str
    request_id: str
    item_id: str
    scenario: str
    ts: float
    position: int | None = None
    item: dict[str, str] = field(default_factory=dict)
    context: dict[str, str] = field(default_factory=dict)
    dense: dict[str, float] = field(default_factory=dict)
    cross: dict[str, float] = field(default_factory=dict)
    labels: dict[str, int] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        return {
            "event_id": self.event_id, "request_id": self.request_id, "item_id": self.item_id,
            "scenario": self.scenario, "ts": self.ts, "position": self.position, "item": dict(self.item),
            "context": dict(self.context), "dense": dict(self.dense), "cross": dict(self.cross),
            "labels": dict(self.labels),
        }

    @staticmethod
    def from_json(d: dict[str, Any]) -> Target:
        pos = d.get("position")
        return Target(
            event_id=str(d["event_id"]), request_id=str(d["request_id"]), item_id=str(d["item_id"]),
            scenario=str(d["scenario"]), ts=float(d["ts"]), position=None if pos is None else int(pos),
            item={str(k): str(v) for k, v in (d.get("item") or {}).items()},
            context={str(k): str(v) for k, v in (d.get("context") or {}).items()},
            dense={str(k): float(v) for k, v in (d.get("dense") or {}).items()},
            cross={str(k): float(v) for k, v in (d.get("cross") or {}).items()},
            labels={str(k): int(v) for k, v in (d.get("labels") or {}).items()},
        )


def fragments(behaviors: list[Behavior]) -> list[orjson.Fragment]:
    """The behaviors' cached encodings as fragments orjson embeds as they are (same bytes as their to_json)."""
    return [orjson.Fragment(b._json if b._json is not None else b.encoded()) for b in behaviors]


def make_sample_id(target_event_ids: Iterable[str]) -> str:
    """Deterministic id of a sample from its impressions' event ids (order-independent)."""
    h = hashlib.sha1()
    for eid in sorted(target_event_ids):
        h.update(eid.encode())
        h.update(b"\x00")
    return h.hexdigest()


@dataclass(frozen=True, slots=True)
class Sample:
    """A user-level training sample: user features, H history, R real-time behaviors and T targets.

    Example:
        >>> t = Target("e1", "r1", "i1", "home", 5.0, labels={"click": 1, "conversion": 0})
        >>> s = Sample(sample_id=make_sample_id(["e1"]), user_id="u1", targets=[t], span_start=5.0, span_end=5.0)
        >>> Sample.decode(s.encode()) == s
        True
    """

    sample_id: str
    user_id: str
    targets: list[Target]
    user: dict[str, str] = field(default_factory=dict)
    history: list[Behavior] = field(default_factory=list)
    realtime: list[Behavior] = field(default_factory=list)
    span_start: float = 0.0
    span_end: float = 0.0
    max_event_ts: float = 0.0
    schema_version: int = SCHEMA_VERSION

    @property
    def num_targets(self) -> int:
        return len(self.targets)

    def to_json(self) -> dict[str, Any]:
        return {
            "schema_version": self.schema_version,
            "sample_id": self.sample_id,
            "user_id": self.user_id,
            "user": dict(self.user),
            "history": [b.to_json() for b in self.history],
            "realtime": [b.to_json() for b in self.realtime],
            "targets": [t.to_json() for t in self.targets],
            "span_start": self.span_start,
            "span_end": self.span_end,
            "max_event_ts": self.max_event_ts,
        }

    @staticmethod
    def from_json(d: Any) -> Sample:
        if not isinstance(d, dict):
            raise SampleError("not_object", f"sample must be a JSON object, got {type(d).__name__}")
        ver = d.get("schema_version")
        if ver != SCHEMA_VERSION:
            raise SampleError("schema_version", f"unsupported schema_version {ver!r} (this build reads {SCHEMA_VERSION})")
        try:
            s = Sample(
                sample_id=str(d["sample_id"]),
                user_id=str(d["user_id"]),
                user={str(k): str(v) for k, v in (d.get("user") or {}).items()},
                history=[Behavior.from_json(b) for b in d.get("history") or []],
                realtime=[Behavior.from_json(b) for b in d.get("realtime") or []],
                targets=[Target.from_json(t) for t in d["targets"]],
                span_start=float(d.get("span_start", 0.0)),
                span_end=float(d.get("span_end", 0.0)),
                max_event_ts=float(d.get("max_event_ts", 0.0)),
            )
        except (KeyError, TypeError, ValueError, AttributeError) as e:
            raise SampleError("bad_field", f"{type(e).__name__}: {e}") from None
        for t in s.targets:
            if not math.isfinite(t.ts):
                raise SampleError("bad_field", f"target {t.event_id} has a non-finite ts")
        return s

    def encode(self) -> bytes:
        """``dumps(self.to_json())`` without its copies: orjson writes the Behavior and Target dataclasses itself,
        fields in declaration order (= their ``to_json`` order); what orjson refuses goes through ``to_json``."""
        try:
            return orjson.dumps({
                "schema_version": self.schema_version, "sample_id": self.sample_id, "user_id": self.user_id,
                "user": self.user, "history": fragments(self.history), "realtime": fragments(self.realtime),
                "targets": self.targets,
                "span_start": self.span_start, "span_end": self.span_end, "max_event_ts": self.max_event_ts,
            })
        except TypeError:
            return dumps(self.to_json())

    @staticmethod
    def decode(raw: bytes | str) -> Sample:
        try:
            obj = json.loads(raw)
        except (UnicodeDecodeError, json.JSONDecodeError, RecursionError) as e:
            raise SampleError("invalid_json", str(e)) from None
        return Sample.from_json(obj)
