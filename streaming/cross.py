"""In-stream cross features: a user's counts and rates per scenario, per item category and overall.

One implementation serves both sides: the streaming core calls :func:`cross_features` for each released target
(as of the target's ts) and serving calls it for each candidate (as of the request time), on the counters carried
in :class:`streaming.user_state.UserState`. Only events with ts strictly before ``t`` are counted, so a target never
sees its own future (or itself).

What is counted (per user): accepted, non-duplicate impressions (kind ``imp``) at their ts, and joined feedback
(behaviors) per task (kind = task name, e.g. ``click``) at the feedback's ts.

Feature names: ``{dim}_{kind}_{window}`` and ``{dim}_{task}_rate_{window}`` (= task count / max(imp count, 1)),
with dim ∈ {``scn`` (the target's scenario), ``cat`` (the item's category), ``all``} and window ∈ the spec's
windows (``1h``, ``1d``, ...) plus ``life``. Raw counts (not logged): the feature spec decides the transform.

Example:
    >>> c = CrossCounters()
    >>> c.add("imp", "home", "shoes", 10.0)
    >>> c.add("click", "home", "shoes", 12.0)
    >>> f = cross_features(c, CrossSpec(), "home", "shoes", 20.0)
    >>> f["scn_imp_1h"], f["cat_click_life"], f["all_click_rate_1h"]
    (1.0, 1.0, 1.0)
    >>> cross_features(c, CrossSpec(), "home", "shoes", 11.0)["scn_click_life"]
    0.0
"""

from __future__ import annotations

from bisect import bisect_left, insort
from dataclasses import dataclass, field
from typing import Any

from streaming.config import CrossSpec

_DIMS = ("scn", "cat", "all")


def window_name(w: float) -> str:
    """``3600.0`` → ``1h``, ``86400.0`` → ``1d``, ``1800.0`` → ``30m``, ``45.0`` → ``45s``."""
    for unit, sec in (("d", 86400.0), ("h", 3600.0), ("m", 60.0)):
        if w >= sec and w % sec == 0:
            return f"{int(w // sec)}{unit}"
    return f"{w:g}s"


def feature_names(spec: CrossSpec) -> list[str]:
    """All cross feature names for ``spec``, in a stable order."""
    wins = [window_name(w) for w in spec.windows_s] + ["life"]
    names: list[str] = []
    for dim in _DIMS:
        for win in wins:
            names.append(f"{dim}_imp_{win}")
            for task in spec.tasks:
                names.append(f"{dim}_{task}_{win}")
                names.append(f"{dim}_{task}_rate_{win}")
    return names


@dataclass
class CrossCounters:
    """Per-user event-time counters: sorted ts lists per (kind, dim, value) plus pruned lifetime bases.

    Key format ``"{kind}\\x1f{dim}\\x1f{value}"``. ``prune(floor, spec)`` folds entries older than
    ``floor − max window`` into ``base``; queries at ``t ≥ floor`` stay exact.
    """

    ts: dict[str, list[float]] = field(default_factory=dict)
    base: dict[str, int] = field(default_factory=dict)

    @staticmethod
    def _key(kind: str, dim: str, value: str) -> str:
        return f"{kind}\x1f{dim}\x1f{value}"

    def add(self, kind: str, scenario: str, category: str, ts: float) -> None:
        d = self.ts
        for key in _keys((kind,), scenario, category):
            lst = d.get(key[0])
            if lst is None:
                d[key[0]] = [ts]
            elif lst[-1] <= ts:
                lst.append(ts)
            else:
                insort(lst, ts)

    def count(self, kind: str, dim: str, value: str, t: float, window: float | None) -> int:
        """Number of ``kind`` events with ts < t (and ts >= t − window when given)."""
        key = self._key(kind, dim, value)
        lst = self.ts.get(key)
        hi = bisect_left(lst, t) if lst else 0
        if window is None:
            return self.base.get(key, 0) + hi
        lo = bisect_left(lst, t - window) if lst else 0
        return hi - lo

    def prune(self, floor: float, spec: CrossSpec) -> None:
        cut = floor - spec.max_window_s
        for key, lst in list(self.ts.items()):
            i = bisect_left(lst, cut)
            if i:
                self.base[key] = self.base.get(key, 0) + i
                del lst[:i]
                if not lst:
                    del self.ts[key]

    def to_json(self) -> dict[str, Any]:
        return {"ts": {k: list(v) for k, v in self.ts.items()}, "base": dict(self.base)}

    @staticmethod
    def from_json(d: dict[str, Any]) -> CrossCounters:
        return CrossCounters(ts={str(k): [float(x) for x in v] for k, v in (d.get("ts") or {}).items()},
                             base={str(k): int(v) for k, v in (d.get("base") or {}).items()})


