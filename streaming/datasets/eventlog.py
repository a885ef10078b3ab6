"""A user's own interaction log (CSV, TSV, Parquet, JSONL) as events, driven only by a column mapping.

Two row shapes are supported:

- **wide** (one row per impression, label columns): ``--label click=is_click --label like=rating>=5``; each label
  expression is ``ACTION=COLUMN`` (truthy: a number > 0 or ``true/yes/y/t``) or ``ACTION=COLUMN<op>NUMBER`` with
  ``op`` in ``>= > <= < == !=``. A true label becomes a :class:`~streaming.events.Feedback` with that action at
  ``ts + feedback_delay_s``.
- **long** (one row per event, an action column): ``--action-col event_type``; rows whose action is in
  ``impression_actions`` (default ``impression, view, expose, exposure, show``) become impressions, every other
  row becomes feedback with that action.

Ids: ``event_id`` from ``--event-id-col`` or ``<prefix>-<row>`` (feedback: ``-<action>`` appended); ``request_id``
from ``--request-col`` or ``<prefix>-<row>`` (wide) / ``<prefix>-<user>-<item>`` (long, so feedback finds its
impression). Timestamps (``ts_unit``): ``s``, ``ms`` or ``us`` since the epoch, ``iso`` (ISO-8601 strings; naive
ones are read as UTC) or ``auto`` (the default: numbers by magnitude, < 1e11 seconds, < 1e14 ms, < 1e17 µs, one unit
per column; otherwise ISO-8601). An explicit unit that does not fit the values (ms in a seconds column, seconds in an
ms column) is an error that names the value, its row and the unit to use.

Category: ``category_key`` (default ``category``) names the item feature the worker's ``cat_*`` cross features count
by (the worker's ``--category-key``); when the file has that column it is an item feature even if not listed.

The whole file is read and validated before any event is returned: a missing column, an unparsable timestamp or
label, an empty file or an empty id raises :class:`~streaming.datasets.DatasetError` naming the file, column and row.

Example:
    >>> m = LogMapping(user="uid", item="movie", timestamp="when", labels=(("click", "stars>=4"),))
    >>> m.label_columns()
    ['stars']
"""

from __future__ import annotations

import argparse
import json
import math
import operator
import re
import tomllib
from collections.abc import Callable
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from streaming.datasets import DatasetError, sort_events
from streaming.events import Event, Feedback, Impression

_OPS: dict[str, Callable[[Any, Any], Any]] = {
    ">=": operator.ge, "<=": operator.le, "==": operator.eq, "!=": operator.ne, ">": operator.gt, "<": operator.lt,
}
_LABEL_RE = re.compile(r"^\s*([^<>=!]+?)\s*(>=|<=|==|!=|>|<)\s*(-?[0-9.eE+-]+)\s*$")
_TRUE = {"1", "true", "yes", "y", "t"}
_FALSE = {"0", "false", "no", "n", "f", ""}
DEFAULT_IMPRESSION_ACTIONS = ("impression", "view", "expose", "exposure", "show")
TS_UNITS = ("auto", "s", "ms", "us", "iso")
# Epoch magnitudes: |v| < 1e11 reads as seconds (up to the year 5138), < 1e14 as ms, < 1e17 as µs.
_UNIT_DIV = {"s": 1.0, "ms": 1e3, "us": 1e6}  # raw value / this = epoch seconds
_UNIT_LIMIT = {"s": 1e11, "ms": 1e14, "us": 1e17}
_UNIT_NAME = {"s": "epoch seconds", "ms": "epoch milliseconds", "us": "epoch microseconds"}
# Epoch seconds of 2000-01-01 and 2100-01-01: a column of these read as ms or µs lands in January 1970.
_RECENT_S = (946_684_800.0, 4_102_444_800.0)


