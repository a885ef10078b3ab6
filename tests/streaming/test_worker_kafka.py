"""The Faust worker on the real broker: samples topic == run_offline on the same events, across a SIGKILL and
across a second worker joining the consumer group mid-stream (a rebalance); producer duplicates and Kafka
redeliveries counted apart across a SIGKILL."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from kafka import KafkaConsumer, KafkaProducer
from kafka.admin import KafkaAdminClient, NewTopic

from streaming.config import CoreConfig
from streaming.core import run_offline
from streaming.events import Event, Feedback, Impression, encode_event
from streaming.sample import Sample
from tests.streaming.gen import GenSpec, generate

pytestmark = [pytest.mark.kafka, pytest.mark.slow]

PARTS = 3
CFG = CoreConfig(attribution_window_s=1800.0, allowed_lateness_s=120.0, history_len=16, max_targets=16,
                 span_s=3600.0, late_horizon_s=1e9, skip_action="skip")
END_TS = 1e10
MALFORMED = [b"{not json", b'{"event_id":"x","ts":"soon","user_id":"u","scenario":"s","request_id":"r","item_id":"i"}',
             b'{"event_id":"x","ts":NaN,"user_id":"u","scenario":"s","request_id":"r","item_id":"i"}', b"[]",
             b'{"ts":1}', b"x" * (70 * 1024)]


def sentinels(parts: int = PARTS) -> list[tuple[int, Event]]:
    """Per partition, far-future events on both topics so every partition's watermark passes everything."""
    out: list[tuple[int, Event]] = []
    for p in range(parts):
        out.append((p, Impression(f"end-i{p}", END_TS, f"~end{p}", "end", "end", "end")))
        out.append((p, Feedback(f"end-f{p}", END_TS, f"~end{p}", "end", "end", "end", "click")))
    return out


def start_worker(bootstrap: str, prefix: str, data_dir: Path, log: Path, parts: int = PARTS,
                 metrics_port: int = 0, extra: tuple[str, ...] = ()) -> subprocess.Popen[bytes]:
    cmd = [sys.executable, "-m", "streaming", "worker", "--bootstrap", bootstrap, "--app-id", f"{prefix}app",
           "--impressions-topic", f"{prefix}impressions", "--feedback-topic", f"{prefix}feedback",
           "--samples-topic", f"{prefix}samples", "--deadletter-topic", f"{prefix}deadletter",
           "--user-state-topic", f"{prefix}user_state", "--partitions", str(parts), "--data-dir", str(data_dir),
           "--metrics-port", str(metrics_port), "--batch-max", "200", "--batch-within-s", "0.05", "--commit-interval-s", "0.5",
           "--session-timeout-s", "8", "--snapshot-every-s", "1.5",
           "--window-s", str(CFG.attribution_window_s), "--lateness-s", str(CFG.allowed_lateness_s),
           "--history-len", str(CFG.history_len), "--max-targets", str(CFG.max_targets), "--span-s",
           str(CFG.span_s), "--late-horizon-s", str(CFG.late_horizon_s), "--skip-action", CFG.skip_action or "",
           "--log-level", "warning", *extra]
    return subprocess.Popen(cmd, stdout=log.open("ab"), stderr=subprocess.STDOUT, cwd=Path(__file__).parents[2],
                            start_new_session=True)


def stop_worker(proc: subprocess.Popen[bytes]) -> None:
    """SIGTERM the worker's process group, SIGKILL it after 15 s."""
    if proc.poll() is None:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(15)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)


def read_all(consumer: KafkaConsumer, into: list[bytes], until: float, want: int | None = None) -> None:
    while time.time() < until:
        for recs in consumer.poll(timeout_ms=500).values():
            into.extend(r.value for r in recs)
        if want is not None and len(into) >= want:
            return


