"""The real local broker: kafka-python and aiokafka (Faust's client) both produce and consume through it; its data,
cluster id and port survive a stop/start; the CLI reports an already-running or stopped broker plainly."""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import uuid
from pathlib import Path

import pytest
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer
from kafka import KafkaConsumer, KafkaProducer

from deploy.kafka import BrokerConfig, BrokerError, KafkaBroker

pytestmark = pytest.mark.kafka


def test_kafka_python_roundtrip(bootstrap: str, topic_prefix: str) -> None:
    topic = topic_prefix + "kp"
    producer = KafkaProducer(bootstrap_servers=bootstrap)
    sent = [{"event_id": str(i), "n": i} for i in range(50)]
    for ev in sent:
        producer.send(topic, key=b"u1", value=json.dumps(ev).encode())
    producer.flush(timeout=30)
    producer.close()
    consumer = KafkaConsumer(topic, bootstrap_servers=bootstrap, auto_offset_reset="earliest",
                             enable_auto_commit=False, consumer_timeout_ms=20000)
    got = []
    for msg in consumer:
        got.append(json.loads(msg.value))
        if len(got) == len(sent):
            break
    consumer.close()
    # One key -> one partition -> order preserved.
    assert got == sent


async def test_aiokafka_roundtrip(bootstrap: str, topic_prefix: str) -> None:
    topic = topic_prefix + "aio"
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap)
    await producer.start()
    try:
        for i in range(20):
            await producer.send_and_wait(topic, key=f"u{i % 3}".encode(), value=str(i).encode())
    finally:
        await producer.stop()
    consumer = AIOKafkaConsumer(topic, bootstrap_servers=bootstrap, auto_offset_reset="earliest",
                                enable_auto_commit=False)
    await consumer.start()
    try:
        got: set[int] = set()
        batches = 0
        while len(got) < 20 and batches < 100:
            batch = await consumer.getmany(timeout_ms=500)
            batches += 1
            for records in batch.values():
                got.update(int(r.value) for r in records)
    finally:
        await consumer.stop()
    assert got == set(range(20))


def test_cli_reports_port_in_use(tmp_path: Path, kafka_broker: KafkaBroker) -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        port = s.getsockname()[1]
        proc = subprocess.run(
            [sys.executable, "-m", "deploy", "kafka", "start", "--port", str(port), "--state-dir", str(tmp_path)],
            capture_output=True, text=True, timeout=120,
        )
    assert proc.returncode == 2
    assert f"port {port}" in proc.stderr and "already in use" in proc.stderr
    assert "Traceback" not in proc.stderr


def test_cli_reports_missing_java(tmp_path: Path) -> None:
    env = {"PATH": str(tmp_path), "STREAMREC_CACHE": str(tmp_path / "cache")}  # no java, no mvn on PATH
    proc = subprocess.run(
        [sys.executable, "-m", "deploy", "kafka", "start", "--port", "0", "--state-dir", str(tmp_path / "s"),
         "--cache", str(tmp_path / "cache")],
        capture_output=True, text=True, timeout=60, env=env, cwd=Path(__file__).resolve().parents[2],
    )
    assert proc.returncode == 2
    assert "not installed" in proc.stderr and "Traceback" not in proc.stderr


def test_cli_reports_unfetchable_jars(tmp_path: Path) -> None:
    # An unreachable Maven repository (offline mode, empty local repo) stands for a failed download.
    settings = tmp_path / "settings.xml"
    settings.write_text(f"<settings><localRepository>{tmp_path / 'm2'}</localRepository><offline>true</offline></settings>")
    env = {"PATH": "/usr/bin:/bin:/usr/local/bin", "STREAMREC_MVN_ARGS": f"-s {settings}"}
    proc = subprocess.run(
        [sys.executable, "-m", "deploy", "kafka", "fetch", "--cache", str(tmp_path / "cache")],
        capture_output=True, text=True, timeout=120, env=env, cwd=Path(__file__).resolve().parents[2],
    )
    assert proc.returncode == 2, proc.stdout + proc.stderr
    assert "could not fetch Kafka" in proc.stderr and "Traceback" not in proc.stderr