@dataclass(frozen=True)
class LogMapping:
    """Which columns of a log hold what (see the module docstring).

    Example:
        >>> LogMapping(user="u", item="i", timestamp="t", action="type").is_long
        True
    """

    user: str
    item: str
    timestamp: str
    scenario: str | None = None
    default_scenario: str = "default"
    request: str | None = None
    event_id: str | None = None
    position: str | None = None
    action: str | None = None
    impression_actions: tuple[str, ...] = DEFAULT_IMPRESSION_ACTIONS
    labels: tuple[tuple[str, str], ...] = ()
    user_features: tuple[str, ...] = ()
    item_features: tuple[str, ...] = ()
    context_features: tuple[str, ...] = ()
    dense_features: tuple[str, ...] = ()
    ts_unit: str = "auto"
    feedback_delay_s: float = 1.0
    id_prefix: str = "log"
    category_key: str = "category"

    def __post_init__(self) -> None:
        if self.ts_unit not in TS_UNITS:
            raise DatasetError(f"ts_unit must be one of {', '.join(TS_UNITS)}; got {self.ts_unit!r}")
        if not self.category_key.strip():
            raise DatasetError("category_key must name an item feature")
        if self.action is None and not self.labels:
            raise DatasetError("mapping needs label columns (--label ACTION=COLUMN) or an action column (--action-col)")
        if self.action is not None and self.labels:
            raise DatasetError("use either --label (wide rows) or --action-col (long rows), not both")
        for _, expr in self.labels:
            _parse_label(expr)

    @property
    def is_long(self) -> bool:
        return self.action is not None

    def label_columns(self) -> list[str]:
        return [_parse_label(expr)[0] for _, expr in self.labels]

    def required_columns(self) -> list[str]:
        cols = [self.user, self.item, self.timestamp]
        for c in (self.scenario, self.request, self.event_id, self.position, self.action):
            if c is not None:
                cols.append(c)
        cols += self.label_columns()
        cols += [*self.user_features, *self.item_features, *self.context_features, *self.dense_features]
        return list(dict.fromkeys(cols))

    @staticmethod
    def from_file(path: Path) -> LogMapping:
        """Read a mapping from TOML or JSON with the field names of this class (``labels`` as a table/object)."""
        path = Path(path)
        try:
            text = path.read_text()
            raw: dict[str, Any] = tomllib.loads(text) if path.suffix == ".toml" else json.loads(text)
        except (OSError, ValueError) as e:
            raise DatasetError(f"{path}: cannot read mapping: {e}") from None
        known = {f.name for f in fields(LogMapping)}
        unknown = sorted(set(raw) - known)
        if unknown:
            raise DatasetError(f"{path}: unknown mapping key(s) {unknown} (known: {sorted(known)})")
        for key in ("user", "item", "timestamp"):
            if key not in raw:
                raise DatasetError(f"{path}: mapping key {key!r} is required")
        labels = raw.pop("labels", {})
        if isinstance(labels, dict):
            labels = tuple((str(a), str(e)) for a, e in labels.items())
        else:
            labels = tuple(_split_label(str(x)) for x in labels)
        kw: dict[str, Any] = {k: tuple(v) if isinstance(v, list) else v for k, v in raw.items()}
        return LogMapping(labels=labels, **kw)


def _parse_label(expr: str) -> tuple[str, Callable[[pd.Series], pd.Series] | None, str]:
    """``"col>=4"`` -> (col, predicate on numeric values, op text); ``"col"`` -> (col, None, "")."""
    m = _LABEL_RE.match(expr)
    if m is None:
        if any(ch in expr for ch in "<>=!"):
            raise DatasetError(f"label expression {expr!r}: expected COLUMN or COLUMN<op>NUMBER")
        return expr.strip(), None, ""
    col, op, num = m.group(1), m.group(2), float(m.group(3))
    fn = _OPS[op]
    return col, (lambda s: fn(s, num)), op


def _split_label(spec: str) -> tuple[str, str]:
    action, sep, expr = spec.partition("=")
    if not sep or not action.strip() or not expr.strip():
        raise DatasetError(f"--label {spec!r}: expected ACTION=COLUMN or ACTION=COLUMN>=NUMBER")
    return action.strip(), expr.strip()


def read_table(path: Path) -> pd.DataFrame:
    """Read a CSV/TSV/Parquet/JSONL file into a DataFrame; empty or unreadable files raise :class:`DatasetError`."""
    path = Path(path)
    if not path.is_file():
        raise DatasetError(f"{path}: no such file")
    if path.stat().st_size == 0:
        raise DatasetError(f"{path}: file is empty")
    suffix = path.suffix.lower()
    try:
        if suffix in (".csv", ".tsv", ".txt"):
            df = pd.read_csv(path, sep="\t" if suffix == ".tsv" else ",", dtype=str, keep_default_na=False)
        elif suffix in (".parquet", ".pq"):
            df = pd.read_parquet(path)
        elif suffix in (".jsonl", ".ndjson", ".json"):
            df = pd.read_json(path, lines=True, dtype=False, convert_dates=False)
        else:
            raise DatasetError(f"{path}: unknown format {suffix!r} (use .csv, .tsv, .parquet or .jsonl)")
    except DatasetError:
        raise
    except (OSError, ValueError, pd.errors.ParserError, pd.errors.EmptyDataError) as e:
        raise DatasetError(f"{path}: cannot read: {e}") from None
    if len(df) == 0:
        raise DatasetError(f"{path}: no rows")
    return df


