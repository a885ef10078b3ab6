"""The published JSON Schemas (streaming/schemas) against every record the pure core produces, plus negative cases
and a check that every dead-letter reason in the code has its schema (and every schema a reason)."""

from __future__ import annotations

import copy
import json
import re
from collections import Counter
from pathlib import Path
from typing import Any

import jsonschema
import pytest

from streaming import schemas
from streaming.app import _dead_raw
from streaming.config import CoreConfig
from streaming.core import StreamCore, run_offline
from streaming.events import Feedback, Impression, encode_event
from streaming.fastjson import dumps
from streaming.outputs import DeadLetter, LateLabel
from streaming.sample import Sample
from tests.streaming.gen import GenSpec, generate

REPO = Path(__file__).resolve().parents[2]
# lateness far below the arrival disorder: late impressions, late feedback (late positives, late orphans) happen
CFG = CoreConfig(attribution_window_s=1800.0, allowed_lateness_s=20.0, history_len=16, max_targets=8, span_s=3600.0,
                 late_horizon_s=1e9, skip_action="skip")
SPEC = GenSpec(users=12, scenarios=3, items=30, impressions=800, horizon=40_000.0, jitter=200.0, dup_rate=0.05,
               fb_rate=0.6)


@pytest.fixture(scope="module")
def produced() -> dict[str, list[dict[str, Any]]]:
    """Every record kind the core emits, as the worker writes it (decoded JSON), grouped by schema name."""
    _, arrival = generate(7, SPEC)
    core = StreamCore(CFG)
    out = []
    for ev in arrival:
        out.extend(core.on_event(ev))
    out.extend(core.flush_all())
    samples = [o for o in out if isinstance(o, Sample)]
    assert samples == run_offline(arrival, CFG)  # the records below are exactly run_offline's (plus its side output)
    by: dict[str, list[dict[str, Any]]] = {}
    for ev in arrival:
        by.setdefault("impression" if isinstance(ev, Impression) else "feedback", []).append(
            json.loads(encode_event(ev)))
    by["sample"] = [json.loads(s.encode()) for s in samples]
    for o in out:
        if isinstance(o, LateLabel | DeadLetter):
            rec = json.loads(dumps(o.to_json()))  # what the worker writes to the deadletter topic
            by.setdefault(schemas.deadletter_schema(rec), []).append(rec)
    states = [core.encode_user_state(u) for u in sorted(core.users)]
    by["user_state"] = [json.loads(s) for s in states if s is not None]
    return by


def test_every_record_of_a_messy_stream_fits_its_schema(produced: dict[str, list[dict[str, Any]]]) -> None:
    counts = Counter({name: len(recs) for name, recs in produced.items()})
    for name in ("impression", "feedback", "sample", "user_state", "deadletter.late_impression",
                 "deadletter.orphan_feedback", "deadletter.late_positive"):
        assert counts[name] > 0, f"the generated stream produced no {name} record: {counts}"
    late = produced["deadletter.late_positive"]  # both forms: the sample emitted already, or not yet
    assert any(r["sample_id"] is None for r in late) and any(r["sample_id"] for r in late)
    assert any(b["action"] == "skip" for r in produced["sample"] for b in r["history"] + r["realtime"])
    for name, recs in produced.items():
        v = schemas.validator(name)
        for rec in recs:
            errors = list(v.iter_errors(rec))
            assert not errors, f"{name}: {errors[0].message} in {json.dumps(rec)[:500]}"


def test_worker_bad_input_records_fit_their_reason_schemas() -> None:
    """The worker's own record builder, for every bad-input reason (null_value carries no value)."""
    for reason in ("invalid_json", "not_object", "missing_field", "bad_type", "bad_ts", "oversized"):
        rec = json.loads(_dead_raw(reason, "why", "impressions", 2, 41, b"u1", b"{oops"))
        assert schemas.deadletter_schema(rec) == f"deadletter.{reason}"
        schemas.validate(f"deadletter.{reason}", rec)
    rec = json.loads(_dead_raw("null_value", "message has no value", "feedback", 0, 7, None, None))
    schemas.validate("deadletter.null_value", rec)
    with pytest.raises(jsonschema.ValidationError):  # a reason fixes its schema: a value where none can be
        schemas.validate("deadletter.null_value", {**rec, "value_b64": "eA=="})
    with pytest.raises(jsonschema.ValidationError):
        schemas.validate("deadletter.invalid_json", rec)  # wrong reason, and no value


def _examples(produced: dict[str, list[dict[str, Any]]]) -> dict[str, dict[str, Any]]:
    ex = {name: recs[0] for name, recs in produced.items()}
    ex["deadletter.bad_type"] = json.loads(_dead_raw("bad_type", "why", "impressions", 0, 3, b"k", b"{}"))
    ex["deadletter.trainer.bad_field"] = {"source": "trainer", "topic": "samples", "reason": "bad_field",
                                          "detail": "KeyError: 'targets'", "value": "{}"}
    ex["snapshot_announcement"] = {"version": 3, "path": "/runs/snapshots/snapshot-000000000003",
                                   "created_at": 1.7e9, "max_event_ts": 8.9e8, "samples_trained": 96,
                                   "max_produce_ts": 1.7e9 - 2}
    return ex


