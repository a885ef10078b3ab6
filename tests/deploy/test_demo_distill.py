"""``python -m deploy demo --distill``: a teacher trainer publishing its scores, a student trainer distilling them,
and serving both models with every scenario routed to the student (issue 17, ExFM).

The command-line tests need nothing; the end-to-end test runs the real demo (broker, worker, both trainers,
serving) once on a slice of MovieLens-100K and checks everything on that one run.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from deploy import demo
from deploy.pipeline import Pipeline, PipelineConfig, preset_of, trainer_preset_args
from deploy.prometheus_server import prometheus_service
from deploy.supervisor import Supervisor
from model import PRESETS
from trainer.__main__ import _parser as trainer_parser
from trainer.__main__ import preset_from_args


def test_distill_flags() -> None:
    cfg = demo.config_from_args(["--distill"])
    assert (cfg.distill, cfg.preset, cfg.student_preset, cfg.student_port) == (True, "laptop", "laptop", 9103)
    assert not demo.config_from_args([]).distill
    cfg = demo.config_from_args(["--distill", "--preset", "base", "--student-preset", "small", "--student-port", "0"])
    assert (cfg.preset, cfg.student_preset, cfg.student_port) == ("base", "small", 0)
    with pytest.raises(SystemExit):
        demo.config_from_args(["--distill", "--student-preset", "no-such-preset"])


def test_preset_of_reads_the_last_preset_flag() -> None:
    assert preset_of(("--preset", "base", "--threads", "1", "--preset=small")) == "small"
    assert preset_of(("--threads", "1", "--preset")) == ""


def _distill_pipeline(tmp_path: Path) -> Pipeline:
    cfg = PipelineConfig(run_dir=tmp_path, topic_prefix="p-", distill=True, trainer_port=0, student_port=0,
                         trainer_args=trainer_preset_args("base"), student_args=trainer_preset_args("laptop"))
    return Pipeline(cfg, "127.0.0.1:1", Supervisor(tmp_path))


def test_teacher_and_student_trainers_share_the_samples_and_nothing_else(tmp_path: Path) -> None:
    pipe = _distill_pipeline(tmp_path)
    assert pipe.trainer_names == ("trainer", "student")
    teacher = trainer_parser().parse_args(list(pipe.trainer_service().argv[3:]))
    student_svc = pipe.student_service()
    assert student_svc.name == "student" and student_svc.argv[1:3] == ("-m", "trainer")
    student = trainer_parser().parse_args(list(student_svc.argv[3:]))
    assert teacher.topic == student.topic == "p-samples"
    assert teacher.teacher_scores_topic == student.distill_from == "p-teacher-scores"
    assert (teacher.distill_from, student.teacher_scores_topic) == ("", "")
    assert preset_from_args(teacher) == PRESETS["base"] and preset_from_args(student) == PRESETS["laptop"]
    assert student.distill_wait_s == 30.0  # waits for the (often slower) teacher's records
    assert student.seed != teacher.seed  # not a copy of the teacher when both have the same preset
    # Nothing written twice: directories, snapshots topic, metrics port, dead letters.
    assert (teacher.snapshots_topic, student.snapshots_topic) == ("p-snapshots", "p-student-snapshots")
    assert teacher.run_dir != student.run_dir == tmp_path / "student"
    assert teacher.snapshot_dir == pipe.snapshot_dir and student.snapshot_dir == pipe.student_snapshot_dir
    assert teacher.checkpoint_dir != student.checkpoint_dir
    assert teacher.metrics_port == pipe.trainer_port != student.metrics_port == pipe.student_port
    assert pipe.student_metrics == f"http://127.0.0.1:{pipe.student_port}/metrics"
    assert (teacher.deadletter_topic, student.deadletter_topic) == ("p-deadletter", "")
    # Without --distill: one trainer that publishes nothing.
    plain = Pipeline(PipelineConfig(run_dir=tmp_path), "127.0.0.1:1", Supervisor(tmp_path))
    assert plain.trainer_names == ("trainer",) and plain.student_metrics is None
    assert "--teacher-scores-topic" not in plain.trainer_service().argv


def test_serving_serves_both_models_and_routes_to_the_student(tmp_path: Path) -> None:
    from serving.__main__ import parse_config

    pipe = _distill_pipeline(tmp_path)
    cfg = parse_config(list(pipe.serving_service().argv[3:]))
    models = {m.name: m for m in cfg.sources()}
    assert list(models) == ["student", "teacher"]
    assert (models["student"].snapshot_dir, models["student"].snapshots_topic, models["student"].preset) == (
        pipe.student_snapshot_dir, "p-student-snapshots", "laptop")
    assert (models["teacher"].snapshot_dir, models["teacher"].snapshots_topic, models["teacher"].preset) == (
        pipe.snapshot_dir, "p-snapshots", "base")
    assert cfg.routing().as_dict() == {"*": "student"}
    assert cfg.user_state_topic == "p-user_state"


def test_prometheus_scrapes_the_student_as_its_own_trainer_job(tmp_path: Path) -> None:
    svc = prometheus_service(tmp_path, {"stream": "127.0.0.1:1", "trainer": "127.0.0.1:2", "student": "127.0.0.1:3",
                                        "serving": "127.0.0.1:4"}, port=0, binary="prometheus")
    assert svc is not None
    jobs = {j["job_name"]: j["static_configs"][0] for j in json.loads((tmp_path / "prometheus.yml").read_text())[
        "scrape_configs"]}
    assert jobs["student"] == {"targets": ["127.0.0.1:3"], "labels": {"service": "trainer"}}
    assert jobs["trainer"]["labels"] == {"service": "trainer"}


def test_completion_waits_for_the_student_trained_and_served() -> None:
    from deploy.progress import Completion, Progress, _served_models

    body = json.dumps({"version": 3, "samples_trained": 90, "routes": {"*": "student"},
                       "models": {"student": {"version": 3, "samples_trained": 90}, "teacher": None}}).encode()
    assert _served_models(body) == ({"student": 90.0}, "student")
    assert _served_models(json.dumps({"version": 2, "samples_trained": 7}).encode()) == ({"": 7.0}, "")

    teacher_done: dict[str, Any] = dict(worker_events_in=10, worker_samples_out=100, trainer_samples=100, trainer_snapshot_version=4,
                        serving_version=4, serving_samples_trained=100, distill=True)
    done = Completion(replayed=10)
    assert not done.update(Progress(**teacher_done, student_samples=60), 0.0, 1.0)  # samples settling
    assert not done.update(Progress(**teacher_done, student_samples=60), 2.0, 1.0)  # the student is behind
    assert done.trained_at is None
    student_trained: dict[str, Any] = dict(student_samples=100, student_snapshot_version=5)
    assert not done.update(Progress(**teacher_done, **student_trained, student_serving_version=4,
                                    student_serving_samples_trained=80), 3.0, 1.0)  # not served yet
    assert done.trained_at == 3.0
    assert done.update(Progress(**teacher_done, **student_trained, student_serving_version=5,
                                student_serving_samples_trained=100), 4.0, 1.0)
    assert done.served_version == 5


@pytest.mark.kafka
@pytest.mark.slow
def test_distill_demo_trains_teacher_and_student_and_serves_the_student(tmp_path: Path, kafka_broker: object) -> None:
    """One real ``python -m deploy demo --distill --keep-running`` on a MovieLens slice, every check on that run."""
    import os
    import re
    import signal

    import httpx

    from deploy.progress import metric_by, metric_sum, scrape
    from deploy.supervisor import wait_until
    from tests.deploy.test_demo import _pids_mentioning, running_demo

    run_dir = tmp_path / "demo"
    with running_demo(run_dir, "--distill", "--student-port", "0", columns=200) as (proc, lines):
        flat = " ".join("".join(lines).split())
        assert "student trainer (preset laptop)" in flat

        # Both trainers trained every sample; the student with the teacher's records (its metrics and its log).
        m = re.search(r"teacher trained ([\d,]+) user-level samples .*?published ([\d,]+) teacher records; student "
                      r"trained ([\d,]+) \(([\d,]+) with their teacher record", flat)
        assert m is not None, flat[-4000:]
        teacher_n, published, student_n, joined = (int(g.replace(",", "")) for g in m.groups())
        assert teacher_n == published == student_n > 0 and joined > 0
        urls = dict(re.findall(r"(trainer|student|serving) (http://127\.0\.0\.1:\d+)", flat))
        student = scrape(urls["student"] + "/metrics")
        assert metric_sum(student, "streamrec_trainer_samples_total") == student_n
        assert metric_sum(student, "streamrec_trainer_teacher_records_joined_total") == joined
        assert metric_sum(scrape(urls["trainer"] + "/metrics"),
                          "streamrec_trainer_teacher_records_published_total") == published
        log = [json.loads(x) for x in (run_dir / "student" / "metrics.jsonl").read_text().splitlines()]
        last = [e for e in log if e.get("event") == "metrics"][-1]
        assert last["teacher_records"]["joined"] > 0
        assert any(e.get("event") == "snapshot" for e in log)

        # Serving lists both models and routes every scenario to the student, which answers a request.
        serving = re.search(r"serving API (http://127\.0\.0\.1:\d+)", flat)
        assert serving is not None
        info = httpx.get(serving.group(1) + "/v1/model", timeout=10).json()
        assert info["routes"] == {"*": "student"}
        assert sorted(info["models"]) == ["student", "teacher"]
        assert all(m is not None and m["samples_trained"] > 0 for m in info["models"].values())
        assert info["version"] == info["models"]["student"]["version"]
        assert "serving scores with the student model" in flat
        scenario = sorted(s for (s,) in metric_by(student, "streamrec_trainer_auc", "scenario") if s)[0]
        r = httpx.post(serving.group(1) + "/v1/score", timeout=30, json={
            "user_id": "1", "scenario": scenario, "candidates": [{"item_id": "1"}, {"item_id": "50"}]})
        assert r.status_code == 200, r.text
        assert (r.json()["model_name"], r.json()["model_version"]) == ("student", info["models"]["student"]["version"])

        # Prometheus (when installed) scrapes the student as its own job of service "trainer".
        prom = re.search(r"Prometheus (http://127\.0\.0\.1:\d+)", flat)
        if prom is not None:
            def trainers_up() -> bool:
                targets = httpx.get(prom.group(1) + "/api/v1/targets", timeout=10).json()["data"]["activeTargets"]
                up = {x["labels"]["job"]: (x["labels"].get("service"), x["health"]) for x in targets}
                return (up.get("student"), up.get("trainer")) == (("trainer", "up"), ("trainer", "up"))

            wait_until(trainers_up, 30, 0.5, "Prometheus to scrape the jobs student and trainer (service=trainer)")
        os.kill(proc.pid, signal.SIGINT)
        rc = proc.wait(timeout=90)
    assert rc == 0, "".join(lines[-30:])
    wait_until(lambda: not _pids_mentioning(str(run_dir)), 10, 0.2, "no process of the demo left after Ctrl-C")
