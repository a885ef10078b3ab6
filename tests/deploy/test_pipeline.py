"""The whole pipeline on the real broker, observed by a real Prometheus.

One module-scoped cluster (worker, trainer, serving, Prometheus) consumes a slice of MovieLens-100K plus a few
bad, duplicate and orphan events; the tests then check that nothing was lost between topics, that serving scores
with the trainer's newest snapshot, and that every Grafana panel query returns data through Prometheus' HTTP API.
"""

from __future__ import annotations

import json
import time
import uuid
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest

from deploy import dashboards
from deploy.freshness import FreshnessProbe, ReplayThread
from deploy.pipeline import Pipeline, PipelineConfig
from deploy.progress import Completion, Progress
from deploy.supervisor import Supervisor, wait_until
from streaming.events import Feedback, Impression, encode_event
from streaming.sample import Sample

REPO = Path(__file__).resolve().parents[2]
DASHBOARDS = REPO / "deploy" / "grafana" / "dashboards"
LIMIT = 6000  # events of MovieLens-100K in event-time order (≈ 3.4k impressions)
REPLAY_S = 12.0  # wall seconds the replay is paced over

pytestmark = [pytest.mark.kafka, pytest.mark.slow]


@dataclass
class Run:
    pipe: Pipeline
    replay: ReplayThread
    probe: FreshnessProbe
    progress: Progress
    started_wall: float


def _bad_and_odd_events(pipe: Pipeline, bootstrap: str, first: Impression) -> int:
    """Malformed messages (dead letters), a duplicate impression and an orphan feedback; returns how many."""
    from kafka import KafkaProducer

    prod = KafkaProducer(bootstrap_servers=bootstrap)
    imp_topic, fb_topic = pipe.config.topic("impressions"), pipe.config.topic("feedback")
    for raw in (b"{not json", b'{"event_id": 5}', b"[]"):
        prod.send(imp_topic, key=b"bad-user", value=raw)
    prod.send(fb_topic, key=b"bad-user", value=b'{"event_id":"x","ts":"yesterday"}')
    prod.send(imp_topic, key=first.user_id.encode(), value=encode_event(first))  # duplicate event_id
    orphan = Feedback(f"orphan-{uuid.uuid4().hex[:6]}", first.ts + 1, first.user_id, first.scenario, "no-such-request",
                      first.item_id, "click")
    prod.send(fb_topic, key=orphan.user_id.encode(), value=encode_event(orphan))
    prod.flush(30)
    prod.close()
    return 6


@pytest.fixture(scope="module")
def run(bootstrap: str, tmp_path_factory: pytest.TempPathFactory, prometheus_bins: tuple[str, str]) -> Iterator[Run]:
    from streaming.datasets.movielens import DEFAULT_CACHE, ensure_movielens, load_movielens
    from streaming.replay import ReplayConfig

    events = load_movielens(ensure_movielens(REPO / DEFAULT_CACHE))[:LIMIT]
    run_dir = Path(tmp_path_factory.mktemp("pipeline"))
    prefix = f"t{uuid.uuid4().hex[:8]}-"
    cfg = PipelineConfig(run_dir=run_dir, topic_prefix=prefix, worker_port=0, trainer_port=0, serving_port=0,
                         prometheus_port=0, with_prometheus=True, snapshot_every_s=2.0)
    with Supervisor(run_dir) as sup:
        pipe = Pipeline(cfg, bootstrap, sup)
        pipe.create_topics()
        pipe.start()
        assert pipe.prometheus_url, "Prometheus did not start"
        started = time.time()
        # Prometheus must see every counter before it moves, or rate() has nothing to compare against.
        wait_until(lambda: _all_targets_scraped(pipe.prometheus_url or ""), 60, 0.5, "Prometheus' first scrapes")
        probe = FreshnessProbe(pipe.serving_url, interval_s=0.25)
        probe.start()
        # Paced over ~REPLAY_S seconds of wall time so the dashboards' rate() windows see the stream flowing.
        speedup = (events[-1].ts - events[0].ts) / REPLAY_S
        rt = ReplayThread(events, ReplayConfig(bootstrap=bootstrap, impressions_topic=cfg.topic("impressions"),
                                               feedback_topic=cfg.topic("feedback"), speedup=speedup,
                                               eos_markers=False))  # sent below, after the odd events
        rt.start()
        rt.join(timeout=REPLAY_S + 120)
        assert rt.error is None and rt.summary is not None and rt.summary.errors == 0, rt.error or rt.summary
        first = next(e for e in events if isinstance(e, Impression))
        extra = _bad_and_odd_events(pipe, bootstrap, first)
        extra += pipe.end_of_stream(max(rt.ts))
        done = Completion(replayed=rt.summary.events + extra)
        state: dict[str, Progress] = {}

        def finished() -> bool:
            state["p"] = pipe.progress()
            return done.update(state["p"], time.time(), settle_s=4.0)

        wait_until(finished, timeout_s=150, interval_s=0.5, what="the replay to be trained and served",
                   alive=sup.check_alive)
        # scoring traffic (and a few bad requests) spread over several scrapes so the serving panels have rates
        with httpx.Client(base_url=pipe.serving_url, timeout=10) as client:
            for i in range(40):
                client.post("/v1/score", json={"user_id": first.user_id, "scenario": first.scenario,
                                               "candidates": [{"item_id": first.item_id}, {"item_id": "50"}]})
                if i % 10 == 0:
                    client.post("/v1/score", json={"user_id": first.user_id})  # 422
                time.sleep(0.2)
        # Prometheus has scraped serving after the last of that traffic
        served = _score_requests(httpx.get(f"{pipe.serving_url}/metrics", timeout=10).text)
        wait_until(lambda: _prom_score_requests(pipe.prometheus_url or "") >= served, 30, 0.5,
                   "Prometheus to scrape the scoring traffic", alive=sup.check_alive)
        yield Run(pipe, rt, probe, state["p"], started)
        probe.stop()


