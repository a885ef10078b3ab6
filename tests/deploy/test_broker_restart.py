"""The pipeline rides through a broker restart: worker, trainer and serving keep running while the broker is stopped
(SIGTERM) and started again on the same port with the same data, and the stream reconciles afterwards.

Half of a small synthetic log is replayed, serving gets a first snapshot, the broker goes down for ``DOWN_S`` while
serving keeps scoring from the snapshot and the user states it holds, the broker comes back, the rest is replayed
with end-of-stream markers. Then every impression is a target in exactly one sample, every sample was trained
exactly once (the trainer's trained-ids log, committed with its checkpoints), the worker's consumer group has
committed the end of both input topics, and serving's user-state replica applied every ``user_state`` record.
"""

from __future__ import annotations

import dataclasses
import json
import time
from collections import Counter
from pathlib import Path

import httpx
import pytest

from deploy.kafka import BrokerConfig, KafkaBroker
from deploy.pipeline import LAPTOP_TRAINER_ARGS, Pipeline, PipelineConfig
from deploy.progress import Completion, Progress, metric_sum, scrape
from deploy.supervisor import Supervisor, wait_until
from streaming.datasets.synthetic import SyntheticConfig, generate
from streaming.events import Impression
from streaming.replay import EOS_USER_PREFIX, ReplayConfig, replay
from streaming.sample import Sample
from tests.deploy.test_pipeline import _read_topic

pytestmark = [pytest.mark.kafka, pytest.mark.slow]

DOWN_S = 12.0  # how long the broker stays down (serving is probed throughout)
SERVICES = ("worker", "trainer", "serving")


def _committed(bootstrap: str, group: str, topics: tuple[str, ...]) -> int:
    """Sum of ``group``'s committed offsets over every partition of ``topics``."""
    from kafka import KafkaConsumer, TopicPartition

    consumer = KafkaConsumer(bootstrap_servers=bootstrap, group_id=group, enable_auto_commit=False)
    try:
        return sum(consumer.committed(TopicPartition(t, p)) or 0
                   for t in topics for p in consumer.partitions_for_topic(t) or ())
    finally:
        consumer.close()


def _user_states_applied(pipe: Pipeline) -> float:
    return metric_sum(scrape(f"{pipe.serving_url}/metrics"), "streamrec_serving_user_state_updates_total")


def test_worker_trainer_and_serving_ride_through_a_broker_restart(kafka_tools: None, tmp_path: Path,
                                                                  topic_prefix: str) -> None:
    events = generate(SyntheticConfig(num_users=60, requests_per_user=8, items_per_request=4))  # ~3.4k events
    half = len(events) // 2
    broker = KafkaBroker(BrokerConfig(state_dir=tmp_path / "kafka", port=0))
    bootstrap = broker.start()
    try:
        with Supervisor(tmp_path) as sup:
            trained_log = tmp_path / "trained-ids.txt"
            cfg = PipelineConfig(run_dir=tmp_path, topic_prefix=topic_prefix, worker_port=0, trainer_port=0,
                                 serving_port=0, with_prometheus=False, snapshot_every_s=2.0,
                                 trainer_args=(*LAPTOP_TRAINER_ARGS, "--trained-log", str(trained_log)))
            pipe = Pipeline(cfg, bootstrap, sup)
            pipe.create_topics()
            pipe.start()
            rc = ReplayConfig(bootstrap=bootstrap, impressions_topic=cfg.topic("impressions"),
                              feedback_topic=cfg.topic("feedback"), eos_markers=False)
            first = replay(events[:half], rc, progress=False)
            assert first.errors == 0, first.line()

            # ---- mid-stream: serving has a snapshot and the user states written so far; then the broker goes down
            wait_until(lambda: pipe.progress().serving_version > 0, 120, 0.25, "a first snapshot in serving",
                       alive=sup.check_alive)
            wait_until(lambda: _user_states_applied(pipe) >= pipe.topic_end_offsets("user_state") > 0, 60, 0.25,
                       "serving to apply the user states written so far", alive=sup.check_alive)
            served_before = float(httpx.get(f"{pipe.serving_url}/v1/model", timeout=10).json()["version"])
            known_user = Sample.decode(_read_topic(bootstrap, cfg.topic("samples"))[0]).user_id
            assert broker.stop() is True and not broker.running()

            down_until = time.monotonic() + DOWN_S
            answered = 0
            with httpx.Client(base_url=pipe.serving_url, timeout=10) as client:
                while time.monotonic() < down_until:
                    r = client.post("/v1/score", json={"user_id": known_user, "scenario": "home",
                                                       "candidates": [{"item_id": "1"}, {"item_id": "2"}]})
                    assert r.status_code == 200, r.text
                    body = r.json()
                    assert float(body["model_version"]) >= served_before  # its last snapshot (or a newer one)
                    assert body["cold_start"] is False  # user states it held survive the outage
                    answered += 1
                    for name in SERVICES:
                        assert sup.exited(name) is None, f"{name} exited during the outage"
                    time.sleep(0.5)
            assert answered >= 10

            # ---- the same port, the same data: the rest of the stream, then the end-of-stream markers
            assert broker.start() == bootstrap
            second = replay(events[half:], dataclasses.replace(rc, eos_markers=True), progress=False)
            assert second.errors == 0 and second.markers > 0, second.line()
            done = Completion(replayed=first.events + second.events + second.markers)
            state: dict[str, Progress] = {}

            def finished() -> bool:
                state["p"] = pipe.progress()
                return done.update(state["p"], time.time(), settle_s=4.0)

            wait_until(finished, 180, 0.5, "the whole stream to be trained and served", alive=sup.check_alive)
            ends = pipe.topic_end_offsets("impressions", "feedback")
            wait_until(lambda: _committed(bootstrap, f"{topic_prefix}streamrec-worker",
                                          (cfg.topic("impressions"), cfg.topic("feedback"))) == ends, 60, 0.5,
                       "the worker to commit the end of its input topics", alive=sup.check_alive)
            wait_until(lambda: _user_states_applied(pipe) >= pipe.topic_end_offsets("user_state"), 60, 0.5,
                       "serving to apply every user_state record", alive=sup.check_alive)
            for name in SERVICES:
                assert sup.exited(name) is None, f"{name} is no longer running"

            # ---- every impression released once; every sample trained once
            produced = {e.event_id for e in events if isinstance(e, Impression)}
            assert _impression_ids(bootstrap, cfg.topic("impressions")) == produced
            samples: dict[str, Sample] = {}
            for raw in _read_topic(bootstrap, cfg.topic("samples")):
                s = Sample.decode(raw)
                samples[s.sample_id] = s  # a re-emitted sample has the same id
            targets = Counter(t.event_id for s in samples.values() for t in s.targets)
            assert set(targets) == produced
            assert max(targets.values()) == 1, "an impression is a target in two different samples"
            trained = Counter(trained_log.read_text().split())
            assert set(trained) == set(samples)
            assert max(trained.values()) == 1, [sid for sid, n in trained.items() if n > 1][:5]
            assert state["p"].trainer_samples == len(samples)
    finally:
        broker.stop()


def _impression_ids(bootstrap: str, topic: str) -> set[str]:
    """Event ids of the impressions in ``topic``, without the end-of-stream markers."""
    ids = set()
    for raw in _read_topic(bootstrap, topic):
        d = json.loads(raw)
        if not d["user_id"].startswith(EOS_USER_PREFIX):
            ids.add(d["event_id"])
    return ids
