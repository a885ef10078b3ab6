"""``streaming.replay`` against the real broker: counts, keys, order, pacing, the CLI and an unreachable broker."""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

import pytest
from kafka import KafkaConsumer

from streaming.datasets.synthetic import SyntheticConfig, generate
from streaming.events import Feedback, Impression, parse_event
from streaming.replay import ReplayConfig, replay

pytestmark = pytest.mark.kafka
ROOT = Path(__file__).resolve().parents[2]


def consume(bootstrap: str, topic: str, expected: int, timeout_s: float = 30.0) -> list[tuple[bytes, bytes, int]]:
    """All (key, value, partition) of ``topic`` once ``expected`` records arrived (or the timeout passed)."""
    c = KafkaConsumer(topic, bootstrap_servers=bootstrap, auto_offset_reset="earliest", enable_auto_commit=False,
                      consumer_timeout_ms=2000)
    out: list[tuple[bytes, bytes, int]] = []
    deadline = time.monotonic() + timeout_s
    try:
        while len(out) < expected and time.monotonic() < deadline:
            for records in c.poll(timeout_ms=500).values():
                out.extend((r.key, r.value, r.partition) for r in records)
    finally:
        c.close()
    return out


def test_replay_synthetic_counts_keys_and_order(bootstrap: str, topic_prefix: str) -> None:
    events = generate(SyntheticConfig(num_users=20, num_items=60, requests_per_user=5, seed=1))
    cfg = ReplayConfig(bootstrap=bootstrap, impressions_topic=topic_prefix + "imp",
                       feedback_topic=topic_prefix + "fb", eos_markers=False)
    s = replay(events, cfg, progress=False)
    n_imp = sum(isinstance(e, Impression) for e in events)
    assert (s.events, s.impressions, s.feedback, s.errors, s.markers) == (len(events), n_imp, len(events) - n_imp,
                                                                          0, 0)
    got_imp = consume(bootstrap, cfg.impressions_topic, n_imp)
    got_fb = consume(bootstrap, cfg.feedback_topic, len(events) - n_imp)
    assert len(got_imp) == n_imp and len(got_fb) == len(events) - n_imp
    decoded = [parse_event(v, "impression") for _, v, _ in got_imp]
    assert all(k == e.user_id.encode() for (k, _, _), e in zip(got_imp, decoded, strict=True))
    assert sorted(decoded, key=lambda e: e.event_id) == sorted(
        (e for e in events if isinstance(e, Impression)), key=lambda e: e.event_id)
    # Within a partition (one user's events always share one) records keep event-time order.
    by_user: dict[str, list[float]] = {}
    for _, v, _ in got_fb:
        f = parse_event(v, "feedback")
        assert isinstance(f, Feedback)
        by_user.setdefault(f.user_id, []).append(f.ts)
    assert all(ts == sorted(ts) for ts in by_user.values())


def test_replay_speedup_paces_by_event_time(bootstrap: str, topic_prefix: str) -> None:
    events = generate(SyntheticConfig(num_users=5, num_items=20, requests_per_user=4, seed=2,
                                      duration_s=200.0))
    span = events[-1].ts - events[0].ts
    cfg = ReplayConfig(bootstrap=bootstrap, impressions_topic=topic_prefix + "imp",
                       feedback_topic=topic_prefix + "fb", speedup=span / 1.5)  # ~1.5 s of wall time
    s = replay(events, cfg, progress=False)
    assert s.errors == 0 and s.events == len(events)
    assert 1.4 <= s.seconds < 15.0


