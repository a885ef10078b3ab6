"""The Faust agent in ``test_context`` (no broker): parsing, dead letters, outputs, table writes, metrics, reload."""

from __future__ import annotations

import asyncio
import base64
import json
import time
from typing import Any

import pytest
from prometheus_client import CollectorRegistry

from streaming.app import StreamWorker, WorkerConfig
from streaming.config import CoreConfig
from streaming.events import Feedback, Impression, encode_event
from streaming.sample import Sample
from streaming.user_state import UserState

CORE = CoreConfig(attribution_window_s=10.0, allowed_lateness_s=0.0, span_s=100.0)


class Recorder:
    """Stands in for the producer: records (key, value) and resolves the send future at once."""

    def __init__(self) -> None:
        self.sent: list[tuple[Any, Any]] = []

    def send_soon(self, key: Any = None, value: Any = None, **kw: Any) -> asyncio.Future[None]:
        self.sent.append((key, value))
        f: asyncio.Future[None] = asyncio.get_event_loop().create_future()
        f.set_result(None)
        return f

    def send_changelog(self, partition: int, key: Any, value: Any, *a: Any) -> asyncio.Future[None]:
        return self.send_soon(key=(partition, key), value=value)


def make_worker(monkeypatch: pytest.MonkeyPatch, snapshot_every_s: float = 0.0,
                ) -> tuple[StreamWorker, dict[str, Recorder], CollectorRegistry]:
    reg = CollectorRegistry()
    w = StreamWorker(WorkerConfig(bootstrap="127.0.0.1:1", app_id=f"t{time.time_ns()}", batch_within_s=0.01,
                                  partitions=2, snapshot_every_s=snapshot_every_s), CORE, reg)
    w.app.conf.store = "memory://"
    w.app.finalize()
    w.app.flow_control.resume()
    rec = {name: Recorder() for name in ("samples", "dead", "state", "users", "meta", "log")}
    by_topic = {w.samples_out.get_topic_name(): "samples", w.dead_out.get_topic_name(): "dead",
                w.state_out.get_topic_name(): "state"}

    async def send(topic: str, key: bytes | None, value: bytes | None, partition: int | None = None) -> Any:
        return rec[by_topic[topic]].send_soon(key=key, value=value)

    monkeypatch.setattr(w, "_send", send)
    monkeypatch.setattr(w.users, "send_changelog", rec["users"].send_changelog)
    monkeypatch.setattr(w.meta, "send_changelog", rec["meta"].send_changelog)
    monkeypatch.setattr(w.log, "send_changelog", rec["log"].send_changelog)
    for topic in (w.samples_out, w.dead_out, w.state_out):

        async def no_declare() -> None:
            return None

        monkeypatch.setattr(topic, "maybe_declare", no_declare)
    return w, rec, reg


async def feed(w: StreamWorker, agent: Any, msgs: list[tuple[str, int, bytes, bytes]],
               offsets: list[int] | None = None) -> None:
    """Put (topic, partition, key, value) messages into the agent at ``offsets`` (default 0, 1, ...) and wait until
    all were processed."""
    channel = agent.stream().channel
    for i, (topic, partition, key, value) in enumerate(msgs):
        m = agent.to_message(key, value, partition=partition, offset=i if offsets is None else offsets[i])
        m.topic = topic
        await channel.put(await channel.decode(m))
    deadline = time.time() + 10
    while sum(agent.results.values()) < len(msgs):
        assert time.time() < deadline, agent.results
        await asyncio.sleep(0.01)


