"""Readable specifications of the streaming fast paths; only the tests import this module.

Each fast path is tested against its plain twin here (property tests under ``tests/streaming``):

* :func:`streaming.events.parse_event` (orjson, a type-exact fast validator, the full one as fallback) equals
  :func:`parse_event_reference` (the stdlib's ``json.loads`` and :func:`streaming.events.event_from_dict`), result
  or error reason (``tests/streaming/test_fast_paths.py``);
* :func:`streaming.cross.cross_features` (a per-spec layout plan and a cache keyed by the count vector) equals
  :func:`cross_features_reference`, a direct :func:`count` per feature, bit for bit and in key order
  (``tests/streaming/test_cross.py``).

Example:
    >>> from streaming.config import CrossSpec
    >>> from streaming.cross import CrossCounters
    >>> c = CrossCounters()
    >>> c.add("imp", "home", "shoes", 10.0)
    >>> count(c, "imp", "scn", "home", 20.0, window=None), count(c, "imp", "scn", "home", 10.0, window=None)
    (1, 0)
    >>> cross_features_reference(c, CrossSpec(), "home", "shoes", 20.0)["scn_imp_1h"]
    1.0
"""

from __future__ import annotations

import json
from bisect import bisect_left

from streaming.config import CrossSpec
from streaming.cross import CrossCounters, window_name
from streaming.events import MAX_EVENT_BYTES, Event, EventError, EventKind, event_from_dict


def parse_event_reference(raw: bytes | str, kind: EventKind, max_bytes: int = MAX_EVENT_BYTES) -> Event:
    """What :func:`streaming.events.parse_event` accepts and returns: the stdlib's JSON, then the full validator;
    raises :class:`EventError` (``oversized``, ``invalid_json`` or the validator's reason)."""
    if len(raw) > max_bytes:
        raise EventError("oversized", f"payload is {len(raw)} bytes, limit {max_bytes}")
    try:
        obj = json.loads(raw)
    except ValueError as e:  # JSONDecodeError, UnicodeDecodeError, ints over the digit limit
        raise EventError("invalid_json", str(e)) from None
    except RecursionError:
        raise EventError("invalid_json", "nesting too deep") from None
    return event_from_dict(obj, kind)


def count(counters: CrossCounters | None, kind: str, dim: str, value: str, t: float, window: float | None) -> int:
    """Number of counted ``kind`` events of ``dim``=``value`` with ts < t (and ts >= t − window when given; the
    pruned lifetime base included when not)."""
    key = f"{kind}\x1f{dim}\x1f{value}"
    lst = counters.ts.get(key, []) if counters is not None else []
    hi = bisect_left(lst, t)
    if window is None:
        return (counters.base.get(key, 0) if counters is not None else 0) + hi
    return hi - bisect_left(lst, t - window)


def cross_features_reference(counters: CrossCounters | None, spec: CrossSpec, scenario: str, category: str,
                             t: float) -> dict[str, float]:
    """:func:`streaming.cross.cross_features` written out: per dim (``scn``, ``cat``, ``all``) and window (the
    spec's, then ``life``) the impression count, then per task its count and its rate (count / max(imps, 1))."""
    out: dict[str, float] = {}
    for dim, value in (("scn", scenario), ("cat", category), ("all", "")):
        for w in (*spec.windows_s, None):
            win = "life" if w is None else window_name(w)
            n_imp = count(counters, "imp", dim, value, t, w)
            out[f"{dim}_imp_{win}"] = float(n_imp)
            for task in spec.tasks:
                n = count(counters, task, dim, value, t, w)
                out[f"{dim}_{task}_{win}"] = float(n)
                out[f"{dim}_{task}_rate_{win}"] = n / max(n_imp, 1)
    return out
