"""Teacher and student trainers on the same samples topic through the real broker (external distillation), and
``python -m serving`` serving both models over HTTP (issue 17's "Done when")."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
import torch
from kafka import KafkaProducer
from kafka.admin import KafkaAdminClient, NewTopic

from model.batch import collate
from model.snapshot import latest_snapshot, list_snapshots, load_snapshot
from streaming.cross import CrossCounters, CrossSpec
from streaming.sample import Behavior
from streaming.user_state import Candidate, UserState, build_request_sample
from tests.serving.conftest import Server, start_server, wait_for
from tests.trainer.conftest import make_samples, produce
from tests.trainer.test_trainer_kafka import ROOT, SMALL_MODEL, events, read_topic
from trainer.checkpoint import latest_checkpoint, load_checkpoint
from trainer.distill import DistillConfig, TeacherRecord, wrap_student

pytestmark = [pytest.mark.kafka, pytest.mark.slow]
N = 64
USER = "u3"  # a user of make_samples whose state serving holds


def _create_topics(bootstrap: str, snapshot_topics: list[str], user_state: str) -> None:
    admin = KafkaAdminClient(bootstrap_servers=bootstrap)
    try:
        admin.create_topics([NewTopic(t, 1, 1) for t in snapshot_topics] + [
            NewTopic(user_state, 2, 1, topic_configs={"cleanup.policy": "compact"})])
    finally:
        admin.close()


def _user_state(t_end: float) -> UserState:
    """A history the model can read: the sample features' categories, one click per scenario, before ``t_end``."""
    spec = CrossSpec(category_key="cat")
    counters = CrossCounters()
    behaviors = []
    for i in range(12):
        ts, scen, cat = t_end - (12 - i) * 60.0, ("home", "search", "detail")[i % 3], f"c{i % 3}"
        behaviors.append(Behavior(f"i{2 * i}", scen, "click", ts, {"cat": cat}))
        counters.add("imp", scen, cat, ts - 1.0)
        counters.add("click", scen, cat, ts)
    return UserState(USER, user={"age": "2"}, behaviors=behaviors, counters=counters, cross=spec, updated_ts=t_end)


def _score(server: Server, scenario: str) -> dict[str, Any]:
    context = {"dev": "web"}
    cands = [Candidate(f"i{k}", {"cat": f"c{k % 3}"}, {}, {"price": float(k)}) for k in (2, 5, 8, 11, 14)]
    body = {"user_id": USER, "scenario": scenario, "context": context,
            "candidates": [{"item_id": c.item_id, "item": c.item, "dense": c.dense} for c in cands]}
    r = httpx.post(server.url + "/v1/score", json=body, timeout=30)
    assert r.status_code == 200, r.text
    out: dict[str, Any] = r.json()
    # The request's sample, rebuilt offline from the same inputs (state, candidates, context, request time).
    out["sample"] = build_request_sample(_user_state(1_700_001_000.0), USER, scenario, cands, context,
                                         float(out["request_ts"]))
    return out


def _assert_scores(out: dict[str, Any], logits: dict[str, torch.Tensor]) -> None:
    assert set(logits) == set(out["candidates"][0]["scores"])
    for task, lg in logits.items():
        offline = torch.sigmoid(lg.float()).tolist()
        online = [c["scores"][task] for c in out["candidates"]]
        assert online == pytest.approx(offline, rel=1e-5, abs=1e-6), task


@dataclass
class Topics:
    samples: str
    scores: str
    teacher_snapshots: str
    student_snapshots: str
    user_state: str


@pytest.fixture
def topics(topic_prefix: str) -> Topics:
    p = topic_prefix
    return Topics(p + "samples", p + "teacher-scores", p + "teacher-snapshots", p + "student-snapshots",
                  p + "user_state")


@pytest.fixture
def serving(bootstrap: str, topics: Topics, tmp_path: Path) -> Iterator[Server]:
    """``python -m serving`` started before the trainers, as in production: both models, every scenario but
    "detail" scored by the student. Directories are scanned only at start (--snapshot-poll-s 0, both still empty):
    every snapshot comes through its trainer's announcement on its own topic and is hot-swapped in."""
    _create_topics(bootstrap, [topics.teacher_snapshots, topics.student_snapshots], topics.user_state)
    server = start_server(tmp_path, None, [
        "--bootstrap", bootstrap, "--serve", f"student={tmp_path / 'student' / 'snapshots'},"
                                             f"topic={topics.student_snapshots}",
        "--serve", f"teacher={tmp_path / 'teacher' / 'snapshots'},topic={topics.teacher_snapshots}",
        "--route", "*=student", "--route", "detail=teacher", "--user-state-topic", topics.user_state,
        "--samples-topic", topics.samples, "--snapshot-poll-s", "0", "--log-level", "warning"])
    try:
        yield server
    finally:
        server.stop()