def _fail(path: Path, col: str, series: pd.Series, bad: np.ndarray, what: str, hint: str = "") -> DatasetError:
    i = int(np.flatnonzero(bad)[0])
    return DatasetError(f"{path}: column {col!r}: {what} {series.iloc[i]!r} at data row {i + 1} "
                        f"({int(bad.sum())} bad row(s))" + (f": {hint}" if hint else ""))


def _magnitude_unit(v: float) -> str | None:
    a = abs(v)
    return next((u for u in ("s", "ms", "us") if a < _UNIT_LIMIT[u]), None)


def _parse_ts(path: Path, col: str, s: pd.Series, unit: str) -> np.ndarray:
    """Epoch seconds of every row; an error names the first offending value, its data row and the likely fix."""
    if unit in ("auto", "iso") and pd.api.types.is_datetime64_any_dtype(s):  # e.g. a Parquet timestamp column
        t = pd.to_datetime(s, utc=True)
        bad = t.isna().to_numpy()
        if bad.any():
            raise _fail(path, col, s, bad, "missing timestamp")
        return ((t - pd.Timestamp(0, tz="UTC")) / pd.Timedelta(seconds=1)).to_numpy(dtype=float)
    num = pd.to_numeric(s, errors="coerce").to_numpy(dtype=float, na_value=np.nan)
    is_num = np.isfinite(num)
    if unit == "auto":
        # The column's majority decides epoch numbers vs ISO-8601; the first row of the minority is the bad one.
        unit = "epoch" if is_num.sum() * 2 >= len(num) else "iso"
        if unit == "epoch" and not is_num.all():
            raise _fail(path, col, s, ~is_num, "unparsable timestamp", "the column's other values are epoch numbers")
    if unit == "iso":
        parsed = pd.to_datetime(s.astype(str), errors="coerce", utc=True, format="ISO8601")
        bad = parsed.isna().to_numpy()
        if bad.any():
            hint = "these are epoch numbers: use --ts-unit auto, s, ms or us" if is_num.all() else \
                "not ISO-8601 (e.g. 2024-03-01T10:00:00Z)"
            raise _fail(path, col, s, bad, "unparsable timestamp", hint)
        return ((parsed - pd.Timestamp(0, tz="UTC")) / pd.Timedelta(seconds=1)).to_numpy(dtype=float)
    if not is_num.all():
        raise _fail(path, col, s, ~is_num, "unparsable timestamp", f"not a number ({_UNIT_NAME.get(unit, unit)})")
    units = [_magnitude_unit(float(v)) for v in num]
    if unit == "epoch":  # auto: every value's magnitude must name the same unit
        too_big = np.array([u is None for u in units])
        if too_big.any():
            raise _fail(path, col, s, too_big, "timestamp", "too large for epoch seconds, ms or µs")
        counts = {u: units.count(u) for u in set(units)}
        unit = str(max(counts, key=lambda u: (counts[u], u == "s")))
        odd = np.array([u != unit for u in units])
        if odd.any():
            other = str(units[int(np.flatnonzero(odd)[0])])
            raise _fail(path, col, s, odd, "timestamp",
                        f"looks like {_UNIT_NAME[other]} while most rows look like {_UNIT_NAME[unit]}; "
                        "a column must use one unit")
        return num / _UNIT_DIV[unit]
    too_big = np.abs(num) >= _UNIT_LIMIT[unit]
    if too_big.any():
        bigger = units[int(np.flatnonzero(too_big)[0])]
        raise _fail(path, col, s, too_big, "timestamp", f"too large for {_UNIT_NAME[unit]}" + (
            f"; it looks like {_UNIT_NAME[bigger]}: use --ts-unit {bigger} (or auto)" if bigger else ""))
    for smaller in ("s", "ms"):
        if _UNIT_DIV[smaller] >= _UNIT_DIV[unit]:
            break
        lo, hi = (x * _UNIT_DIV[smaller] for x in _RECENT_S)  # the raw values such epochs would have
        looks_smaller = (np.abs(num) >= lo) & (np.abs(num) < hi)
        if looks_smaller.all():
            raise _fail(path, col, s, looks_smaller, f"timestamp in {_UNIT_NAME[unit]}",
                        f"falls in January 1970; every value looks like {_UNIT_NAME[smaller]} of 2000-2100: "
                        f"use --ts-unit {smaller} (or auto)")
    return num / _UNIT_DIV[unit]


