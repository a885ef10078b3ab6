"""Teacher and student trainers on the same samples topic through the real broker (external distillation)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from model.batch import collate
from model.snapshot import latest_snapshot, list_snapshots, load_snapshot
from tests.trainer.conftest import make_samples, produce
from tests.trainer.test_trainer_kafka import ROOT, SMALL_MODEL, events, read_topic
from trainer.checkpoint import latest_checkpoint, load_checkpoint
from trainer.distill import DistillConfig, TeacherRecord, wrap_student

pytestmark = [pytest.mark.kafka, pytest.mark.slow]
N = 64


def test_teacher_and_student_trainers_distill_leak_free_and_the_student_snapshot_serves(
        bootstrap: str, topic_prefix: str, tmp_path: Path) -> None:
    topic, scores = topic_prefix + "samples", topic_prefix + "teacher-scores"
    samples = make_samples(N, seed=7)
    produce(bootstrap, topic, [s.encode() for s in samples], keys=[s.user_id.encode() for s in samples])
    common = [sys.executable, "-m", "trainer", "--bootstrap", bootstrap, "--topic", topic, "--batch-samples", "8",
              "--metrics-port", "0", "--threads", "1", "--deadletter-topic", "", "--sample-spec-wait-s", "0",
              "--log-every-s", "0.2", "--exit-when-idle", "4", "--max-seconds", "240", *SMALL_MODEL]
    teacher_dir, student_dir = tmp_path / "teacher", tmp_path / "student"
    teacher_cmd = [*common, "--run-dir", str(teacher_dir), "--teacher-scores-topic", scores, "--trained-log",
                   str(tmp_path / "teacher_ids.txt"), "--snapshot-every-samples", "16", "--snapshot-every-s", "0",
                   "--snapshot-keep", "100", "--snapshots-topic", topic_prefix + "teacher-snapshots"]
    student_cmd = [*common, "--run-dir", str(student_dir), "--distill-from", scores, "--distill-wait-s", "120",
                   "--snapshots-topic", topic_prefix + "student-snapshots", "--model", "ranker"]
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    # Both at once: the student's batches wait for the teacher's records of their samples.
    student = subprocess.Popen(student_cmd, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                               text=True)
    teacher = subprocess.run(teacher_cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert teacher.returncode == 0, teacher.stderr[-3000:]
    _, err = student.communicate(timeout=300)
    assert student.returncode == 0, err[-3000:]

    # Every sample trained by each, the student with its teacher record.
    t_last = [e for e in events(teacher_dir / "metrics.jsonl") if e.get("event") == "metrics"][-1]
    s_last = [e for e in events(student_dir / "metrics.jsonl") if e.get("event") == "metrics"][-1]
    assert t_last["samples_trained"] == s_last["samples_trained"] == N
    assert t_last["teacher_records"]["published"] == N
    assert s_last["teacher_records"] == {"published": 0, "joined": N, "missing": 0}

    # Leak-free: each record was made before the teacher trained on its sample: the sample's place in the teacher's
    # training order is at or after the record's samples_trained, and the snapshot version it names was written
    # before that (its samples_trained <= the record's).
    records = [TeacherRecord.decode(v) for v in read_topic(bootstrap, scores, N)]
    order = {sid: i for i, sid in enumerate((tmp_path / "teacher_ids.txt").read_text().split())}
    snap_trained = {load_snapshot(p).meta.version: load_snapshot(p).meta.samples_trained
                    for p in list_snapshots(teacher_dir / "snapshots")}
    assert {r.sample_id for r in records} == {s.sample_id for s in samples} == set(order)
    by_id = {s.sample_id: s for s in samples}
    for r in records:
        assert order[r.sample_id] >= r.samples_trained
        assert r.event_ids == tuple(t.event_id for t in by_id[r.sample_id].targets)
        assert r.teacher_version == 0 or snap_trained[r.teacher_version] <= r.samples_trained
    assert max(r.teacher_version for r in records) >= 1  # later records name a snapshot

    # The student's snapshot holds the student model alone and scores, in a fresh process, exactly as the student's
    # checkpointed model (main head) scores offline.
    snap = latest_snapshot(student_dir / "snapshots")
    assert snap is not None
    probe = make_samples(10, seed=99)
    probe_file = tmp_path / "probe.jsonl"
    probe_file.write_bytes(b"\n".join(s.encode() for s in probe))
    code = ("import json, sys, torch\nfrom streaming.sample import Sample\nfrom model.batch import collate\n"
            "from model.snapshot import load_snapshot\nsnap = load_snapshot(sys.argv[1])\n"
            "samples = [Sample.decode(x) for x in open(sys.argv[2], 'rb').read().splitlines()]\n"
            "with torch.no_grad():\n    out = snap.model(collate(samples, snap.spec))\n"
            "print(json.dumps({t: v.tolist() for t, v in out.items()}))\n")
    served = subprocess.run([sys.executable, "-c", code, str(snap), str(probe_file)], cwd=ROOT, env=env,
                            capture_output=True, text=True, timeout=120)
    assert served.returncode == 0, served.stderr[-2000:]
    scores_served = json.loads(served.stdout.strip().splitlines()[-1])
    loaded = load_snapshot(snap)
    ck = load_checkpoint(latest_checkpoint(student_dir / "checkpoints"))  # type: ignore[arg-type]
    assert any(k.startswith("aux.") for k in ck["model"]) and any(k.startswith("adapter.") for k in ck["model"])
    offline = wrap_student(type(loaded.model)(loaded.spec, loaded.model.config), DistillConfig())
    offline.load_state_dict(ck["model"])
    offline.eval()
    with torch.no_grad():
        mine = offline(collate(probe, loaded.spec))
    for task, logits in mine.items():
        assert torch.equal(torch.tensor(scores_served[task], dtype=logits.dtype), logits), task