# Input events are an open contract (the parser ignores unknown fields); every other record is closed.
OPEN = {"impression", "feedback"}


def test_a_record_with_a_missing_or_ill_typed_field_fails(produced: dict[str, list[dict[str, Any]]]) -> None:
    examples = _examples(produced)
    assert {"sample", "user_state", "deadletter.late_positive", "deadletter.orphan_feedback",
            "deadletter.late_impression", "impression", "feedback"} <= set(examples)
    for name, rec in examples.items():
        schemas.validate(name, rec)
        schema = schemas.load(name)
        required = schema.get("required") or schemas.load(schema["allOf"][0]["$ref"][: -len(".schema.json")])[
            "required"]
        assert required, name
        for key in required:
            broken = copy.deepcopy(rec)
            del broken[key]
            with pytest.raises(jsonschema.ValidationError, match=repr(key)):
                schemas.validate(name, broken)
            broken[key] = [[]]  # present, of no field's type
            with pytest.raises(jsonschema.ValidationError):
                schemas.validate(name, broken)
        extra = {**rec, "unexpected_field": 1}
        if name in OPEN:
            schemas.validate(name, extra)
        else:
            with pytest.raises(jsonschema.ValidationError, match="unexpected_field"):
                schemas.validate(name, extra)


def test_nested_shapes_are_checked(produced: dict[str, list[dict[str, Any]]]) -> None:
    sample = copy.deepcopy(next(s for s in produced["sample"] if s["history"]))
    sample["history"][0]["ts"] = "yesterday"
    with pytest.raises(jsonschema.ValidationError):
        schemas.validate("sample", sample)
    sample = copy.deepcopy(produced["sample"][0])
    sample["targets"][0]["labels"]["click"] = 2
    with pytest.raises(jsonschema.ValidationError):
        schemas.validate("sample", sample)
    with pytest.raises(jsonschema.ValidationError):
        schemas.validate("sample", {**produced["sample"][0], "targets": []})
    orphan = copy.deepcopy(produced["deadletter.orphan_feedback"][0])
    del orphan["event"]["action"]  # the embedded event is a feedback: it needs its action
    with pytest.raises(jsonschema.ValidationError, match="'action'"):
        schemas.validate("deadletter.orphan_feedback", orphan)
    state = copy.deepcopy(produced["user_state"][0])
    state["counters"]["ts"]["not-a-counter-key"] = [1.0]
    with pytest.raises(jsonschema.ValidationError):
        schemas.validate("user_state", state)


def test_the_event_schemas_reject_what_the_parser_rejects() -> None:
    good = Impression("e1", 10.0, "u1", "home", "r1", "i1", position=2, item={"genre": "drama"}).to_json()
    schemas.validate("impression", good)
    schemas.validate("feedback", Feedback("f1", 12.0, "u1", "home", "r1", "i1", "click", 1.0).to_json())
    for bad in ({**good, "ts": "soon"}, {**good, "user_id": ""}, {**good, "position": True},
                {**good, "item": {"a": [1]}}, {**good, "dense": {"x": "1"}}, {**good, "item": {"a": False}}):
        with pytest.raises(jsonschema.ValidationError):
            schemas.validate("impression", bad)
    with pytest.raises(jsonschema.ValidationError, match="'action'"):
        schemas.validate("feedback", good)


def _reasons(path: str, pattern: str) -> set[str]:
    return set(re.findall(pattern, (REPO / path).read_text()))


def test_every_dead_letter_reason_in_the_code_has_a_schema_and_every_schema_a_reason() -> None:
    worker = set()
    for f in sorted((REPO / "streaming").glob("*.py")):
        worker |= _reasons(str(f.relative_to(REPO)), r'EventError\(\s*"(\w+)"')
        worker |= _reasons(str(f.relative_to(REPO)), r'DeadLetter\(\s*"(\w+)"')
    worker |= _reasons("streaming/outputs.py", r'reason: str = "(\w+)"')  # LateLabel's
    trainer = _reasons("streaming/sample.py", r'SampleError\(\s*"(\w+)"')
    trainer |= _reasons("trainer/source.py", r'(?:skips\.append\(\(|skipped\[)"(\w+)"') - {"duplicate"}  # not sent
    assert {"invalid_json", "null_value", "late_impression", "orphan_feedback", "late_positive"} <= worker
    assert {"schema_version", "no_targets", "collate_error"} <= trainer
    have = set(schemas.names())
    assert {f"deadletter.{r}" for r in worker} == {n for n in have if n.startswith("deadletter.")
                                                   and not n.startswith("deadletter.trainer.")}
    assert {f"deadletter.trainer.{r}" for r in trainer} == {n for n in have if n.startswith("deadletter.trainer.")}
    assert {"impression", "feedback", "sample", "user_state", "snapshot_announcement"} <= have
    for name in have:
        jsonschema.Draft202012Validator.check_schema(schemas.load(name))
        assert schemas.load(name)["$schema"] == "https://json-schema.org/draft/2020-12/schema"
    with pytest.raises(KeyError):
        schemas.deadletter_schema({"reason": "no_such_reason"})
    with pytest.raises(KeyError):
        schemas.load("no_such_schema")