def test_worker_matches_offline_and_survives_sigkill(bootstrap: str, topic_prefix: str, tmp_path: Path) -> None:
    _, arrival = generate(11, GenSpec(users=30, scenarios=3, items=40, impressions=1500, horizon=60_000.0,
                                      jitter=100.0, dup_rate=0.05, fb_rate=0.5))
    expected = {s.sample_id: s for s in run_offline(arrival + [e for _, e in sentinels()], CFG)
                if not s.user_id.startswith("~end")}
    assert len(expected) > 100
    admin = KafkaAdminClient(bootstrap_servers=bootstrap)
    # the worker adopts them (same count); samples exists before the test's consumer asks for it (else the
    # broker would auto-create it with its default partition count, and the worker refuse to start)
    admin.create_topics([NewTopic(f"{topic_prefix}{t}", PARTS, 1) for t in ("impressions", "feedback", "samples")])
    admin.close()
    producer = KafkaProducer(bootstrap_servers=bootstrap, linger_ms=5)

    def send(evs: list[Event]) -> None:
        for e in evs:
            topic = f"{topic_prefix}{'impressions' if isinstance(e, Impression) else 'feedback'}"
            producer.send(topic, key=e.user_id.encode(), value=encode_event(e))
        producer.flush()

    samples = KafkaConsumer(f"{topic_prefix}samples", bootstrap_servers=bootstrap, auto_offset_reset="earliest",
                            enable_auto_commit=False)
    got: list[bytes] = []
    log = tmp_path / "worker.log"
    cut = len(arrival) * 2 // 3
    worker = start_worker(bootstrap, topic_prefix, tmp_path / "w1", log)
    try:
        send(arrival[:cut])
        for i, bad in enumerate(MALFORMED):
            producer.send(f"{topic_prefix}{'impressions' if i % 2 else 'feedback'}", key=b"u0", value=bad)
        producer.flush()
        read_all(samples, got, time.time() + 90, want=len(expected) // 3)
        assert got, f"no samples from the first worker; log:\n{log.read_text()[-3000:]}"
        worker.send_signal(signal.SIGKILL)  # mid-stream: the first part is still being processed
        worker.wait(10)
        n_before = len(got)
        send(arrival[cut:])
        for p, e in sentinels():
            topic = f"{topic_prefix}{'impressions' if isinstance(e, Impression) else 'feedback'}"
            producer.send(topic, key=e.user_id.encode(), value=encode_event(e), partition=p)
        producer.flush()
        worker = start_worker(bootstrap, topic_prefix, tmp_path / "w2", log)
        deadline = time.time() + 150
        while time.time() < deadline:
            read_all(samples, got, time.time() + 2)
            if {Sample.decode(v).sample_id for v in got} >= set(expected):
                break
        decoded = [Sample.decode(v) for v in got]
        ids = {s.sample_id for s in decoded}
        missing = set(expected) - ids
        assert not missing, f"{len(missing)} samples missing; log:\n{log.read_text()[-3000:]}"
        # exactly the offline samples: every emitted sample (re-emissions included) equals its offline twin
        for s in decoded:
            assert s.sample_id in expected, s.sample_id
            assert s.to_json() == expected[s.sample_id].to_json()
        # no labeled impression lost
        assert {t.event_id for s in decoded for t in s.targets} == \
            {t.event_id for s in expected.values() for t in s.targets}
        print(f"samples: {len(expected)} expected, {len(got)} received ({n_before} before the kill, "
              f"{len(got) - len(ids)} re-emitted)")
        dead = KafkaConsumer(f"{topic_prefix}deadletter", bootstrap_servers=bootstrap, auto_offset_reset="earliest",
                             enable_auto_commit=False)
        recs: list[bytes] = []
        read_all(dead, recs, time.time() + 20, want=len(MALFORMED))
        reasons = [json.loads(r)["reason"] for r in recs]
        for r in ("invalid_json", "bad_type", "bad_ts", "not_object", "missing_field", "oversized"):
            assert r in reasons, (r, reasons)
        dead.close()
    finally:
        stop_worker(worker)
        samples.close()
        producer.close()


def _free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _metric(port: int, name: str) -> float:
    """The worker's metric ``name`` summed over labels (0 while its endpoint is not up or the metric has no sample)."""
    import urllib.request

    try:
        text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=2).read().decode()
    except OSError:
        return 0.0
    return sum(float(line.rsplit(" ", 1)[1]) for line in text.splitlines()
               if line.startswith((f"{name}{{", f"{name} ")))