def _truthy(path: Path, col: str, s: pd.Series, pred: Callable[[pd.Series], pd.Series] | None) -> np.ndarray:
    if pred is not None:
        num = pd.to_numeric(s, errors="coerce")
        bad = num.isna().to_numpy()
        if bad.any():
            raise _fail(path, col, s, bad, "non-numeric label value")
        return np.asarray(pred(num), dtype=bool)
    num = pd.to_numeric(s, errors="coerce")
    text = s.astype(str).str.strip().str.lower()
    is_true = text.isin(_TRUE).to_numpy() | (num.fillna(0).to_numpy(dtype=float) > 0)
    bad = num.isna().to_numpy() & ~text.isin(_TRUE | _FALSE).to_numpy()
    if bad.any():
        raise _fail(path, col, s, bad, "label value is neither a number nor true/false")
    return is_true


def _text(path: Path, col: str, s: pd.Series, required: bool) -> list[str]:
    vals = ["" if v is None or (isinstance(v, float) and math.isnan(v)) else str(v) for v in s.tolist()]
    if required:
        bad = np.array([v.strip() == "" for v in vals])
        if bad.any():
            raise _fail(path, col, s, bad, "empty value")
    return vals


def load_log(path: Path, mapping: LogMapping) -> list[Event]:
    """The log at ``path`` as events in event-time order; validates everything before returning."""
    path = Path(path)
    df = read_table(path)
    missing = [c for c in mapping.required_columns() if c not in df.columns]
    if missing:
        raise DatasetError(f"{path}: missing column(s) {missing}; the file has {list(df.columns)}")
    n = len(df)
    users = _text(path, mapping.user, df[mapping.user], True)
    items = _text(path, mapping.item, df[mapping.item], True)
    ts = _parse_ts(path, mapping.timestamp, df[mapping.timestamp], mapping.ts_unit)
    scen = (_text(path, mapping.scenario, df[mapping.scenario], True) if mapping.scenario
            else [mapping.default_scenario] * n)
    eids = _text(path, mapping.event_id, df[mapping.event_id], True) if mapping.event_id else None
    reqs = _text(path, mapping.request, df[mapping.request], True) if mapping.request else None
    pos: list[int | None] = [None] * n
    if mapping.position:
        p = pd.to_numeric(df[mapping.position], errors="coerce")
        bad = p.isna().to_numpy() | (p.fillna(0) % 1 != 0).to_numpy()
        if bad.any():
            raise _fail(path, mapping.position, df[mapping.position], bad, "non-integer position")
        pos = [int(x) for x in p]
    dense: dict[str, np.ndarray] = {}
    for c in mapping.dense_features:
        num = pd.to_numeric(df[c], errors="coerce")
        arr = num.to_numpy(dtype=float, na_value=np.nan)
        bad = ~np.isfinite(arr)
        if bad.any():
            raise _fail(path, c, df[c], bad, "non-numeric dense feature")
        dense[c] = arr
    item_features = mapping.item_features
    if mapping.category_key in df.columns and mapping.category_key not in item_features:
        item_features = (*item_features, mapping.category_key)
    feats = {c: _text(path, c, df[c], False)
             for c in (*mapping.user_features, *item_features, *mapping.context_features)}
    labels: list[tuple[str, np.ndarray]] = []
    for action, expr in mapping.labels:
        col, pred, _ = _parse_label(expr)
        labels.append((action, _truthy(path, col, df[col], pred)))
    actions = _text(path, mapping.action, df[mapping.action], True) if mapping.action else None
    imp_actions = {a.lower() for a in mapping.impression_actions}

    def sub(cols: tuple[str, ...], r: int) -> dict[str, str]:
        return {c: feats[c][r] for c in cols if feats[c][r] != ""}

    events: list[Event] = []
    pre = mapping.id_prefix
    for r in range(n):
        u, i, t, s = users[r], items[r], float(ts[r]), scen[r]
        eid = eids[r] if eids else f"{pre}-{r}"
        if actions is not None:
            req = reqs[r] if reqs else f"{pre}-{u}-{i}"
            act = actions[r]
            if act.lower() not in imp_actions:
                events.append(Feedback(eid if eids else f"{eid}-{act}", t, u, s, req, i, act))
                continue
        else:
            req = reqs[r] if reqs else f"{pre}-{r}"
        events.append(Impression(
            event_id=eid, ts=t, user_id=u, scenario=s, request_id=req, item_id=i, position=pos[r],
            item=sub(item_features, r), context=sub(mapping.context_features, r),
            user=sub(mapping.user_features, r), dense={c: float(dense[c][r]) for c in mapping.dense_features},
        ))
        for action, hit in labels:
            if hit[r]:
                events.append(Feedback(f"{eid}-{action}", t + mapping.feedback_delay_s, u, s, req, i, action))
    return sort_events(events)