def _score_requests(exposition: str) -> float:
    """Total /v1/score requests in a Prometheus text exposition of serving's metrics."""
    from prometheus_client.parser import text_string_to_metric_families

    return sum(s.value for fam in text_string_to_metric_families(exposition) for s in fam.samples
               if s.name == "streamrec_serving_requests_total" and s.labels.get("endpoint") == "/v1/score")


def _prom_score_requests(prom: str) -> float:
    r = httpx.get(f"{prom}/api/v1/query", timeout=5,
                  params={"query": 'sum(streamrec_serving_requests_total{endpoint="/v1/score"})'}).json()
    result = r["data"]["result"]
    return float(result[0]["value"][1]) if result else 0.0


def _all_targets_scraped(prom: str) -> bool:
    r = httpx.get(f"{prom}/api/v1/targets", timeout=5).json()
    targets = r["data"]["activeTargets"]
    return len(targets) == 3 and all(t["health"] == "up" for t in targets)


def _read_topic(bootstrap: str, topic: str) -> list[bytes]:
    from kafka import KafkaConsumer, TopicPartition

    consumer = KafkaConsumer(bootstrap_servers=bootstrap, enable_auto_commit=False, consumer_timeout_ms=3000)
    try:
        parts = [TopicPartition(topic, p) for p in consumer.partitions_for_topic(topic) or ()]
        consumer.assign(parts)
        consumer.seek_to_beginning(*parts)
        end = consumer.end_offsets(parts)
        out: list[bytes] = []
        deadline = time.monotonic() + 60
        while any(consumer.position(tp) < end[tp] for tp in parts) and time.monotonic() < deadline:
            for recs in consumer.poll(timeout_ms=1000).values():
                out.extend(r.value for r in recs)
        return out
    finally:
        consumer.close()


def test_counts_reconcile_impressions_in_equal_targets_out(run: Run, bootstrap: str) -> None:
    """Every distinct valid impression replayed is a target in exactly one distinct sample; nothing else is."""
    imps = [json.loads(v) for v in _read_topic(bootstrap, run.pipe.config.topic("impressions"))
            if v.startswith(b"{") and b'"item_id"' in v]
    impression_ids = {d["event_id"] for d in imps if not d["user_id"].startswith("_eos")}  # minus end-of-stream marks
    assert len(impression_ids) == run.replay.summary.impressions  # the duplicate adds no new id
    samples = {}
    for raw in _read_topic(bootstrap, run.pipe.config.topic("samples")):
        s = Sample.decode(raw)
        samples[s.sample_id] = s  # dedup: a re-emitted sample has the same id
    target_ids = Counter(t.event_id for s in samples.values() for t in s.targets)
    assert set(target_ids) == impression_ids
    assert max(target_ids.values()) == 1, "an impression is a target in two different samples"
    # the worker's and the trainer's counters agree with the topics
    p = run.progress
    assert p.worker_targets_out >= len(impression_ids)
    assert p.trainer_impressions + 0 >= len(impression_ids) or p.trainer_skipped > 0
    assert p.trainer_samples == len(samples)
    assert p.worker_deadletter >= 4  # the four malformed messages (the orphan may add one)