_LAYOUTS: dict[CrossSpec, tuple[tuple[str, ...], tuple[float, ...], tuple[str, ...]]] = {}
# (kinds, scenario, category) -> the 3 dims' counter keys per kind, dims outer: built once per distinct triple
_KEYS: dict[tuple[tuple[str, ...], str, str], tuple[tuple[str, ...], ...]] = {}


def _layout(spec: CrossSpec) -> tuple[tuple[str, ...], tuple[float, ...], tuple[str, ...]]:
    # (every feature name in output order, the recent windows in seconds, the counted kinds) — cached per spec
    lay = _LAYOUTS.get(spec)
    if lay is None:
        wins = [window_name(w) for w in spec.windows_s] + ["life"]
        names = []
        for dim in _DIMS:
            for win in wins:
                names.append(f"{dim}_imp_{win}")
                for task in spec.tasks:
                    names += [f"{dim}_{task}_{win}", f"{dim}_{task}_rate_{win}"]
        lay = _LAYOUTS[spec] = (tuple(names), tuple(spec.windows_s), ("imp", *spec.tasks))
    return lay


def _keys(kinds: tuple[str, ...], scenario: str, category: str) -> tuple[tuple[str, ...], ...]:
    k = (kinds, scenario, category)
    keys = _KEYS.get(k)
    if keys is None:
        if len(_KEYS) > 100_000:  # scenarios x categories is small in practice; bound it anyway
            _KEYS.clear()
        keys = _KEYS[k] = tuple(tuple(f"{kind}\x1f{dim}\x1f{value}" for kind in kinds)
                                for dim, value in (("scn", scenario), ("cat", category), ("all", "")))
    return keys


def cross_features(counters: CrossCounters | None, spec: CrossSpec, scenario: str, category: str,
                   t: float) -> dict[str, float]:
    """The cross features of one target/candidate in ``scenario`` with item ``category`` at time ``t``.

    Uses only counted events with ts < t. ``counters=None`` (cold start) gives all zeros.
    """
    ts = counters.ts if counters is not None else {}
    base = counters.base if counters is not None else {}
    names, wins, kinds = _layout(spec)
    starts = [t - w for w in wins]
    vals: list[float] = []
    ext = vals.extend
    app = vals.append
    for dim_keys in _keys(kinds, scenario, category):
        # per kind: counts per recent window, then the lifetime count (pruned base + ts < t)
        cols = []
        for key in dim_keys:
            lst = ts.get(key)
            b = base.get(key, 0) if base else 0
            if lst:
                hi = bisect_left(lst, t)
                col = [hi - bisect_left(lst, s) for s in starts]
                col.append(b + hi)
            else:
                col = [0] * len(starts)
                col.append(b)
            cols.append(col)
        imp, tasks = cols[0], cols[1:]
        for j, n_imp in enumerate(imp):
            denom = n_imp if n_imp > 1 else 1
            app(float(n_imp))
            for c in tasks:
                n = c[j]
                ext((float(n), n / denom))
    return dict(zip(names, vals, strict=True))