def test_replay_cli_generic_log_and_limit(bootstrap: str, topic_prefix: str, tmp_path: Path) -> None:
    """A CSV with its own schema replays with only a column mapping on the command line."""
    f = tmp_path / "clicks.csv"
    rows = ["member,sku,seen_at,surface,clicked"]
    rows += [f"m{i % 4},s{i % 7},{1_700_000_000 + 10 * i},{'feed' if i % 2 else 'search'},{i % 3 == 0:d}"
             for i in range(30)]
    f.write_text("\n".join(rows) + "\n")
    imp_t, fb_t = topic_prefix + "imp", topic_prefix + "fb"
    cmd = [sys.executable, "-m", "streaming.replay", "--dataset", "log", "--path", str(f), "--user-col", "member",
           "--item-col", "sku", "--ts-col", "seen_at", "--scenario-col", "surface", "--label", "click=clicked",
           "--bootstrap", bootstrap, "--impressions-topic", imp_t, "--feedback-topic", fb_t, "--max-rate",
           "--no-progress"]
    r = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    # the topics were auto-created with the broker's 4 partitions: one marker per partition and topic
    assert "replayed 40 events (30 impressions, 10 feedback)" in r.stdout and "0 errors" in r.stdout
    assert "then 8 end-of-stream markers" in r.stdout
    imps = consume(bootstrap, imp_t, 34)
    assert len(imps) == 34 and len(consume(bootstrap, fb_t, 14)) == 14
    markers = sorted((p, parse_event(v, "impression")) for k, v, p in imps if k.startswith(b"_eos"))
    assert [(p, m.user_id, m.scenario) for p, m in markers] == [(p, f"_eos-p{p}", "_eos") for p in range(4)]
    assert all(m.ts == 1_700_000_290 + 30 * 86400 for _, m in markers)  # 30 days after the last event
    r = subprocess.run([*cmd[:-4], "--impressions-topic", imp_t + "2", "--feedback-topic", fb_t + "2",
                        "--limit", "7", "--no-eos-markers", "--no-progress"], cwd=ROOT, capture_output=True,
                       text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    assert "replayed 7 events" in r.stdout and "end-of-stream" not in r.stdout


def test_replay_cli_errors_are_clean(tmp_path: Path) -> None:
    r = subprocess.run([sys.executable, "-m", "streaming.replay", "--dataset", "synthetic", "--syn-users", "2",
                        "--bootstrap", "127.0.0.1:1", "--bootstrap-timeout", "1", "--no-progress"],
                       cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert r.returncode == 2
    assert "error: cannot reach Kafka at 127.0.0.1:1" in r.stderr and "Traceback" not in r.stderr
    f = tmp_path / "empty.csv"
    f.write_text("")
    r = subprocess.run([sys.executable, "-m", "streaming.replay", "--dataset", "log", "--path", str(f),
                        "--user-col", "u", "--item-col", "i", "--ts-col", "t", "--label", "click=c",
                        "--bootstrap", "127.0.0.1:1"], cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert r.returncode == 2 and "empty.csv: file is empty" in r.stderr and "Traceback" not in r.stderr


@pytest.mark.slow
def test_cli_replay_ends_with_markers_so_a_running_worker_releases_every_impression(
        bootstrap: str, topic_prefix: str, tmp_path: Path) -> None:
    """python -m streaming.replay --dataset log without extra flags: every impression of the example log becomes
    a target of a sample (without the markers the last attribution window of each partition stays pending)."""
    from streaming.datasets.eventlog import LogMapping, load_log
    from tests.replay.helpers import create_topics, read_samples, start_worker, stop_worker, topics

    log_file = ROOT / "examples" / "events.csv"
    flags = ["--user-col", "user_id", "--item-col", "item_id", "--ts-col", "ts_ms", "--scenario-col", "surface",
             "--event-id-col", "event_id", "--request-col", "request_id", "--label", "click=clicked"]
    events = load_log(log_file, LogMapping(user="user_id", item="item_id", timestamp="ts_ms", scenario="surface",
                                           event_id="event_id", request="request_id", labels=(("click", "clicked"),)))
    impression_ids = {e.event_id for e in events if isinstance(e, Impression)}
    t = topics(topic_prefix)
    create_topics(bootstrap, t, 2)
    worker, wlog = start_worker(bootstrap, t, f"{topic_prefix}app", 2, tmp_path)
    try:
        r = subprocess.run([sys.executable, "-m", "streaming.replay", "--dataset", "log", "--path", str(log_file),
                            *flags, "--bootstrap", bootstrap, "--impressions-topic", t["impressions"],
                            "--feedback-topic", t["feedback"], "--no-progress"],
                           cwd=ROOT, capture_output=True, text=True, timeout=120)
        assert r.returncode == 0, r.stderr

        def targets(got: dict) -> set[str]:
            return {tg.event_id for s in got.values() for tg in s.targets}

        got = read_samples(bootstrap, t["samples"], lambda got: impression_ids <= targets(got), 60, worker, wlog)
        unreleased = impression_ids - targets(got)
        assert not unreleased, f"{len(unreleased)} of {len(impression_ids)} impressions never released"
    finally:
        stop_worker(worker)
