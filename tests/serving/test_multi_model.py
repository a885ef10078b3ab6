"""Two named models in one ``python -m serving`` on the real broker, through real HTTP: a ``laptop``-preset student
(the default route) and a ``medium``-preset teacher (routed scenario ``search``), each from its own snapshot
directory and announcement topic. Each scenario is scored by its model (equal to that model's offline scores),
readiness waits for both, ``/v1/model`` lists both, and each hot-swaps on its own: a new student leaves the
teacher's version, a snapshot rejected for the teacher leaves both serving."""

from __future__ import annotations

import os
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
import torch

from model.batch import collate
from model.snapshot import load_snapshot
from streaming.user_state import Candidate, build_request_sample
from tests.serving.conftest import Server, Snapshots, create_topics, start_server, wait_for
from tests.serving.test_api import req

pytestmark = [pytest.mark.kafka, pytest.mark.slow]

STUDENT_PRESET, TEACHER_PRESET = "laptop", "medium"


@dataclass
class TwoModels:
    server: Server
    student: Snapshots
    teacher: Snapshots
    tmp: Path


@pytest.fixture(scope="module")
def two(tmp_path_factory: pytest.TempPathFactory, bootstrap: str) -> Iterator[TwoModels]:
    """The server with the student's version 1 in its directory and no teacher snapshot yet; directory polling off
    (one scan at start), so every later snapshot arrives through its model's own topic."""
    tmp = tmp_path_factory.mktemp("two-models")
    prefix = f"mm{os.getpid()}{time.monotonic_ns() % 10**8}-"
    s_topic, t_topic, user_state = prefix + "student-snapshots", prefix + "teacher-snapshots", prefix + "user_state"
    create_topics(bootstrap, s_topic, user_state, t_topic)
    student = Snapshots(tmp / "student", bootstrap, s_topic, preset=STUDENT_PRESET)
    teacher = Snapshots(tmp / "teacher", bootstrap, t_topic, preset=TEACHER_PRESET)
    student.write()
    server = start_server(tmp, None, [
        "--bootstrap", bootstrap, "--user-state-topic", user_state, "--samples-topic", prefix + "samples",
        "--snapshot-poll-s", "0",
        "--serve", f"student={student.root},topic={s_topic},preset={STUDENT_PRESET}",
        "--serve", f"teacher={teacher.root},topic={t_topic},preset={TEACHER_PRESET}",
        "--route", "search=teacher"])
    try:
        yield TwoModels(server, student, teacher, tmp)
    finally:
        server.stop()
        student.close()
        teacher.close()


def get(server: Server, path: str) -> httpx.Response:
    return httpx.get(server.url + path, timeout=10)


def score(server: Server, scenario: str) -> dict[str, Any]:
    r = httpx.post(server.url + "/v1/score", json=req(6, user=f"mm-{scenario}") | {"scenario": scenario}, timeout=30)
    assert r.status_code == 200, r.text
    return dict(r.json())


def offline(path: str, out: dict[str, Any]) -> list[dict[str, float]]:
    """The snapshot's scores for ``out``'s request (a cold-start user) through load_snapshot + forward."""
    loaded = load_snapshot(Path(path))
    body = req(6, user=out["user_id"])
    cands = [Candidate(c["item_id"], {k: str(v) for k, v in c["item"].items()}, {},
                       {k: float(v) for k, v in c["dense"].items()}) for c in body["candidates"]]
    sample = build_request_sample(None, out["user_id"], out["scenario"], cands, {"hour": "20"}, out["request_ts"])
    with torch.no_grad():
        logits = loaded.model.eval()(collate([sample], loaded.spec))
    probs = {task: torch.sigmoid(lg.float()).tolist() for task, lg in logits.items()}
    return [{task: probs[task][i] for task in probs} for i in range(len(cands))]


def assert_scored_by(server: Server, out: dict[str, Any], name: str, version: int) -> None:
    assert (out["model_name"], out["model_version"]) == (name, version)
    path = get(server, "/v1/model").json()["models"][name]["path"]
    for online, expected in zip([c["scores"] for c in out["candidates"]], offline(path, out), strict=True):
        assert online == pytest.approx(expected, rel=1e-5, abs=1e-6)


