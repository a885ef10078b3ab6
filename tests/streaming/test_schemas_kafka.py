"""The real worker on the real broker: every record it writes to samples, deadletter and user_state fits its
published JSON Schema (streaming/schemas), on a stream with duplicates, late and orphan events and malformed input."""

from __future__ import annotations

import base64
import dataclasses
import json
import time
from collections import Counter
from pathlib import Path

import jsonschema
import pytest
from kafka import KafkaConsumer, KafkaProducer, TopicPartition
from kafka.admin import KafkaAdminClient, NewTopic

from streaming import schemas
from streaming.events import Event, Feedback, Impression, encode_event
from tests.streaming.gen import GenSpec, generate
from tests.streaming.test_worker_kafka import (
    CFG,
    MALFORMED,
    PARTS,
    read_all,
    sentinels,
    start_worker,
    stop_worker,
)

pytestmark = [pytest.mark.kafka, pytest.mark.slow]


def topic_of(e: Event) -> str:
    return "impressions" if isinstance(e, Impression) else "feedback"


def read_to_end(bootstrap: str, topic: str) -> list[tuple[bytes | None, bytes | None]]:
    """Every (key, value) in ``topic`` from the beginning up to its log end offsets taken now."""
    consumer = KafkaConsumer(bootstrap_servers=bootstrap, enable_auto_commit=False)
    try:
        parts = [TopicPartition(topic, p) for p in sorted(consumer.partitions_for_topic(topic) or ())]
        assert parts, f"topic {topic} does not exist"
        consumer.assign(parts)
        consumer.seek_to_beginning(*parts)
        ends = consumer.end_offsets(parts)
        out: list[tuple[bytes | None, bytes | None]] = []
        deadline = time.monotonic() + 60
        while any(consumer.position(tp) < ends[tp] for tp in parts):
            assert time.monotonic() < deadline, f"could not read {topic} to its end offsets {ends}"
            for recs in consumer.poll(timeout_ms=500).values():
                out.extend((r.key, r.value) for r in recs if r.offset < ends[TopicPartition(r.topic, r.partition)])
        return out
    finally:
        consumer.close()