def _events_in(port: int) -> float:
    """The worker's streamrec_stream_events_total summed over labels (0 while its endpoint is not up)."""
    return _metric(port, "streamrec_stream_events_total")


def _fresh_done(port: int) -> float:
    """Input records whose batch is fully processed (outputs and log durable), redeliveries excluded: never more
    than the true count, even while a batch is in flight (its redeliveries are counted before the batch is)."""
    return _metric(port, "streamrec_stream_batch_events_sum") - _metric(port, "streamrec_stream_redelivered_total")


def test_duplicates_and_redeliveries_are_counted_apart_across_sigkill(bootstrap: str, topic_prefix: str,
                                                                      tmp_path: Path) -> None:
    """duplicates_total = copies the producer sent again (new offsets); redelivered_total = records Kafka hands the
    restarted worker again (offsets already in its restored state, not committed: commits are held back here)."""
    _, arrival = generate(13, GenSpec(users=20, scenarios=3, items=30, impressions=500, horizon=30_000.0,
                                      jitter=100.0, dup_rate=0.08, fb_rate=0.5))
    sent_twice = len(arrival) - len({e.event_id for e in arrival})
    assert sent_twice > 10
    expected = {s.sample_id: s for s in run_offline(arrival + [e for _, e in sentinels()], CFG)
                if not s.user_id.startswith("~end")}
    admin = KafkaAdminClient(bootstrap_servers=bootstrap)
    # the worker adopts them (same count); samples exists before the test's consumer asks for it (else the
    # broker would auto-create it with its default partition count, and the worker refuse to start)
    admin.create_topics([NewTopic(f"{topic_prefix}{t}", PARTS, 1) for t in ("impressions", "feedback", "samples")])
    admin.close()
    producer = KafkaProducer(bootstrap_servers=bootstrap, linger_ms=5)

    def send(evs: list[tuple[int | None, Event]]) -> None:
        for p, e in evs:
            topic = f"{topic_prefix}{'impressions' if isinstance(e, Impression) else 'feedback'}"
            producer.send(topic, key=e.user_id.encode(), value=encode_event(e), partition=p)
        producer.flush()

    def wait_done(port: int, n: int, log: Path) -> None:
        deadline = time.time() + 120
        while _fresh_done(port) < n:
            assert time.time() < deadline, f"{_fresh_done(port)} of {n} records processed; log:\n" \
                                           f"{log.read_text()[-3000:]}"
            time.sleep(0.2)

    samples = KafkaConsumer(f"{topic_prefix}samples", bootstrap_servers=bootstrap, auto_offset_reset="earliest",
                            enable_auto_commit=False)
    ports = (_free_port(), _free_port())
    log = tmp_path / "worker.log"
    cut = len(arrival) // 2
    hold_commits = ("--commit-interval-s", "600")
    worker = start_worker(bootstrap, topic_prefix, tmp_path / "w1", log, metrics_port=ports[0], extra=hold_commits)
    try:
        send([(None, e) for e in arrival[:cut]])
        wait_done(ports[0], cut, log)  # all of the first part is in the logged state
        dup1 = _metric(ports[0], "streamrec_stream_duplicates_total")
        assert _metric(ports[0], "streamrec_stream_redelivered_total") == 0
        worker.send_signal(signal.SIGKILL)
        worker.wait(10)
        rest = [(None, e) for e in arrival[cut:]] + [(p, e) for p, e in sentinels()]
        send(rest)
        worker = start_worker(bootstrap, topic_prefix, tmp_path / "w2", log, metrics_port=ports[1])
        wait_done(ports[1], len(rest), log)
        got: list[bytes] = []
        deadline = time.time() + 60
        while time.time() < deadline and not {Sample.decode(v).sample_id for v in got} >= set(expected):
            read_all(samples, got, time.time() + 2)
        assert {Sample.decode(v).sample_id for v in got} == set(expected)
        dup2 = _metric(ports[1], "streamrec_stream_duplicates_total")
        redelivered = _metric(ports[1], "streamrec_stream_redelivered_total")
        print(f"sent twice {sent_twice}: duplicates {dup1:.0f} + {dup2:.0f}; redelivered {redelivered:.0f} of {cut}")
        assert dup1 + dup2 == sent_twice
        assert 0 < redelivered <= cut
        assert _events_in(ports[1]) == len(rest)  # the redelivered records were not processed again
    finally:
        stop_worker(worker)
        samples.close()
        producer.close()


