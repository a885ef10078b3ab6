"""The event contract: impressions and feedback as they arrive on Kafka (key = user_id, value = JSON).

This module is the single owner of the input event schema. It imports nothing from Kafka or Faust, so the
replay tool, offline evaluation and the Faust agents all parse events with the same code.

Example:
    >>> ev = parse_event(b'{"event_id":"e1","ts":1.5,"user_id":"u","scenario":"s","request_id":"r","item_id":"i"}',
    ...                  kind="impression")
    >>> ev.item_id
    'i'
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from typing import Any, Literal

import orjson

from streaming.fastjson import dumps

EventKind = Literal["impression", "feedback"]
MAX_EVENT_BYTES = 64 * 1024

# Default mapping of feedback actions to training tasks (configurable in streaming.config).
DEFAULT_ACTION_TASKS: dict[str, str] = {
    "click": "click",
    "like": "conversion",
    "order": "conversion",
    "purchase": "conversion",
}


class EventError(ValueError):
    """An event that cannot be accepted; ``reason`` is a short stable code for metrics and the dead-letter record."""

    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(f"{reason}: {detail}")
        self.reason = reason
        self.detail = detail


@dataclass(frozen=True, slots=True)
class Impression:
    """One item shown to one user in one scenario at event time ``ts`` (epoch seconds).

    Example:
        >>> Impression("e1", 10.0, "u1", "home", "r1", "i9").scenario
        'home'
    """

    event_id: str
    ts: float
    user_id: str
    scenario: str
    request_id: str
    item_id: str
    position: int | None = None
    item: dict[str, str] = field(default_factory=dict)
    context: dict[str, str] = field(default_factory=dict)
    user: dict[str, str] = field(default_factory=dict)
    dense: dict[str, float] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        d: dict[str, Any] = {
            "event_id": self.event_id,
            "ts": self.ts,
            "user_id": self.user_id,
            "scenario": self.scenario,
            "request_id": self.request_id,
            "item_id": self.item_id,
        }
        if self.position is not None:
            d["position"] = self.position
        for name in ("item", "context", "user", "dense"):
            value = getattr(self, name)
            if value:
                d[name] = dict(value)
        return d


@dataclass(frozen=True, slots=True)
class Feedback:
    """A user action (click, like, order, ...) on an impressed item, at event time ``ts``.

    Example:
        >>> Feedback("f1", 12.0, "u1", "home", "r1", "i9", "click").action
        'click'
    """

    event_id: str
    ts: float
    user_id: str
    scenario: str
    request_id: str
    item_id: str
    action: str
    value: float | None = None

    def to_json(self) -> dict[str, Any]:
        d: dict[str, Any] = {
            "event_id": self.event_id,
            "ts": self.ts,
            "user_id": self.user_id,
            "scenario": self.scenario,
            "request_id": self.request_id,
            "item_id": self.item_id,
            "action": self.action,
        }
        if self.value is not None:
            d["value"] = self.value
        return d


Event = Impression | Feedback


def _str(obj: dict[str, Any], key: str) -> str:
    if key not in obj:
        raise EventError("missing_field", f"field {key!r} is required")
    v = obj[key]
    if not isinstance(v, str) or not v:
        raise EventError("bad_type", f"field {key!r} must be a non-empty string, got {type(v).__name__}")
    return v


INT64 = 1 << 63  # positions are int64 in the trainer's tensors


def _finite(x: int | float) -> bool:
    """True for a finite float or an int that fits a float (a 400-digit int overflows, it is not an error here)."""
    try:
        return math.isfinite(x)
    except OverflowError:
        return False


def _ts(obj: dict[str, Any]) -> float:
    if "ts" not in obj:
        raise EventError("missing_field", "field 'ts' is required")
    v = obj["ts"]
    if isinstance(v, bool) or not isinstance(v, int | float):
        raise EventError("bad_type", f"field 'ts' must be a number (epoch seconds), got {type(v).__name__}")
    if not _finite(v):
        raise EventError("bad_ts", f"field 'ts' must be finite, got {str(v)[:40]}")
    return float(v)


def _str_map(obj: dict[str, Any], key: str) -> dict[str, str]:
    v = obj.get(key)
    if v is None:
        return {}
    if not isinstance(v, dict):
        raise EventError("bad_type", f"field {key!r} must be an object, got {type(v).__name__}")
    out: dict[str, str] = {}
    for k, x in v.items():
        if isinstance(x, bool) or not isinstance(x, str | int | float):
            raise EventError("bad_type", f"{key}.{k} must be a string or number, got {type(x).__name__}")
        out[str(k)] = str(x)
    return out


def _float_map(obj: dict[str, Any], key: str) -> dict[str, float]:
    v = obj.get(key)
    if v is None:
        return {}
    if not isinstance(v, dict):
        raise EventError("bad_type", f"field {key!r} must be an object of numbers, got {type(v).__name__}")
    out: dict[str, float] = {}
    for k, x in v.items():
        if isinstance(x, bool) or not isinstance(x, int | float) or not _finite(x):
            raise EventError("bad_type", f"{key}.{k} must be a finite number, got {str(x)[:40]}")
        out[str(k)] = float(x)
    return out


def event_from_dict(obj: Any, kind: EventKind) -> Event:
    """Validate a decoded JSON object as an event of ``kind``; raises :class:`EventError` with a reason."""
    if not isinstance(obj, dict):
        raise EventError("not_object", f"event must be a JSON object, got {type(obj).__name__}")
    common = (
        _str(obj, "event_id"),
        _ts(obj),
        _str(obj, "user_id"),
        _str(obj, "scenario"),
        _str(obj, "request_id"),
        _str(obj, "item_id"),
    )
    if kind == "impression":
        pos = obj.get("position")
        if pos is not None and (isinstance(pos, bool) or not isinstance(pos, int)):
            raise EventError("bad_type", f"field 'position' must be an integer, got {type(pos).__name__}")
        if pos is not None and not -INT64 <= pos < INT64:
            raise EventError("bad_type", f"field 'position' must fit 64 bits, got {str(pos)[:40]}")
        return Impression(
            *common,
            position=pos,
            item=_str_map(obj, "item"),
            context=_str_map(obj, "context"),
            user=_str_map(obj, "user"),
            dense=_float_map(obj, "dense"),
        )
    value = obj.get("value")
    if value is not None and (isinstance(value, bool) or not isinstance(value, int | float) or not _finite(value)):
        raise EventError("bad_type", f"field 'value' must be a finite number, got {str(value)[:40]}")
    return Feedback(*common, action=_str(obj, "action"), value=None if value is None else float(value))


def parse_event(raw: bytes | str, kind: EventKind, max_bytes: int = MAX_EVENT_BYTES) -> Event:
    """Decode and validate one Kafka message value; raises :class:`EventError` (never anything else)."""
    if len(raw) > max_bytes:
        raise EventError("oversized", f"payload is {len(raw)} bytes, limit {max_bytes}")
    try:
        obj = orjson.loads(raw)
    except orjson.JSONDecodeError:
        # orjson is stricter than the stdlib (NaN/Infinity literals, >64-bit ints, lone surrogates): let the
        # stdlib decide, so the accepted set and the error reasons stay exactly those of json.loads
        try:
            obj = json.loads(raw)
        except ValueError as e:  # JSONDecodeError, UnicodeDecodeError, ints over the digit limit
            raise EventError("invalid_json", str(e)) from None
        except RecursionError:
            raise EventError("invalid_json", "nesting too deep") from None
        return event_from_dict(obj, kind)
    ev = _fast_event(obj, kind)
    return ev if ev is not None else event_from_dict(obj, kind)


def _fast_str_map(v: Any) -> dict[str, str] | None:
    # a freshly decoded JSON object with only string values is already the validated map (keys are str in JSON)
    if v is None:
        return {}
    if type(v) is dict:
        for x in v.values():
            if type(x) is not str:
                return None
        return v
    return None


def _fast_float_map(v: Any) -> dict[str, float] | None:
    if v is None:
        return {}
    if type(v) is dict:
        for x in v.values():
            if type(x) is not float or not math.isfinite(x):
                return None
        return v
    return None


def _fast_event(obj: Any, kind: EventKind) -> Event | None:
    """The common case of :func:`event_from_dict` on a freshly decoded object, reusing its inner dicts.

    Returns None whenever anything is unusual; the full validator then decides (same result or same error).
    """
    if type(obj) is not dict:
        return None
    g = obj.get
    eid, ts, uid, scn, req, item_id = g("event_id"), g("ts"), g("user_id"), g("scenario"), g("request_id"), g("item_id")
    if not (type(eid) is str and eid and type(uid) is str and uid and type(scn) is str and scn
            and type(req) is str and req and type(item_id) is str and item_id):
        return None
    if type(ts) is float:
        if not math.isfinite(ts):
            return None
    elif type(ts) is int:
        ts = float(ts)
    else:
        return None
    if kind == "impression":
        pos = g("position")
        if pos is not None and (type(pos) is not int or not -INT64 <= pos < INT64):
            return None
        item, context, user, dense = (_fast_str_map(g("item")), _fast_str_map(g("context")), _fast_str_map(g("user")),
                                      _fast_float_map(g("dense")))
        if item is None or context is None or user is None or dense is None:
            return None
        return Impression(eid, ts, uid, scn, req, item_id, pos, item, context, user, dense)
    action, value = g("action"), g("value")
    if type(action) is not str or not action:
        return None
    if value is not None:
        if type(value) is int:
            value = float(value)
        elif type(value) is not float or not math.isfinite(value):
            return None
    return Feedback(eid, ts, uid, scn, req, item_id, action, value)


def encode_event(ev: Event) -> bytes:
    """The canonical wire form of an event: compact UTF-8 JSON of :meth:`to_json`, written by orjson
    (:func:`streaming.fastjson.dumps`; the same JSON values as the stdlib's, though e.g. 1e-05 is spelled 0.00001)."""
    return dumps(ev.to_json())