def versions(server: Server) -> dict[str, Any]:
    return dict(get(server, "/readyz").json()["models"])


def test_each_scenario_is_scored_by_its_model_and_each_model_swaps_on_its_own(two: TwoModels) -> None:
    server = two.server
    wait_for(lambda: versions(server)["student"] == 1, 60, "the student's first snapshot")

    # Readiness waits for both routed models; the default route (student) already serves.
    ready = get(server, "/readyz")
    assert ready.status_code == 503 and ready.json() == {"ready": False, "model_version": 1,
                                                         "models": {"student": 1, "teacher": None}}
    info = get(server, "/v1/model").json()
    assert info["version"] == 1 and info["models"]["teacher"] is None
    assert info["routes"] == {"*": "student", "search": "teacher"}
    r = httpx.post(server.url + "/v1/score", json=req(2) | {"scenario": "search"}, timeout=30)
    assert r.status_code == 503 and r.json()["error"]["code"] == "no_model"
    assert_scored_by(server, score(server, "home"), "student", 1)

    # The teacher's first snapshot, announced on its own topic: ready, and "search" is the teacher's.
    path, meta = two.teacher.write()
    two.teacher.announce(path, meta)
    wait_for(lambda: get(server, "/readyz").status_code == 200, 60, "readiness once the teacher serves")
    assert versions(server) == {"student": 1, "teacher": 1}
    assert_scored_by(server, score(server, "search"), "teacher", 1)
    assert_scored_by(server, score(server, "cart"), "student", 1)  # no route of its own: the default
    info = get(server, "/v1/model").json()
    teacher_path = info["models"]["teacher"]["path"]
    assert teacher_path == str(path) and info["models"]["student"]["version"] == 1
    assert {k: info[k] for k in ("version", "path", "tasks")} == {
        k: info["models"]["student"][k] for k in ("version", "path", "tasks")}

    # A new student swaps in; the teacher's version and scores stay.
    home_before = score(server, "home")
    path, meta = two.student.write(perturb=0.05)
    two.student.announce(path, meta)
    wait_for(lambda: versions(server)["student"] == 2, 60, "the student's version 2")
    assert versions(server)["teacher"] == 1 and get(server, "/v1/model").json()["version"] == 2
    home = score(server, "home")
    assert_scored_by(server, home, "student", 2)
    assert [c["scores"] for c in home["candidates"]] != [c["scores"] for c in home_before["candidates"]]
    assert get(server, "/v1/model").json()["models"]["teacher"]["path"] == teacher_path
    assert_scored_by(server, score(server, "search"), "teacher", 1)

    # A student-preset snapshot announced for the teacher is rejected for the teacher only.
    stray = Snapshots(two.tmp / "stray", preset=STUDENT_PRESET)
    stray.version = 9
    path, meta = stray.write()
    two.teacher.announce(path, meta)
    wait_for(lambda: (server.metric("streamrec_serving_swap_failures_total",
                                    {"model": "teacher", "reason": "wrong_preset"}) or 0) >= 1,
             60, "the teacher's wrong_preset rejection")
    assert versions(server) == {"student": 2, "teacher": 1} and get(server, "/readyz").status_code == 200
    assert server.metric("streamrec_serving_swap_failures_total", {"model": "student"}) is None
    assert_scored_by(server, score(server, "search"), "teacher", 1)

    for name, version, swaps in (("student", 2, 2), ("teacher", 1, 1)):
        assert server.metric("streamrec_serving_model_version", {"model": name}) == float(version)
        assert server.metric("streamrec_serving_swaps_total", {"model": name}) == float(swaps)
        assert server.metric("streamrec_serving_model_loaded", {"model": name}) == 1.0
        assert 0.0 <= (server.metric("streamrec_serving_model_age_seconds", {"model": name}) or -1.0) < 120.0
    assert (server.metric("streamrec_serving_snapshot_announcements_total",
                          {"model": "teacher", "outcome": "valid"}) or 0) >= 2
