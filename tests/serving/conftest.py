"""Serving test helpers: small snapshots from the model engineer's API and a real ``python -m serving`` process."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest
import torch
from kafka import KafkaProducer
from kafka.admin import KafkaAdminClient, NewTopic

from model.presets import PRESETS
from model.snapshot import SnapshotMeta, save_snapshot
from tests.serving.models import small_model

REPO = Path(__file__).resolve().parents[2]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_for(cond: Callable[[], bool], timeout_s: float, what: str, every_s: float = 0.05) -> None:
    """Poll ``cond`` until it holds; fail with ``what`` after ``timeout_s``."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if cond():
            return
        time.sleep(every_s)
    raise AssertionError(f"timed out after {timeout_s}s waiting for {what}")


@dataclass
class Server:
    """A running ``python -m serving`` subprocess."""

    proc: subprocess.Popen[bytes]
    url: str
    log_path: Path

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def metric(self, name: str, labels: dict[str, str] | None = None) -> float | None:
        """One sample value from /metrics (None when absent)."""
        from prometheus_client.parser import text_string_to_metric_families

        text = httpx.get(self.url + "/metrics", timeout=10).text
        for fam in text_string_to_metric_families(text):
            for s in fam.samples:
                if s.name == name and all(s.labels.get(k) == v for k, v in (labels or {}).items()):
                    return float(s.value)
        return None

    def version(self) -> object:
        r = httpx.get(self.url + "/v1/model", timeout=10)
        return r.json()["version"] if r.status_code == 200 else None

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)


def start_server(tmp: Path, snapshot_dir: Path | None, extra: list[str], timeout_s: float = 90.0) -> Server:
    """``python -m serving --port P [--snapshot-dir D] *extra`` (no ``--snapshot-dir`` when ``snapshot_dir`` is None:
    ``extra`` names the models with ``--serve``), once it answers /healthz."""
    port = free_port()
    log_path = tmp / f"serving-{port}.log"
    dir_flag = [] if snapshot_dir is None else ["--snapshot-dir", str(snapshot_dir)]
    with log_path.open("wb") as log:
        proc = subprocess.Popen(
            [sys.executable, "-m", "serving", "--port", str(port), *dir_flag, *extra],
            cwd=REPO, stdout=log, stderr=subprocess.STDOUT, env={**os.environ, "PYTHONUNBUFFERED": "1"})
    server = Server(proc, f"http://127.0.0.1:{port}", log_path)

    def up() -> bool:
        if proc.poll() is not None:
            raise AssertionError(f"serving exited with {proc.returncode}:\n{server.log()}")
        try:
            return httpx.get(server.url + "/healthz", timeout=2).status_code == 200
        except httpx.HTTPError:
            return False

    try:
        wait_for(up, timeout_s, "python -m serving to answer /healthz", every_s=0.2)
    except BaseException:
        server.stop()
        raise
    return server


class Snapshots:
    """Writes versioned snapshots of one model into ``root`` and announces them on a topic: a small hand-built one,
    or (``preset``) a model of that preset."""

    def __init__(self, root: Path, bootstrap: str | None = None, topic: str | None = None,
                 preset: str | None = None) -> None:
        self.root = root
        self.bootstrap = bootstrap
        self.topic = topic
        self.version = 0
        torch.manual_seed(0)
        if preset is None:
            self.model, self.spec = small_model()
        else:
            self.model, self.spec = PRESETS[preset].build().eval(), PRESETS[preset].feature_spec()
        self._producer: KafkaProducer | None = None

    def write(self, perturb: float = 0.0, max_event_ts: float | None = None,
              max_produce_ts: float | None = None) -> tuple[Path, SnapshotMeta]:
        """Save the next version (weights perturbed by ``perturb`` × N(0,1) first) and return (path, meta);
        ``max_produce_ts`` defaults to now (as if the newest trained sample had just been produced)."""
        if perturb:
            with torch.no_grad():
                for p in self.model.parameters():
                    p.add_(torch.randn_like(p) * perturb)
        self.version += 1
        meta = SnapshotMeta(version=self.version, created_at=time.time(),
                            max_event_ts=time.time() if max_event_ts is None else max_event_ts,
                            samples_trained=100 * self.version,
                            max_produce_ts=time.time() if max_produce_ts is None else max_produce_ts)
        path = save_snapshot(self.root, self.model, meta)
        return Path(path), meta

    def announce(self, path: Path, meta: SnapshotMeta) -> None:
        assert self.bootstrap and self.topic
        if self._producer is None:
            self._producer = KafkaProducer(bootstrap_servers=self.bootstrap)
        msg = {"version": meta.version, "path": str(path), "created_at": meta.created_at,
               "max_event_ts": meta.max_event_ts, "samples_trained": meta.samples_trained,
               "max_produce_ts": meta.max_produce_ts}
        self._producer.send(self.topic, json.dumps(msg).encode())
        self._producer.flush(30)

    def close(self) -> None:
        if self._producer is not None:
            self._producer.close()


def create_topics(bootstrap: str, snapshots: str, user_state: str, *more_snapshots: str) -> None:
    """One-partition snapshots topics (``snapshots`` and ``more_snapshots``) and a compacted ``user_state``."""
    admin = KafkaAdminClient(bootstrap_servers=bootstrap)
    try:
        admin.create_topics([
            *(NewTopic(t, num_partitions=1, replication_factor=1) for t in (snapshots, *more_snapshots)),
            NewTopic(user_state, num_partitions=2, replication_factor=1,
                     topic_configs={"cleanup.policy": "compact"}),
        ])
    finally:
        admin.close()


@dataclass
class Stack:
    """A serving process on the real broker plus the snapshot writer and topic names it follows."""

    server: Server
    snaps: Snapshots
    snapshots_topic: str
    user_state_topic: str
    bootstrap: str


@pytest.fixture(scope="session")
def stack(tmp_path_factory: pytest.TempPathFactory, bootstrap: str) -> Iterator[Stack]:
    """``python -m serving`` on the session broker with version 1 already in its snapshot directory.

    Directory polling is off (``--snapshot-poll-s 0``: one scan at start), so every later version reaches the server
    only through the ``snapshots`` topic announcement.
    """
    tmp = tmp_path_factory.mktemp("serving")
    prefix = f"sv{os.getpid()}{time.monotonic_ns() % 10**8}-"
    snapshots_topic, user_state_topic = prefix + "snapshots", prefix + "user_state"
    create_topics(bootstrap, snapshots_topic, user_state_topic)
    snaps = Snapshots(tmp / "snapshots", bootstrap, snapshots_topic)
    snaps.write()
    server = start_server(tmp, snaps.root, ["--bootstrap", bootstrap, "--snapshots-topic", snapshots_topic,
                                            "--user-state-topic", user_state_topic, "--snapshot-poll-s", "0",
                                            "--max-candidates", "300", "--max-body-bytes", str(256 * 1024)])
    try:
        wait_for(lambda: server.version() == 1, 60, "the first snapshot to load")
        yield Stack(server, snaps, snapshots_topic, user_state_topic, bootstrap)
    finally:
        server.stop()
        snaps.close()
