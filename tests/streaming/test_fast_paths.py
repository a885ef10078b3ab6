"""The fast paths equal their references: orjson event parsing vs :func:`streaming.reference.parse_event_reference`
(stdlib json + the full validator); orjson encoding vs the stdlib's."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from streaming.events import EventError, parse_event
from streaming.fastjson import dumps
from streaming.reference import parse_event_reference

scalars = st.one_of(st.none(), st.booleans(), st.integers(-2**70, 2**70), st.sampled_from([10**400, -10**400, 2**63, 2**64 - 1]), st.floats(allow_nan=True),
                    st.text(max_size=4), st.sampled_from(["", "x", "home"]))
maps = st.one_of(scalars, st.dictionaries(st.text(max_size=3), scalars, max_size=3), st.lists(scalars, max_size=2))
FIELDS = ("event_id", "ts", "user_id", "scenario", "request_id", "item_id", "position", "item", "context", "user",
          "dense", "action", "value")
good = {"event_id": "e", "ts": 1.5, "user_id": "u", "scenario": "s", "request_id": "r", "item_id": "i",
        "action": "click"}


def reference(raw: bytes, kind: str) -> object:
    try:
        return parse_event_reference(raw, kind)  # type: ignore[arg-type]
    except EventError as e:
        return ("error", e.reason)


@settings(max_examples=300, deadline=None)
@given(st.dictionaries(st.sampled_from(FIELDS), maps, max_size=6), st.sampled_from(["impression", "feedback"]),
       st.booleans())
def test_parse_event_equals_stdlib_reference(over: dict[str, object], kind: str, base: bool) -> None:
    obj = {**good, **over} if base else over
    raw = json.dumps(obj).encode()  # NaN/Infinity literals and >64-bit ints included: orjson refuses those
    try:
        got: object = parse_event(raw, kind)  # type: ignore[arg-type]
    except EventError as e:
        got = ("error", e.reason)
    assert got == reference(raw, kind)


@pytest.mark.parametrize(("field", "value", "reason"), [
    ("ts", "1" * 5000, "invalid_json"),  # over the stdlib's int digit limit: a dead letter, not a crash
    ("ts", "1" * 400, "bad_ts"),  # parses, but no float holds it
    ("position", "1" * 400, "bad_type"), ("position", str(2**63), "bad_type"),
    ("dense", '{"x": %s}' % ("9" * 400), "bad_type"), ("value", "9" * 400, "bad_type"),
])
def test_huge_integers_are_dead_letters_not_crashes(field: str, value: str, reason: str) -> None:
    kind = "feedback" if field == "value" else "impression"
    raw = json.dumps({**good, field: "@"}).replace('"@"', value).encode()
    for parse in (parse_event, parse_event_reference):
        with pytest.raises(EventError) as e:
            parse(raw, kind)  # type: ignore[arg-type]
        assert e.value.reason == reason, (parse.__name__, str(e.value))


@given(st.recursive(scalars, lambda c: st.one_of(st.lists(c, max_size=3), st.dictionaries(st.text(max_size=3), c,
                                                                                             max_size=3)), max_leaves=8))
def test_dumps_round_trips_like_stdlib(obj: object) -> None:
    try:
        ref = json.dumps(obj, separators=(",", ":"), ensure_ascii=False, allow_nan=False).encode()
    except (ValueError, UnicodeEncodeError):
        return  # NaN/inf and lone surrogates never reach our encoders (events and features are validated finite)
    assert json.loads(dumps(obj)) == json.loads(ref)


def test_production_code_never_imports_the_references() -> None:
    """streaming.reference is the tests' specification: no package imports it (it would be a slow path)."""
    imports = re.compile(r"^\s*(from streaming\.reference |from streaming import .*\breference\b|import streaming\.reference)",
                         re.MULTILINE)
    root = Path(__file__).resolve().parents[2]
    users = [str(p.relative_to(root)) for pkg in ("streaming", "model", "trainer", "serving", "kernels", "deploy")
             for p in (root / pkg).rglob("*.py") if imports.search(p.read_text(encoding="utf-8"))]
    assert users == []
