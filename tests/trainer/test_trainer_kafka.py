"""The trainer against the real broker: train, snapshot + announce, serve-equal scores, bad records, SIGKILL resume."""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import signal
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import pytest
import torch
from kafka import KafkaConsumer
from prometheus_client import CollectorRegistry

from model import Ranker, RankerConfig
from model.batch import collate
from model.features import FeatureSpec, TableSpec
from model.snapshot import latest_snapshot, load_snapshot
from streaming import schemas
from streaming.sample import Sample
from tests.trainer.conftest import make_samples, produce
from trainer.checkpoint import latest_checkpoint
from trainer.loop import Trainer, TrainerConfig
from trainer.source import SourceConfig

pytestmark = pytest.mark.kafka
ROOT = Path(__file__).resolve().parents[2]
SMALL_MODEL = ["--max-table-rows", "4096", "--d-model", "32", "--num-blocks", "1", "--target-layers", "1"]


def small_spec() -> FeatureSpec:
    base = FeatureSpec()
    return dataclasses.replace(base, tables={n: TableSpec(min(t.num_embeddings, 4096), t.dim)
                                             for n, t in base.tables.items()})


def read_topic(bootstrap: str, topic: str, n: int, timeout_s: float = 30.0) -> list[bytes]:
    consumer = KafkaConsumer(topic, bootstrap_servers=bootstrap, auto_offset_reset="earliest",
                             enable_auto_commit=False, consumer_timeout_ms=int(timeout_s * 1000))
    got: list[bytes] = []
    try:
        for msg in consumer:
            got.append(msg.value)
            if len(got) >= n:
                break
    finally:
        consumer.close()
    return got


def wait_for(cond, timeout_s: float, what: str, proc: subprocess.Popen | None = None) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if cond():
            return
        if proc is not None and proc.poll() is not None:
            raise AssertionError(f"trainer exited ({proc.returncode}) while waiting for {what}")
        time.sleep(0.1)
    raise AssertionError(f"timed out after {timeout_s}s waiting for {what}")


def events(log: Path) -> list[dict]:
    """The metrics log's events (a line still being written by a live trainer is ignored)."""
    out = []
    for line in log.read_text().splitlines() if log.exists() else []:
        with contextlib.suppress(json.JSONDecodeError):
            out.append(json.loads(line))
    return out