def add_mapping_args(p: argparse.ArgumentParser) -> None:
    """The ``--dataset log`` flags shared by ``streaming.replay`` and ``trainer.evaluate``: one per mapping key."""
    g = p.add_argument_group("event log (--dataset log); each flag overrides the same key of --mapping")
    g.add_argument("--path", type=Path, help="log file (.csv, .tsv, .parquet, .jsonl); for movielens / movielens-1m: data folder")
    g.add_argument("--mapping", type=Path, help="TOML/JSON mapping file with the keys of examples/mapping.toml")
    g.add_argument("--user-col", help="column with the user id (mapping key: user)")
    g.add_argument("--item-col", help="column with the item id (item)")
    g.add_argument("--ts-col", help="column with the event time (timestamp)")
    g.add_argument("--ts-unit", choices=TS_UNITS,
                   help="timestamp unit (ts_unit): epoch s, ms or us, iso (ISO-8601) or auto (by magnitude, else "
                        "ISO-8601; the default)")
    g.add_argument("--scenario-col", help="column with the scenario (scenario; default: every row in "
                                          "--default-scenario)")
    g.add_argument("--default-scenario", help="scenario of every row when there is no scenario column "
                                              "(default_scenario; default 'default')")
    g.add_argument("--request-col", help="column with the request id (request; default: derived per row / "
                                         "user+item)")
    g.add_argument("--event-id-col", help="column with a unique event id (event_id; default: derived from the row "
                                          "number)")
    g.add_argument("--position-col", help="column with the impression's integer slot/rank (position)")
    g.add_argument("--action-col", help="long logs: column with the action (action); rows with an impression "
                                        "action are impressions, the rest feedback")
    g.add_argument("--impression-actions", help="long logs: comma-separated actions that mark impression rows "
                                                f"(impression_actions; default {','.join(DEFAULT_IMPRESSION_ACTIONS)})")
    g.add_argument("--label", action="append", default=[], metavar="ACTION=EXPR",
                   help="wide logs (labels): feedback ACTION when EXPR holds, e.g. click=is_click or like=rating>=5; "
                        "repeat per action")
    for kind in ("user", "item", "context", "dense"):
        g.add_argument(f"--{kind}-features", default="",
                       help=f"comma-separated {kind} feature columns ({kind}_features)")
    g.add_argument("--category-col", help="item feature the category cross features count by (category_key; "
                                          "default 'category'); pass the same to the worker's --category-key")
    g.add_argument("--feedback-delay", type=float, help="wide logs: seconds between an impression and its feedback "
                                                        "(feedback_delay_s; default 1)")
    g.add_argument("--id-prefix", help="prefix of derived event/request ids (id_prefix; default 'log')")


# mapping key -> the add_mapping_args flag's argparse dest (labels and the *_features lists are parsed separately)
FLAG_OF_KEY = {"user": "user_col", "item": "item_col", "timestamp": "ts_col", "ts_unit": "ts_unit",
               "scenario": "scenario_col", "default_scenario": "default_scenario", "request": "request_col",
               "event_id": "event_id_col", "position": "position_col", "action": "action_col",
               "feedback_delay_s": "feedback_delay", "id_prefix": "id_prefix", "category_key": "category_col"}


def mapping_from_args(ns: argparse.Namespace) -> LogMapping:
    """Build a :class:`LogMapping` from a mapping file and/or the flags of :func:`add_mapping_args`."""
    base: dict[str, Any] = {}
    if ns.mapping is not None:
        m = LogMapping.from_file(ns.mapping)
        base = {f.name: getattr(m, f.name) for f in fields(LogMapping)}
    base.update({k: getattr(ns, dest) for k, dest in FLAG_OF_KEY.items() if getattr(ns, dest) is not None})
    if ns.impression_actions is not None:
        base["impression_actions"] = tuple(a.strip() for a in ns.impression_actions.split(",") if a.strip())
    if ns.label:
        base["labels"] = tuple(_split_label(x) for x in ns.label)
    for kind in ("user", "item", "context", "dense"):
        cols = tuple(c.strip() for c in getattr(ns, f"{kind}_features").split(",") if c.strip())
        if cols:
            base[f"{kind}_features"] = cols
    missing = [k for k in ("user", "item", "timestamp") if k not in base]
    if missing:
        flag = {"user": "--user-col", "item": "--item-col", "timestamp": "--ts-col"}
        raise DatasetError(f"--dataset log needs {', '.join(flag[k] for k in missing)} (or a --mapping file)")
    return LogMapping(**base)
