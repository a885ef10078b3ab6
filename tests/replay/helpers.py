"""A real ``python -m streaming worker`` subprocess for the replay tests, and reading its samples topic."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

from kafka import KafkaConsumer
from kafka.admin import KafkaAdminClient, NewTopic

from streaming.config import CoreConfig
from streaming.sample import Sample

ROOT = Path(__file__).resolve().parents[2]
TOPICS = ("impressions", "feedback", "samples", "deadletter", "user_state")


def topics(prefix: str) -> dict[str, str]:
    return {name: f"{prefix}{name}" for name in TOPICS}


def create_topics(bootstrap: str, t: dict[str, str], partitions: int) -> None:
    """Every topic up front, so no consumer's metadata request auto-creates one with the broker's default count."""
    admin = KafkaAdminClient(bootstrap_servers=bootstrap)
    try:
        admin.create_topics([NewTopic(topic, partitions, 1, topic_configs={"cleanup.policy": "compact"}
                                      if name == "user_state" else {}) for name, topic in t.items()])
    finally:
        admin.close()


def start_worker(bootstrap: str, t: dict[str, str], app_id: str, partitions: int, work: Path,
                 core: CoreConfig | None = None) -> tuple[subprocess.Popen[bytes], Path]:
    """The worker in its own process group (``stop_worker`` ends it); returns it and its log file."""
    log = work / "worker.log"
    cmd = [sys.executable, "-m", "streaming", "worker", "--bootstrap", bootstrap, "--app-id", app_id,
           "--impressions-topic", t["impressions"], "--feedback-topic", t["feedback"],
           "--samples-topic", t["samples"], "--deadletter-topic", t["deadletter"],
           "--user-state-topic", t["user_state"], "--partitions", str(partitions), "--data-dir", str(work / "w"),
           "--metrics-port", "0", "--batch-max", "200", "--batch-within-s", "0.05", "--commit-interval-s", "0.5",
           "--log-level", "warning"]
    if core is not None:
        cmd += ["--window-s", str(core.attribution_window_s), "--lateness-s", str(core.allowed_lateness_s),
                "--history-len", str(core.history_len), "--max-targets", str(core.max_targets),
                "--span-s", str(core.span_s), "--late-horizon-s", str(core.late_horizon_s)]
    proc = subprocess.Popen(cmd, stdout=log.open("ab"), stderr=subprocess.STDOUT, cwd=ROOT, start_new_session=True)
    return proc, log


def stop_worker(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is None:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(15)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(5)


def read_samples(bootstrap: str, topic: str, done: Callable[[dict[str, Sample]], bool], timeout_s: float,
                 worker: subprocess.Popen[bytes], log: Path) -> dict[str, Sample]:
    """Samples of ``topic`` by sample_id, read until ``done(samples)`` or ``timeout_s`` (then returns what it has)."""
    consumer = KafkaConsumer(topic, bootstrap_servers=bootstrap, auto_offset_reset="earliest",
                             enable_auto_commit=False)
    got: dict[str, Sample] = {}
    deadline = time.monotonic() + timeout_s
    try:
        while time.monotonic() < deadline and not done(got):
            for recs in consumer.poll(timeout_ms=500).values():
                for r in recs:
                    s = Sample.decode(r.value)
                    got[s.sample_id] = s
            assert worker.poll() is None, f"worker exited; log:\n{log.read_text()[-3000:]}"
    finally:
        consumer.close()
    return got