def test_status_and_stop_of_a_second_broker(tmp_path: Path) -> None:
    broker = KafkaBroker(BrokerConfig(state_dir=tmp_path / "b2", port=0))
    assert broker.status()["running"] is False
    boot = broker.start()
    try:
        assert broker.status()["running"] is True
        producer = KafkaProducer(bootstrap_servers=boot)
        producer.send("x-" + uuid.uuid4().hex[:6], b"v").get(timeout=30)
        producer.close()
    finally:
        assert broker.stop() is True
    assert broker.status()["running"] is False


def _read_all(bootstrap: str, topic: str, n: int) -> list[bytes]:
    consumer = KafkaConsumer(topic, bootstrap_servers=bootstrap, auto_offset_reset="earliest",
                             enable_auto_commit=False, consumer_timeout_ms=15000)
    try:
        got: list[bytes] = []
        for msg in consumer:
            got.append(msg.value)
            if len(got) == n:
                break
        return got
    finally:
        consumer.close()


def test_stop_and_start_keep_records_cluster_id_and_port(kafka_tools: None, tmp_path: Path) -> None:
    broker = KafkaBroker(BrokerConfig(state_dir=tmp_path / "b", port=0))
    topic = "kept-" + uuid.uuid4().hex[:6]
    boot = broker.start()
    try:
        cluster = broker.cluster_id()
        assert cluster
        producer = KafkaProducer(bootstrap_servers=boot)
        producer.send(topic, b"before-restart").get(timeout=30)
        producer.close()
        assert broker.stop() is True
        assert broker.cluster_id() == cluster  # still on disk while stopped
        assert broker.start() == boot  # same port: clients of the previous run reconnect
        assert broker.cluster_id() == cluster
        assert _read_all(boot, topic, 1) == [b"before-restart"]
        # start(fresh=True) is refused while running, and wipes topics and the cluster id once stopped
        with pytest.raises(BrokerError, match="stop it"):
            broker.start(fresh=True)
        broker.stop()
        boot = broker.start(fresh=True)
        assert broker.cluster_id() not in (None, cluster)
        consumer = KafkaConsumer(bootstrap_servers=boot, request_timeout_ms=10000)
        try:
            assert topic not in consumer.topics()
        finally:
            consumer.close()
    finally:
        broker.stop()


def _cli(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "deploy", "kafka", *args], capture_output=True, text=True,
                          timeout=180, env=env, cwd=Path(__file__).resolve().parents[2])


def test_cli_start_twice_says_already_running_and_status_is_plain(kafka_tools: None, tmp_path: Path) -> None:
    state = str(tmp_path / "cli")
    st = _cli("status", "--state-dir", state)
    assert st.returncode == 3 and "not running" in st.stdout and "no data yet" in st.stdout, st
    first = _cli("start", "--port", "0", "--state-dir", state)
    try:
        assert first.returncode == 0 and "new cluster" in first.stdout, first
        port = json.loads((tmp_path / "cli" / "broker.json").read_text())["port"]
        pid = (tmp_path / "cli" / "broker.pid").read_text().strip()
        again = _cli("start", "--port", "0", "--state-dir", state)
        assert again.returncode == 0, again
        assert f"already running on 127.0.0.1:{port} (pid {pid})" in again.stdout
        st = _cli("status", "--state-dir", state)
        assert st.returncode == 0 and f"running on 127.0.0.1:{port} (pid {pid})" in st.stdout, st
    finally:
        stop = _cli("stop", "--state-dir", state)
    assert stop.returncode == 0 and "stopped" in stop.stdout
    st = _cli("status", "--state-dir", state)
    assert st.returncode == 3 and "not running" in st.stdout and "kept in" in st.stdout, st


def test_make_kafka_status_succeeds_when_nothing_runs(tmp_path: Path) -> None:
    make = shutil.which("make")
    if make is None:
        pytest.skip("make is not installed")
    env = {**os.environ, "STREAMREC_CACHE": str(tmp_path)}  # the default state dir lives under the cache
    proc = subprocess.run([make, "-s", "kafka-status", f"PY={sys.executable}"], capture_output=True, text=True,
                          timeout=120, env=env, cwd=Path(__file__).resolve().parents[2])
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "not running" in proc.stdout and "Error" not in proc.stderr
