"""The worker's topics: created at start with ``--partitions`` (consuming from the first event on), adopted when they
exist with that count, a one-line error (exit code 2) when one exists with another; ``--help`` shows defaults."""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

import pytest
from kafka import KafkaConsumer, KafkaProducer
from kafka.admin import ConfigResource, ConfigResourceType, KafkaAdminClient

from streaming.__main__ import main
from streaming.core import run_offline
from streaming.events import Impression, encode_event
from streaming.sample import Sample
from tests.streaming.gen import GenSpec, generate
from tests.streaming.test_worker_kafka import CFG, PARTS, read_all, sentinels, start_worker, stop_worker

TOPICS = ("impressions", "feedback", "samples", "deadletter", "user_state")


def wait_for_topics(admin: KafkaAdminClient, names: set[str], proc: subprocess.Popen[bytes], log: Path,
                    timeout_s: float) -> None:
    deadline = time.time() + timeout_s
    while not names <= set(admin.list_topics()):
        assert proc.poll() is None, f"worker exited; log:\n{log.read_text()[-3000:]}"
        assert time.time() < deadline, f"missing {names - set(admin.list_topics())}; log:\n{log.read_text()[-3000:]}"
        time.sleep(0.2)


@pytest.mark.kafka
@pytest.mark.slow
def test_worker_started_before_its_topics_creates_them_and_consumes_at_once(bootstrap: str, topic_prefix: str,
                                                                             tmp_path: Path) -> None:
    _, arrival = generate(21, GenSpec(users=10, items=20, impressions=200, horizon=20_000.0, jitter=100.0))
    expected = {s.sample_id for s in run_offline(arrival + [e for _, e in sentinels()], CFG)
                if not s.user_id.startswith("~end")}
    assert expected
    admin = KafkaAdminClient(bootstrap_servers=bootstrap)
    names = {f"{topic_prefix}{t}" for t in TOPICS}
    assert not names & set(admin.list_topics())
    log = tmp_path / "worker.log"
    worker = start_worker(bootstrap, topic_prefix, tmp_path / "w", log)
    producer = KafkaProducer(bootstrap_servers=bootstrap, linger_ms=5)
    samples: KafkaConsumer | None = None
    try:
        # created by the worker: no client here asks for them first (a metadata request would auto-create them)
        wait_for_topics(admin, names, worker, log, 60.0)
        samples = KafkaConsumer(f"{topic_prefix}samples", bootstrap_servers=bootstrap, auto_offset_reset="earliest",
                                enable_auto_commit=False)
        t0 = time.time()
        for p, e in [(None, e) for e in arrival] + sentinels():
            topic = f"{topic_prefix}{'impressions' if isinstance(e, Impression) else 'feedback'}"
            producer.send(topic, key=e.user_id.encode(), value=encode_event(e), partition=p)
        producer.flush()
        got: list[bytes] = []
        while time.time() < t0 + 30 and not {Sample.decode(v).sample_id for v in got} >= expected:
            read_all(samples, got, time.time() + 1)
        missing = expected - {Sample.decode(v).sample_id for v in got}
        assert not missing, f"{len(missing)} of {len(expected)} samples not there 30 s after the first event; " \
                            f"log:\n{log.read_text()[-3000:]}"
        changelogs = {f"{topic_prefix}app-stream-{t}-changelog" for t in ("users", "meta", "log")}
        described = {t["name"]: len(t["partitions"]) for t in admin.describe_topics(sorted(names | changelogs))}
        assert described == dict.fromkeys(names | changelogs, PARTS)
        compacted = sorted({f"{topic_prefix}user_state"} | changelogs)
        configs = admin.describe_configs([ConfigResource(ConfigResourceType.TOPIC, t) for t in compacted])["topic"]
        assert {t: c["cleanup.policy"]["value"] for t, c in configs.items()} == dict.fromkeys(compacted, "compact")
    finally:
        stop_worker(worker)
        if samples is not None:
            samples.close()
        producer.close()
        admin.close()


@pytest.mark.kafka
def test_existing_topic_with_another_partition_count_is_a_one_line_error(bootstrap: str, topic_prefix: str,
                                                                         tmp_path: Path) -> None:
    admin = KafkaAdminClient(bootstrap_servers=bootstrap)
    try:
        admin.create_topics({f"{topic_prefix}feedback": {"num_partitions": PARTS - 1, "replication_factor": 1}})
        log = tmp_path / "worker.log"
        worker = start_worker(bootstrap, topic_prefix, tmp_path / "w", log)
        try:
            rc = worker.wait(60)
        finally:
            stop_worker(worker)
        lines = log.read_text().splitlines()
        assert rc == 2, lines[-20:]
        assert [ln for ln in lines if ln.startswith("error:")] == lines[-1:] == [
            f"error: topic {topic_prefix}feedback has {PARTS - 1} partitions, --partitions is {PARTS}"]
        # checked before anything is created
        assert not {f"{topic_prefix}{t}" for t in TOPICS if t != "feedback"} & set(admin.list_topics())
    finally:
        admin.close()


def test_worker_help_shows_defaults(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exc:
        main(["worker", "--help"])
    assert exc.value.code == 0
    out = " ".join(capsys.readouterr().out.split())
    for default in ("(default: 8)", "(default: 127.0.0.1:9092)", "(default: 1800.0)", "(default: memory://)"):
        assert default in out, default


def test_no_broker_is_a_one_line_error(tmp_path: Path) -> None:
    """No broker answering within --connect-timeout-s: exit code 2 and one error line (no Faust start)."""
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    proc = subprocess.run([sys.executable, "-m", "streaming", "worker", "--bootstrap", f"127.0.0.1:{port}",
                           "--connect-timeout-s", "2", "--metrics-port", "0", "--data-dir", str(tmp_path)],
                          capture_output=True, text=True, timeout=60, cwd=Path(__file__).parents[2])
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert proc.stderr.splitlines()[-1].startswith(f"error: no Kafka broker answered at 127.0.0.1:{port}")


@pytest.mark.kafka
def test_output_topics_are_adopted_whatever_their_partition_count(bootstrap: str, topic_prefix: str) -> None:
    from streaming.app import TopicConflict, TopicSpec, ensure_topics

    samples, inputs = f"{topic_prefix}samples", f"{topic_prefix}impressions"
    admin = KafkaAdminClient(bootstrap_servers=bootstrap)
    try:  # as the broker would auto-create it for a consumer that asked before the worker started
        admin.create_topics({samples: {"num_partitions": PARTS + 1, "replication_factor": 1}})
    finally:
        admin.close()
    created = ensure_topics(bootstrap, [TopicSpec(samples, PARTS, strict=False), TopicSpec(inputs, PARTS)])
    assert created == [inputs]
    with pytest.raises(TopicConflict, match=f"topic {samples} has {PARTS + 1} partitions"):
        ensure_topics(bootstrap, [TopicSpec(samples, PARTS)])