@pytest.mark.slow
def test_trains_snapshots_announces_and_skips_bad_records(bootstrap: str, topic_prefix: str, tmp_path: Path) -> None:
    topic, dead, snaps = topic_prefix + "samples", topic_prefix + "deadletter", topic_prefix + "snapshots"
    samples = make_samples(48, seed=1)
    future = Sample.from_json({**samples[0].to_json(), "sample_id": "v2"} | {"schema_version": 1}).to_json()
    future["schema_version"] = 2
    bad = [b"{not json", json.dumps(future).encode(),
           Sample("empty", "u0", []).encode(), samples[0].encode()]  # malformed, unseen schema, no targets, replay
    values = [s.encode() for s in samples[:24]] + bad + [s.encode() for s in samples[24:]]
    before_produce = time.time()
    produce(bootstrap, topic, values)
    after_produce = time.time()

    spec = small_spec()
    torch.manual_seed(0)
    model = Ranker(spec, RankerConfig(d_model=32, num_blocks=1, target_layers=1))
    registry = CollectorRegistry()
    cfg = TrainerConfig(
        source=SourceConfig(bootstrap=bootstrap, topic=topic, deadletter_topic=dead, batch_samples=16),
        run_dir=tmp_path, snapshots_topic=snaps, snapshot_every_s=0.5, log_every_s=0.5,
    )
    trainer = Trainer(cfg, model, spec, registry)
    summary = trainer.run(exit_when_idle_s=2.0, max_seconds=120)

    assert summary.samples_trained == 48
    assert summary.targets_trained == sum(s.num_targets for s in samples)
    assert summary.skipped == {"invalid_json": 1, "schema_version": 1, "no_targets": 1, "duplicate": 1}
    for reason in summary.skipped:
        assert registry.get_sample_value("streamrec_trainer_skipped_total", {"reason": reason}) == 1.0
    assert registry.get_sample_value("streamrec_trainer_samples_total") == 48.0
    assert registry.get_sample_value("streamrec_trainer_auc", {"scope": "overall", "scenario": "", "task": "click",
                                                               "window": "lifetime"}) is not None
    # The bad records went to the dead-letter topic with their reasons (a replay is not bad data).
    dl = [json.loads(v) for v in read_topic(bootstrap, dead, 3)]
    assert sorted(d["reason"] for d in dl) == ["invalid_json", "no_targets", "schema_version"]
    for d in dl:  # each fits its published schema (streaming/schemas/deadletter.trainer.<reason>.schema.json)
        assert schemas.deadletter_schema(d) == f"deadletter.trainer.{d['reason']}"
        schemas.validate(schemas.deadletter_schema(d), d)

    # The final snapshot exists, was announced, and carries the training state.
    snap = latest_snapshot(tmp_path / "snapshots")
    assert snap is not None and trainer.last_snapshot_path == snap
    announced = [json.loads(v) for v in read_topic(bootstrap, snaps, trainer.snapshot_version)]
    last = announced[-1]
    for a in announced:
        schemas.validate("snapshot_announcement", a)
    assert last["version"] == trainer.snapshot_version >= 1
    assert Path(last["path"]) == snap.resolve()
    assert last["samples_trained"] == 48
    assert last["max_event_ts"] == max(s.max_event_ts for s in samples)
    # The produce time (Kafka record timestamps, wall clock) of the newest samples record, for serving's data
    # freshness: the records were produced in [before_produce, after_produce] (ms resolution).
    assert before_produce - 0.001 <= last["max_produce_ts"] <= after_produce + 0.001
    assert load_snapshot(snap).meta.max_produce_ts == last["max_produce_ts"]
    assert [a["version"] for a in announced] == list(range(1, trainer.snapshot_version + 1))

    # A fresh process loads the snapshot and scores exactly like the trainer's model.
    probe = make_samples(12, seed=99)
    probe_file = tmp_path / "probe.jsonl"
    probe_file.write_bytes(b"\n".join(s.encode() for s in probe))
    code = (
        "import json, sys, torch\n"
        "from streaming.sample import Sample\n"
        "from model.batch import collate\n"
        "from model.snapshot import load_snapshot\n"
        "snap = load_snapshot(sys.argv[1])\n"
        "samples = [Sample.decode(line) for line in open(sys.argv[2], 'rb').read().splitlines()]\n"
        "with torch.no_grad():\n"
        "    out = snap.model(collate(samples, snap.spec))\n"
        "print(json.dumps({t: v.tolist() for t, v in out.items()}))\n"
    )
    proc = subprocess.run([sys.executable, "-c", code, str(snap), str(probe_file)], cwd=ROOT, capture_output=True,
                          text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    served = json.loads(proc.stdout.strip().splitlines()[-1])
    trainer.model.eval()
    with torch.no_grad():
        mine = trainer.model(collate(probe, spec))
    for task, logits in mine.items():
        assert torch.equal(torch.tensor(served[task], dtype=logits.dtype), logits), task


@pytest.mark.slow
def test_sigkill_resume_trains_every_sample_exactly_once(bootstrap: str, topic_prefix: str, tmp_path: Path) -> None:
    topic = topic_prefix + "samples"
    first, second = make_samples(480, seed=2), make_samples(80, seed=3, start=480)
    produce(bootstrap, topic, [s.encode() for s in first], partitions=2,
            keys=[s.user_id.encode() for s in first])
    run_dir = tmp_path / "run"
    trained_log = tmp_path / "trained_ids.txt"
    cmd = [sys.executable, "-m", "trainer", "--bootstrap", bootstrap, "--topic", topic, "--run-dir", str(run_dir),
           "--trained-log", str(trained_log), "--batch-samples", "1", "--checkpoint-every-s", "0.5",
           "--snapshot-every-s", "0", "--log-every-s", "0.1", "--metrics-port", "0", "--threads", "1",
           "--snapshots-topic", topic_prefix + "snapshots", "--deadletter-topic", "", *SMALL_MODEL]
    env = {**os.environ, "PYTHONPATH": str(ROOT)}

    def trained_now() -> int:
        return max((e["samples_trained"] for e in events(run_dir / "metrics.jsonl") if "samples_trained" in e),
                   default=0)

    def committed() -> int:
        return len(trained_log.read_text().splitlines()) if trained_log.exists() else 0

    # Kill it right after it trained past its last checkpoint: that work must be rolled back and redone once.
    # One sample per step and frequent checkpoints keep the stream several checkpoints long even on a fast box.
    p1 = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        wait_for(lambda: latest_checkpoint(run_dir / "checkpoints") is not None and 0 < committed() < trained_now(),
                 180, "training past a checkpoint", p1)
    finally:
        p1.send_signal(signal.SIGKILL)
        p1.wait(timeout=30)
    trained_before_kill, committed_at_kill = trained_now(), committed()
    assert 0 < committed_at_kill < trained_before_kill < len(first), "not killed mid-stream past a checkpoint"

    # More data while it is down, including replays of already-trained samples (same sample_id).
    replays = first[:10]
    produce(bootstrap, topic, [s.encode() for s in second + replays],
            keys=[s.user_id.encode() for s in second + replays])
    p2 = subprocess.run([*cmd, "--exit-when-idle", "3", "--max-seconds", "240", "--snapshot-every-s", "1"], cwd=ROOT, env=env,
                        capture_output=True, text=True, timeout=300)
    assert p2.returncode == 0, p2.stderr[-3000:]

    everything = first + second
    ids = trained_log.read_text().splitlines()
    counts = Counter(ids)
    assert set(counts) == {s.sample_id for s in everything}
    assert max(counts.values()) == 1 and len(ids) == len(everything)  # exactly once in total

    evs = events(run_dir / "metrics.jsonl")
    starts = [e for e in evs if e["event"] == "start"]
    assert len(starts) == 2 and starts[0]["resumed_from"] is None
    assert starts[1]["resumed_from"] is not None
    assert starts[1]["samples_trained"] == committed_at_kill < trained_before_kill  # uncheckpointed work rolled back
    stop = [e for e in evs if e["event"] == "stop"][-1]
    assert stop["samples_trained"] == len(everything)
    assert stop["skipped"].get("duplicate", 0) >= len(replays)
    # Progressive metrics continued from the checkpoint: the lifetime count covers every target exactly once.
    final = [e for e in evs if e["event"] == "metrics"][-1]
    total_targets = sum(s.num_targets for s in everything)
    assert final["progressive"]["overall"]["click"]["lifetime"]["count"] == total_targets
    assert 0.0 <= final["progressive"]["overall"]["click"]["lifetime"]["auc"] <= 1.0