def test_second_worker_joins_mid_stream_and_nothing_is_lost(bootstrap: str, topic_prefix: str,
                                                              tmp_path: Path) -> None:
    """Scale-out: worker B joins A's group mid-stream; the partitions split, both process input, and the samples
    topic still holds exactly the offline samples (re-emissions after the hand-over carry the same sample_id)."""
    parts = 4
    _, arrival = generate(12, GenSpec(users=40, scenarios=3, items=40, impressions=1500, horizon=60_000.0,
                                      jitter=100.0, dup_rate=0.05, fb_rate=0.5))
    expected = {s.sample_id: s for s in run_offline(arrival + [e for _, e in sentinels(parts)], CFG)
                if not s.user_id.startswith("~end")}
    admin = KafkaAdminClient(bootstrap_servers=bootstrap)
    admin.create_topics([NewTopic(f"{topic_prefix}{t}", parts, 1) for t in ("impressions", "feedback", "samples")])
    admin.close()
    producer = KafkaProducer(bootstrap_servers=bootstrap, linger_ms=5)

    def send(evs: list[tuple[int | None, Event]]) -> None:
        for p, e in evs:
            topic = f"{topic_prefix}{'impressions' if isinstance(e, Impression) else 'feedback'}"
            producer.send(topic, key=e.user_id.encode(), value=encode_event(e), partition=p)
        producer.flush()

    samples = KafkaConsumer(f"{topic_prefix}samples", bootstrap_servers=bootstrap, auto_offset_reset="earliest",
                            enable_auto_commit=False)
    got: list[bytes] = []
    ports = (_free_port(), _free_port())
    logs = (tmp_path / "a.log", tmp_path / "b.log")
    cut = len(arrival) // 3
    workers = [start_worker(bootstrap, topic_prefix, tmp_path / "a", logs[0], parts, ports[0])]
    try:
        send([(None, e) for e in arrival[:cut]])
        read_all(samples, got, time.time() + 90, want=1)
        assert got, f"no samples from worker A; log:\n{logs[0].read_text()[-3000:]}"
        workers.append(start_worker(bootstrap, topic_prefix, tmp_path / "b", logs[1], parts, ports[1]))
        deadline = time.time() + 60
        while time.time() < deadline and _events_in(ports[1]) == 0:  # B owns partitions once it processes input
            send([(None, e) for e in arrival[cut:cut + 20]])
            cut += 20
            read_all(samples, got, time.time() + 1)
        assert _events_in(ports[1]) > 0, f"worker B never processed input; log:\n{logs[1].read_text()[-3000:]}"
        send([(None, e) for e in arrival[cut:]] + [(p, e) for p, e in sentinels(parts)])
        deadline = time.time() + 150
        while time.time() < deadline:
            read_all(samples, got, time.time() + 2)
            if {Sample.decode(v).sample_id for v in got} >= set(expected):
                break
        decoded = [Sample.decode(v) for v in got]
        missing = set(expected) - {s.sample_id for s in decoded}
        jumps = [_metric(port, "streamrec_stream_input_offset_jumps_total") for port in ports]
        assert not missing, f"{len(missing)} samples missing (input offset jumps per worker: {jumps}); logs:\n" \
                            f"{logs[0].read_text()[-2000:]}\n{logs[1].read_text()[-2000:]}"
        assert jumps == [0, 0], "a worker processed an input record without the ones before it"
        for s in decoded:
            assert s.sample_id in expected, s.sample_id
            assert s.to_json() == expected[s.sample_id].to_json()
        assert _events_in(ports[0]) > 0 and _events_in(ports[1]) > 0
    finally:
        for w in workers:
            stop_worker(w)
        samples.close()
        producer.close()
