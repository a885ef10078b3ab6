"""The sample contract's shape, owned in one place: L, max targets, tasks and the cross-feature layout.

The streaming worker builds its :class:`SampleSpec` from its :class:`streaming.config.CoreConfig`
(``CoreConfig.sample_spec()``) and publishes it as JSON to the compacted topic ``<samples topic>.spec``
(:func:`spec_topic`; key ``b"spec"``, see :mod:`streaming.spec_topic`). Trainers and serving read it there and
refuse a model that does not fit it. Every history trim (worker samples, published user states, request samples,
collate) goes through :func:`keep_last`. Pure: no Kafka, no Faust.

JSON (``spec_version`` 1)::

    {"spec_version": 1, "history_len": int, "max_targets": int, "tasks": [str],
     "cross": {"category_key": str, "windows_s": [float], "dims": [str], "windows": [str], "features": [str]},
     "hash": str}

``dims``, ``windows``, ``features`` and ``hash`` (:meth:`SampleSpec.fingerprint`) are derived; they are written
for readers in other languages and checked on decode.

Example:
    >>> spec = SampleSpec(history_len=64)
    >>> SampleSpec.from_json(spec.to_json()) == spec
    True
    >>> spec.trim_history(list(range(100)))[:2], keep_last([1, 2, 3], 0)
    ([36, 37], [])
    >>> spec.differences(SampleSpec())
    ['history_len 64 here, 256 there']
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from typing import Any, TypeVar

from streaming.cross import DIMS, LIFE, CrossSpec, feature_names, window_name

SAMPLE_SPEC_VERSION = 1
DEFAULT_HISTORY_LEN = 256  # L: behaviors in a sample's H and in a published user state
DEFAULT_MAX_TARGETS = 64
SPEC_KEY = b"spec"  # the key of the spec record in its topic

T = TypeVar("T")


def keep_last(seq: list[T], n: int) -> list[T]:
    """The ``n`` most recent items of ``seq`` (oldest first, so the last ``n``): ``n == 0`` keeps nothing, ``n > 0``
    keeps ``seq[-n:]`` (all of it when shorter). Always a new list. ``n < 0`` raises (``seq[-n:]`` would silently
    drop the *first* ``-n`` items instead).

    Example:
        >>> keep_last([1, 2, 3], 2), keep_last([1, 2, 3], 5), keep_last([1, 2, 3], 0)
        ([2, 3], [1, 2, 3], [])
    """
    if n < 0:
        raise ValueError(f"keep_last: n must be >= 0, got {n}")
    return seq[-n:] if n else []


def spec_topic(samples_topic: str) -> str:
    """The compacted topic holding the spec of the samples on ``samples_topic``: ``samples`` → ``samples.spec``."""
    return f"{samples_topic}.spec"


@dataclass(frozen=True)
class SampleSpec:
    """What every user-level sample of one pipeline looks like: ``history_len`` (L: at most this many behaviors in
    H, the most recent), ``max_targets`` per sample, and the cross layout (``cross``: category key, windows and
    tasks; dims and feature names derived from it by :mod:`streaming.cross`).

    Example:
        >>> s = SampleSpec(history_len=32)
        >>> s.tasks, s.cross_dims, s.cross_windows
        (('click', 'conversion'), ('scn', 'cat', 'all'), ('1h', '1d', 'life'))
        >>> len(s.cross_features), s.fingerprint() == SampleSpec(history_len=32).fingerprint()
        (45, True)
    """

    history_len: int = DEFAULT_HISTORY_LEN
    max_targets: int = DEFAULT_MAX_TARGETS
    cross: CrossSpec = field(default_factory=CrossSpec)
    version: int = SAMPLE_SPEC_VERSION

    def __post_init__(self) -> None:
        if self.history_len < 0 or self.max_targets < 1:
            raise ValueError(f"history_len must be >= 0 and max_targets >= 1, got {self.history_len}, "
                             f"{self.max_targets}")

    @property
    def tasks(self) -> tuple[str, ...]:
        return self.cross.tasks

    @property
    def cross_dims(self) -> tuple[str, ...]:
        return DIMS

    @property
    def cross_windows(self) -> tuple[str, ...]:
        """Window names, recent windows then ``life``."""
        return (*(window_name(w) for w in self.cross.windows_s), LIFE)

    @property
    def cross_features(self) -> tuple[str, ...]:
        """Every cross feature name a target carries, in :func:`streaming.cross.feature_names` order."""
        return tuple(feature_names(self.cross))

    def trim_history(self, seq: list[T]) -> list[T]:
        """``keep_last(seq, history_len)``: the L most recent of ``seq`` (oldest first)."""
        return keep_last(seq, self.history_len)

    def _body(self) -> dict[str, Any]:
        c = self.cross
        return {"spec_version": self.version, "history_len": self.history_len, "max_targets": self.max_targets,
                "tasks": list(self.tasks),
                "cross": {"category_key": c.category_key, "windows_s": list(c.windows_s),
                          "dims": list(self.cross_dims), "windows": list(self.cross_windows),
                          "features": list(self.cross_features)}}

    def fingerprint(self) -> str:
        """16 hex digits of the SHA-256 of the canonical JSON (sorted keys, without ``hash``)."""
        raw = json.dumps(self._body(), sort_keys=True, separators=(",", ":")).encode()
        return hashlib.sha256(raw).hexdigest()[:16]

    def to_json(self) -> dict[str, Any]:
        return {**self._body(), "hash": self.fingerprint()}

    def encode(self) -> bytes:
        return json.dumps(self.to_json(), sort_keys=True).encode()

    @staticmethod
    def from_json(d: dict[str, Any] | bytes | str) -> SampleSpec:
        """Decode (a dict or JSON); raises ``ValueError`` on another ``spec_version``, a malformed record, or derived
        fields (dims, windows, features, hash) that this build derives differently."""
        try:
            if isinstance(d, bytes | str):
                d = json.loads(d)
            if not isinstance(d, dict):
                raise ValueError("not a JSON object")
            if d.get("spec_version") != SAMPLE_SPEC_VERSION:
                raise ValueError(f"unsupported spec_version {d.get('spec_version')!r} "
                                 f"(this build reads {SAMPLE_SPEC_VERSION})")
            c = d["cross"]
            spec = SampleSpec(history_len=int(d["history_len"]), max_targets=int(d["max_targets"]),
                              cross=CrossSpec(category_key=str(c["category_key"]),
                                              windows_s=tuple(float(w) for w in c["windows_s"]),
                                              tasks=tuple(str(t) for t in d["tasks"])))
        except (KeyError, TypeError, ValueError, AttributeError) as e:
            raise ValueError(f"bad sample spec: {type(e).__name__}: {e}") from None
        want = spec.to_json()
        for key in ("dims", "windows", "features"):
            if key in c and list(c[key]) != want["cross"][key]:
                raise ValueError(f"bad sample spec: cross.{key} {c[key]} != {want['cross'][key]} derived here")
        if "hash" in d and d["hash"] != want["hash"]:
            raise ValueError(f"bad sample spec: hash {d['hash']!r} != {want['hash']!r} derived here")
        return spec

    def differences(self, other: SampleSpec, here: str = "here", there: str = "there") -> list[str]:
        """What differs, one short phrase per field: ``["history_len 256 here, 64 there", ...]`` (empty if equal)."""
        out = []
        for name, a, b in (("history_len", self.history_len, other.history_len),
                           ("max_targets", self.max_targets, other.max_targets),
                           ("tasks", list(self.tasks), list(other.tasks)),
                           ("cross.category_key", self.cross.category_key, other.cross.category_key),
                           ("cross.windows", list(self.cross_windows), list(other.cross_windows))):
            if a != b:
                out.append(f"{name} {a} {here}, {b} {there}")
        if not out and self != other:  # e.g. windows that round to the same name
            out.append(f"spec {self.fingerprint()} {here}, {other.fingerprint()} {there}")
        return out