def test_every_record_the_worker_writes_fits_its_schema(bootstrap: str, topic_prefix: str, tmp_path: Path) -> None:
    # arrival disorder (jitter) above the worker's allowed lateness (CFG: 120 s): late impressions and feedback
    _, arrival = generate(21, GenSpec(users=20, scenarios=3, items=40, impressions=600, horizon=40_000.0,
                                      jitter=400.0, dup_rate=0.05, fb_rate=0.6))
    admin = KafkaAdminClient(bootstrap_servers=bootstrap)
    # the outputs read before the worker starts exist with its partition count (user_state: the worker creates it)
    admin.create_topics([NewTopic(f"{topic_prefix}{t}", PARTS, 1)
                         for t in ("impressions", "feedback", "samples", "deadletter")])
    admin.close()
    producer = KafkaProducer(bootstrap_servers=bootstrap, linger_ms=5)
    for e in arrival:
        producer.send(f"{topic_prefix}{topic_of(e)}", key=e.user_id.encode(), value=encode_event(e))
    bad: list[tuple[str, bytes | None, bytes | None]] = [
        ("impressions" if i % 2 else "feedback", b"u0", v) for i, v in enumerate(MALFORMED)]
    bad += [("impressions", b"u0", None), ("feedback", None, b"{no key and no json")]  # a tombstone; no key
    for topic, key, value in bad:
        producer.send(f"{topic_prefix}{topic}", key=key, value=value)
    # markers past every window (not at the far future: released impressions stay remembered for late feedback)
    end_ts = max(e.ts for e in arrival) + 2 * CFG.attribution_window_s
    for p, e in ((p, dataclasses.replace(e, ts=end_ts)) for p, e in sentinels()):
        producer.send(f"{topic_prefix}{topic_of(e)}", key=e.user_id.encode(), value=encode_event(e), partition=p)
    producer.flush()
    producer.close()

    # Done when every impression is accounted for (a target of a sample, or a late_impression dead letter) and
    # every malformed record was dead-lettered.
    impressions = {e.event_id for e in arrival if isinstance(e, Impression)}
    consumers = {t: KafkaConsumer(f"{topic_prefix}{t}", bootstrap_servers=bootstrap, auto_offset_reset="earliest",
                                  enable_auto_commit=False) for t in ("samples", "deadletter")}
    got: dict[str, list[bytes]] = {"samples": [], "deadletter": []}
    log = tmp_path / "worker.log"
    worker = start_worker(bootstrap, topic_prefix, tmp_path / "w", log)
    try:
        deadline = time.time() + 150
        while time.time() < deadline:
            assert worker.poll() is None, f"the worker exited ({worker.returncode}); log:\n{log.read_text()[-3000:]}"
            for t, c in consumers.items():
                read_all(c, got[t], time.time() + 1)
            seen = {t["event_id"] for v in got["samples"] for t in json.loads(v)["targets"]}
            dead = [json.loads(v) for v in got["deadletter"]]
            seen |= {d["event"]["event_id"] for d in dead if d["reason"] == "late_impression"}
            if seen >= impressions and sum("value_b64" in d for d in dead) >= len(bad):
                break
        assert seen >= impressions, (f"{len(impressions - seen)} of {len(impressions)} impressions unaccounted "
                                     f"({len(got['samples'])} samples, {len(got['deadletter'])} dead letters read); "
                                     f"log:\n{log.read_text()[-3000:]}")
        # Every watermark is now past everything: one more impression is late, a click on a released impression is
        # a late positive, and a feedback for nothing is an orphan, whatever the interleaving above was.
        released = json.loads(got["samples"][0])["targets"][0]
        user = json.loads(got["samples"][0])["user_id"]
        late: list[Event] = [
            Impression("late-imp", released["ts"], user, "home", "late-req", "late-item"),
            Feedback("late-click", released["ts"] + 1.0, user, released["scenario"], released["request_id"],
                     released["item_id"], "click"),
            Feedback("late-orphan", released["ts"] + 1.0, user, "home", "no-such-request", "i0", "click")]
        producer = KafkaProducer(bootstrap_servers=bootstrap)
        for e in late:
            producer.send(f"{topic_prefix}{topic_of(e)}", key=e.user_id.encode(), value=encode_event(e))
        producer.flush()
        producer.close()
        want = {("late_impression", "late-imp"), ("late_positive", "late-click"), ("orphan_feedback", "late-orphan")}
        deadline = time.time() + 60
        while time.time() < deadline and not want <= {
                (d["reason"], d.get("feedback_event_id") or d.get("event", {}).get("event_id"))
                for d in map(json.loads, got["deadletter"])}:
            read_all(consumers["deadletter"], got["deadletter"], time.time() + 1)
        records = {t: read_to_end(bootstrap, f"{topic_prefix}{t}") for t in ("samples", "deadletter", "user_state")}
    finally:
        stop_worker(worker)
        for c in consumers.values():
            c.close()

    kinds: Counter[str] = Counter()
    for topic, name_of in (("samples", lambda r: "sample"), ("user_state", lambda r: "user_state"),
                           ("deadletter", schemas.deadletter_schema)):
        assert records[topic], f"nothing on {topic}"
        for key, value in records[topic]:
            assert value is not None, f"a null value on {topic}"  # the worker writes no tombstones
            rec = json.loads(value)
            name = name_of(rec)
            kinds[name] += 1
            errors = list(schemas.validator(name).iter_errors(rec))
            assert not errors, f"{topic} record (key {key!r}) does not fit {name}: {errors[0].message}: {value[:400]!r}"
            if "user_id" in rec:
                assert key == rec["user_id"].encode()  # keyed by user
    print(dict(kinds))
    for reason in ("invalid_json", "bad_type", "bad_ts", "not_object", "missing_field", "oversized", "null_value"):
        assert kinds[f"deadletter.{reason}"] >= 1, (reason, kinds)
    for reason in ("late_impression", "late_positive", "orphan_feedback"):
        assert kinds[f"deadletter.{reason}"] >= 1, (reason, kinds)

    # The event schemas reject what the worker rejected (bad_ts aside: JSON Schema has no "finite"; the stdlib
    # decodes NaN to a float, which is a JSON Schema number).
    for _, value in records["deadletter"]:
        assert value is not None
        d = json.loads(value)
        if d["reason"] in ("bad_ts", "invalid_json", "oversized", "null_value") or "value_b64" not in d:
            continue
        original = json.loads(base64.b64decode(d["value_b64"]))
        event_schema = "impression" if d["topic"].endswith("impressions") else "feedback"
        with pytest.raises(jsonschema.ValidationError):
            schemas.validate(event_schema, original)