def test_serving_scores_with_the_newest_snapshot(run: Run) -> None:
    snaps = sorted(p for p in (run.pipe.snapshot_dir).iterdir())
    assert snaps, "no snapshot written"
    info = httpx.get(f"{run.pipe.serving_url}/v1/model", timeout=10).json()
    assert float(info["version"]) == run.progress.trainer_snapshot_version
    assert info["samples_trained"] == run.progress.trainer_samples
    r = httpx.post(f"{run.pipe.serving_url}/v1/score", timeout=10,
                   json={"user_id": "196", "scenario": "comedy", "candidates": [{"item_id": "242"}, {"item_id": "1"}]})
    assert r.status_code == 200, r.text
    body = r.json()
    assert str(body["model_version"]) == str(info["version"])
    assert len(body["candidates"]) == 2
    for c in body["candidates"]:
        for v in c["scores"].values():
            assert 0.0 <= v <= 1.0


def test_serving_knows_replayed_users_from_the_user_state_topic(run: Run, bootstrap: str) -> None:
    """A user whose sample the worker emitted is scored with its streamed state, not as a cold start."""
    user = Sample.decode(next(iter(_read_topic(bootstrap, run.pipe.config.topic("samples"))))).user_id
    deadline = time.monotonic() + 60
    body: dict[str, Any] = {}
    while time.monotonic() < deadline:
        r = httpx.post(f"{run.pipe.serving_url}/v1/score", timeout=10,
                       json={"user_id": user, "scenario": "comedy", "candidates": [{"item_id": "1"}]})
        assert r.status_code == 200, r.text
        body = r.json()
        if body["cold_start"] is False:
            break
        time.sleep(0.5)
    assert body.get("cold_start") is False, f"user {user} is still a cold start in serving: {body}"


def test_freshness_is_measured(run: Run) -> None:
    fresh, missing = run.probe.event_freshness(run.replay, stride=10)
    assert fresh, "no served model covered any replayed event"
    assert missing < len(fresh)  # most events are covered by the final model


# ---------------------------------------------------------------------------------------------------------------
# Every dashboard panel query returns data


def test_every_dashboard_panel_query_returns_data(run: Run) -> None:
    """Each target's PromQL, with the variables and built-ins ``python -m deploy dashboards`` gives it."""
    prom = run.pipe.prometheus_url
    assert prom
    end = time.time()
    start = run.started_wall
    problems: list[str] = []
    checked = 0
    with httpx.Client(base_url=prom, timeout=30) as client:
        builtins = dashboards.grafana_builtins(end - start, 2.0, dashboards.scrape_interval(client))
        for path in sorted(DASHBOARDS.glob("*.json")):
            dash = json.loads(path.read_text())
            values = dashboards.variable_values(client, dash)
            for panel in dashboards.walk_panels(dash["panels"]):
                for target in dashboards.query_panel(client, panel, {**builtins, **values}, start, end, 2.0):
                    checked += 1
                    if target.error:
                        problems.append(f"{path.name} / {panel['title']}: {target.expr} -> {target.error}")
                    elif not any(s.finite for s in target.series):
                        problems.append(f"{path.name} / {panel['title']}: {target.expr} -> no data")
    assert checked >= 30
    assert not problems, "\n".join(problems)


def test_dashboards_render_every_panel_with_its_lines(run: Run, tmp_path: Path) -> None:
    """``python -m deploy dashboards --png``: one decodable PNG per panel, each drawing the series it got."""
    from PIL import Image

    from tests.deploy.test_prometheus import green_pixels

    prom = run.pipe.prometheus_url
    assert prom
    out = tmp_path / "png"
    assert dashboards.main(["--png", str(out), "--prometheus", prom, "--range",
                            f"{int(time.time() - run.started_wall) + 5}s", "--step", "2s"]) == 0
    panels = {(path.stem, p["id"]): p for path in DASHBOARDS.glob("*.json")
              for p in dashboards.walk_panels(json.loads(path.read_text())["panels"])}
    pngs = {(d.name, int(f.name.split("-", 1)[0])): f for d in out.iterdir() if d.is_dir() for f in d.glob("*.png")}
    assert set(pngs) == set(panels)
    for key, png in pngs.items():
        with Image.open(png) as img:
            img.load()
            assert img.width >= 200 and img.height >= 100, key
        assert green_pixels(png) > 0, f"{key} {panels[key]['title']}: no line (or stat value) drawn"
    for name in {d for d, _ in panels}:
        with Image.open(out / f"{name}.png") as img:
            img.load()
    assert (out / "index.html").is_file()


def test_prometheus_scrapes_every_service(run: Run) -> None:
    prom = run.pipe.prometheus_url
    r = httpx.get(f"{prom}/api/v1/targets", timeout=10).json()
    health = {t["labels"]["job"]: t["health"] for t in r["data"]["activeTargets"]}
    assert health == {"stream": "up", "trainer": "up", "serving": "up"}
    rules = httpx.get(f"{prom}/api/v1/rules", timeout=10).json()["data"]["groups"]
    assert sum(len(g["rules"]) for g in rules) >= 10  # the project's alert rules are loaded