@pytest.mark.parametrize("snapshot_every_s", [0.0, 1e9], ids=["snapshot-each-batch", "log-replay"])
async def test_agent_joins_dead_letters_persists_and_counts(monkeypatch: pytest.MonkeyPatch,
                                                            snapshot_every_s: float) -> None:
    w, rec, reg = make_worker(monkeypatch, snapshot_every_s)
    imp, fb = w.cfg.impressions_topic, w.cfg.feedback_topic
    msgs = [
        (imp, 0, b"u1", encode_event(Impression("i1", 0.0, "u1", "home", "r1", "a", item={"category": "c"}))),
        (fb, 0, b"u1", encode_event(Feedback("f1", 3.0, "u1", "home", "r1", "a", "click"))),
        (imp, 1, b"u1", b"{bad json"),
        (fb, 0, b"u1", encode_event(Feedback("f1", 3.0, "u1", "home", "r1", "a", "click"))),  # duplicate
        (imp, 0, b"u2", encode_event(Impression("i2", 500.0, "u2", "feed", "r2", "b"))),  # moves W to 500
        (fb, 0, b"u2", encode_event(Feedback("f2", 500.0, "u2", "feed", "r9", "z", "like"))),
    ]
    async with w.agent.test_context() as agent:
        await feed(w, agent, msgs)
    samples = [Sample.decode(v) for _, v in rec["samples"].sent]
    assert [(s.user_id, [t.labels for t in s.targets]) for s in samples] == [("u1", [{"click": 1, "conversion": 0}])]
    assert rec["samples"].sent[0][0] == b"u1"
    assert samples[0].realtime == []  # the click (ts 3) is after the only target (ts 0): not in R
    dead = [json.loads(v) for _, v in rec["dead"].sent]
    assert sorted(x["reason"] for x in dead) == ["invalid_json", "orphan_feedback"]  # f2 never joined
    [d] = [x for x in dead if x["reason"] == "invalid_json"]
    assert (d["reason"], d["topic"], d["partition"]) == ("invalid_json", imp, 1)
    assert base64.b64decode(d["value_b64"]) == b"{bad json"
    states = {k: UserState.from_json(v) for k, v in rec["state"].sent}
    assert states[b"u1"].behaviors[0].item_id == "a"
    if snapshot_every_s == 0:
        assert {k for k, _ in rec["users"].sent} >= {(0, "u1"), (0, "u2")}
        assert {k for k, _ in rec["meta"].sent} == {(0, "p0"), (1, "p1")}  # p1: only bad input, its offset
        assert any(v is not None for _, v in rec["log"].sent) and not w.log.data  # logged, then snapshotted
    else:
        assert not rec["users"].sent and not rec["meta"].sent and w.log.data  # only the batch log so far
    g = reg.get_sample_value
    assert g("streamrec_stream_events_total", {"type": "impression", "scenario": "home"}) == 1
    assert g("streamrec_stream_events_total", {"type": "feedback", "scenario": "home"}) == 2
    assert g("streamrec_stream_deadletter_total", {"reason": "invalid_json"}) == 1
    assert g("streamrec_stream_duplicates_total") == 1
    assert g("streamrec_stream_samples_total") == 1
    assert g("streamrec_stream_labels_released_total", {"task": "click", "label": "positive"}) == 1
    assert g("streamrec_stream_targets_per_sample_count") == 1
    assert g("streamrec_stream_batch_processing_seconds_count") >= 1

    # A new worker whose tables hold what the first one persisted resumes where it left off: records Kafka delivers
    # again (offsets already in the state) are skipped as redelivered, a producer's second copy is a duplicate.
    w2, rec2, reg2 = make_worker(monkeypatch, snapshot_every_s)
    for src, dst in ((w.users, w2.users), (w.meta, w2.meta), (w.log, w2.log)):
        for k, v in src.data.items():
            dst.data[k] = v
    i2 = encode_event(Impression("i2", 500.0, "u2", "feed", "r2", "b"))
    async with w2.agent.test_context() as agent2:
        await feed(w2, agent2, [
            (imp, 1, b"u1", b"{bad json"),  # redelivered at its offset: not dead-lettered again
            (imp, 0, b"u2", i2),  # redelivered at its offset
            (imp, 0, b"u2", i2),  # sent again by the producer: a new offset, a duplicate
            (imp, 0, b"u3", encode_event(Impression("i3", 900.0, "u3", "feed", "r3", "c"))),
            (fb, 0, b"u3", encode_event(Feedback("f3", 900.0, "u3", "feed", "r3", "c", "order"))),
        ], offsets=[2, 4, 6, 7, 8])
    samples2 = [Sample.decode(v) for _, v in rec2["samples"].sent]
    assert [(s.user_id, [t.event_id for t in s.targets]) for s in samples2] == [("u2", ["i2"])]
    assert not rec2["dead"].sent
    g2 = reg2.get_sample_value
    assert (g2("streamrec_stream_redelivered_total"), g2("streamrec_stream_duplicates_total")) == (2, 1)
    assert g2("streamrec_stream_events_total", {"type": "impression", "scenario": "feed"}) == 2  # i2 copy, i3


def test_core_counters_map_to_metrics() -> None:
    """Each late feedback outcome has its own late_total kind; redelivered and duplicates are separate counters."""
    from streaming.core import CoreCounters
    from streaming.metrics import StreamMetrics

    reg = CollectorRegistry()
    m = StreamMetrics(reg)
    m.observe_core(CoreCounters(), CoreCounters(duplicates=1, late_impressions=2, late_feedback=3, late_behaviors=4,
                                                late_orphans=5, late_positives=6, orphans=7, joined=8))
    g = reg.get_sample_value
    kinds = {k: g("streamrec_stream_late_total", {"kind": k})
             for k in ("impression", "feedback", "behavior", "orphan", "positive")}
    assert kinds == {"impression": 2, "feedback": 3, "behavior": 4, "orphan": 5, "positive": 6}
    assert (g("streamrec_stream_duplicates_total"), g("streamrec_stream_orphans_total"),
            g("streamrec_stream_joined_feedback_total"), g("streamrec_stream_redelivered_total")) == (1, 7, 8, 0)
