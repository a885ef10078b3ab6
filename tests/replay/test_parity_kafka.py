"""Parity: the samples the live worker writes for replayed events equal ``run_offline`` on the same events.

A slice of the synthetic dataset goes through ``streaming.replay`` into the real broker, the real worker subprocess
(``python -m streaming worker``) joins and aggregates it, and every sample on the ``samples`` topic must equal its
offline twin (same sample_id, same JSON). Far-future sentinel events on every partition advance each partition's
watermark past the slice, so the live worker releases everything the offline run flushes at the end.
"""

from __future__ import annotations

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
from streaming.datasets.synthetic import SyntheticConfig, generate
from streaming.events import Event, Feedback, Impression, encode_event
from streaming.pipeline import run_offline
from streaming.replay import ReplayConfig, replay
from streaming.sample import Sample

pytestmark = [pytest.mark.kafka, pytest.mark.slow]
ROOT = Path(__file__).resolve().parents[2]
PARTS = 2
CFG = CoreConfig(attribution_window_s=1800.0, allowed_lateness_s=60.0, history_len=64, max_targets=16, span_s=1800.0,
                 late_horizon_s=3600.0)
END_TS = 1e10


def sentinels() -> list[tuple[int, Event]]:
    out: list[tuple[int, Event]] = []
    for p in range(PARTS):
        out.append((p, Impression(f"end-i{p}", END_TS, f"~end{p}", "end", "end", "end")))
        out.append((p, Feedback(f"end-f{p}", END_TS, f"~end{p}", "end", "end", "end", "click")))
    return out


def test_replayed_slice_live_samples_equal_offline(bootstrap: str, topic_prefix: str, tmp_path: Path) -> None:
    # Dense traffic (short duration) so users get several requests inside one span and long histories.
    events = generate(SyntheticConfig(num_users=12, num_items=60, requests_per_user=8, seed=11,
                                      duration_s=6 * 3600.0))[:400]
    expected = {s.sample_id: s for s in run_offline(events + [e for _, e in sentinels()], CFG)
                if not s.user_id.startswith("~end")}
    assert len(expected) >= 20
    assert any(s.history for s in expected.values()) and any(len(s.targets) > 1 for s in expected.values())

    t = {name: f"{topic_prefix}{name}" for name in ("impressions", "feedback", "samples", "deadletter", "user_state")}
    admin = KafkaAdminClient(bootstrap_servers=bootstrap)
    admin.create_topics([NewTopic(t[name], PARTS, 1) for name in ("impressions", "feedback")])
    admin.close()
    log = tmp_path / "worker.log"
    cmd = [sys.executable, "-m", "streaming", "worker", "--bootstrap", bootstrap, "--app-id", f"{topic_prefix}app",
           "--impressions-topic", t["impressions"], "--feedback-topic", t["feedback"],
           "--samples-topic", t["samples"], "--deadletter-topic", t["deadletter"],
           "--user-state-topic", t["user_state"], "--partitions", str(PARTS), "--data-dir", str(tmp_path / "w"),
           "--metrics-port", "0", "--batch-max", "200", "--batch-within-s", "0.05", "--commit-interval-s", "0.5",
           "--window-s", str(CFG.attribution_window_s), "--lateness-s", str(CFG.allowed_lateness_s),
           "--history-len", str(CFG.history_len), "--max-targets", str(CFG.max_targets),
           "--span-s", str(CFG.span_s), "--late-horizon-s", str(CFG.late_horizon_s), "--log-level", "warning"]
    worker = subprocess.Popen(cmd, stdout=log.open("ab"), stderr=subprocess.STDOUT, cwd=ROOT, start_new_session=True)
    consumer = KafkaConsumer(t["samples"], bootstrap_servers=bootstrap, auto_offset_reset="earliest",
                             enable_auto_commit=False)
    try:
        summary = replay(events, ReplayConfig(bootstrap=bootstrap, impressions_topic=t["impressions"],
                                              feedback_topic=t["feedback"]), progress=False)
        assert summary.errors == 0 and summary.events == len(events)
        producer = KafkaProducer(bootstrap_servers=bootstrap)
        for p, e in sentinels():
            topic = t["impressions"] if isinstance(e, Impression) else t["feedback"]
            producer.send(topic, key=e.user_id.encode(), value=encode_event(e), partition=p)
        producer.flush()
        producer.close()
        got: dict[str, Sample] = {}
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline and not set(expected) <= set(got):
            for recs in consumer.poll(timeout_ms=500).values():
                for r in recs:
                    s = Sample.decode(r.value)
                    got[s.sample_id] = s
            assert worker.poll() is None, f"worker exited; log:\n{log.read_text()[-3000:]}"
        missing = set(expected) - set(got)
        assert not missing, f"{len(missing)} of {len(expected)} samples missing; log:\n{log.read_text()[-3000:]}"
        live = {k: v for k, v in got.items() if not v.user_id.startswith("~end")}
        assert set(live) == set(expected)
        for sid, s in live.items():
            assert s.to_json() == expected[sid].to_json()
    finally:
        consumer.close()
        if worker.poll() is None:
            os.killpg(worker.pid, signal.SIGTERM)
            try:
                worker.wait(15)
            except subprocess.TimeoutExpired:
                os.killpg(worker.pid, signal.SIGKILL)
                worker.wait(5)