def test_teacher_and_student_trainers_distill_leak_free_and_serving_scores_with_the_student(
        bootstrap: str, topics: Topics, serving: Server, tmp_path: Path) -> None:
    topic, scores = topics.samples, topics.scores
    samples = make_samples(N, seed=7)
    assert USER in {s.user_id for s in samples}
    produce(bootstrap, topic, [s.encode() for s in samples], keys=[s.user_id.encode() for s in samples])
    teacher_dir, student_dir = tmp_path / "teacher", tmp_path / "student"
    common = [sys.executable, "-m", "trainer", "--bootstrap", bootstrap, "--topic", topic, "--batch-samples", "8",
              "--metrics-port", "0", "--threads", "1", "--deadletter-topic", "", "--sample-spec-wait-s", "0",
              "--log-every-s", "0.2", "--exit-when-idle", "4", "--max-seconds", "240", *SMALL_MODEL]
    teacher_cmd = [*common, "--run-dir", str(teacher_dir), "--teacher-scores-topic", scores, "--trained-log",
                   str(tmp_path / "teacher_ids.txt"), "--snapshot-every-samples", "16", "--snapshot-every-s", "0",
                   "--snapshot-keep", "100", "--snapshots-topic", topics.teacher_snapshots]
    student_cmd = [*common, "--run-dir", str(student_dir), "--distill-from", scores, "--distill-wait-s", "120",
                   "--snapshots-topic", topics.student_snapshots,
                   "--model", "ranker"]
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

    # Serving hot-swapped in each trainer's final snapshot (announced on its topic) and lists both models and routes.
    student_snap, teacher_snap = latest_snapshot(student_dir / "snapshots"), latest_snapshot(teacher_dir / "snapshots")
    assert student_snap is not None and teacher_snap is not None
    want = {"student": load_snapshot(student_snap).meta.version, "teacher": load_snapshot(teacher_snap).meta.version}

    def served_versions() -> dict[str, Any]:
        r = httpx.get(serving.url + "/v1/model", timeout=10)
        return {n: m and m["version"] for n, m in r.json()["models"].items()} if r.status_code == 200 else {}

    wait_for(lambda: served_versions() == want, 60, f"serving to swap in {want}", every_s=0.2)
    info = httpx.get(serving.url + "/v1/model", timeout=10).json()
    assert info["routes"] == {"*": "student", "detail": "teacher"}
    assert info["version"] == want["student"]  # the top level is the default route's model
    assert Path(info["models"]["student"]["path"]) == student_snap.resolve()
    assert Path(info["models"]["teacher"]["path"]) == teacher_snap.resolve()

    # A user whose state serving holds (from the compacted user_state topic, as the worker writes it).
    producer = KafkaProducer(bootstrap_servers=bootstrap)
    producer.send(topics.user_state, key=USER.encode(), value=_user_state(1_700_001_000.0).encode())
    producer.flush(30)
    producer.close()
    wait_for(lambda: _score(serving, "home")["cold_start"] is False, 30, "the user's state to reach serving")

    # The student serves every scenario but "detail", exactly as the student's checkpointed model (main head)
    # scores the same request sample offline: the snapshot holds the student model alone, the aux head and adapter
    # stay in the checkpoint.
    ck = load_checkpoint(latest_checkpoint(student_dir / "checkpoints"))  # type: ignore[arg-type]
    assert any(k.startswith("aux.") for k in ck["model"]) and any(k.startswith("adapter.") for k in ck["model"])
    loaded = load_snapshot(student_snap)
    offline = wrap_student(type(loaded.model)(loaded.spec, loaded.model.config), DistillConfig())
    offline.load_state_dict(ck["model"])
    offline.eval()
    for scenario in ("home", "search"):
        out = _score(serving, scenario)
        assert (out["model_name"], out["model_version"], out["cold_start"]) == ("student", want["student"], False)
        assert len(out["sample"].history) == 12
        with torch.no_grad():
            _assert_scores(out, offline(collate([out["sample"]], loaded.spec)))

    # "detail" is routed to the teacher: its served snapshot's scores.
    out = _score(serving, "detail")
    assert (out["model_name"], out["model_version"]) == ("teacher", want["teacher"])
    served_teacher = load_snapshot(teacher_snap)
    with torch.no_grad():
        _assert_scores(out, served_teacher.model.eval()(collate([out["sample"]], served_teacher.spec)))
