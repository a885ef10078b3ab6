"""The process supervisor: readiness, crash reporting, and stopping whole process groups (no orphans)."""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path

import pytest

from deploy.kafka import free_port
from deploy.progress import Completion, Progress, metric_by, metric_sum, scrape
from deploy.supervisor import ClusterError, Service, Supervisor, wait_until


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # a zombie is dead for our purposes
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().split()[2] != "Z"
    except OSError:
        return False


STUBBORN = """
import os, signal, subprocess, sys, time
# a child that ignores SIGTERM, in the same process group, and a parent that ignores it too
child = subprocess.Popen([sys.executable, "-c", "import signal, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); time.sleep(600)"])
open(sys.argv[1], "w").write(str(child.pid))
signal.signal(signal.SIGTERM, signal.SIG_IGN)
time.sleep(600)
"""


def test_stop_kills_the_whole_process_group(tmp_path: Path) -> None:
    pidfile = tmp_path / "child.pid"
    sup = Supervisor(tmp_path, stop_timeout_s=1.0)
    r = sup.start(Service("stubborn", (sys.executable, "-c", STUBBORN, str(pidfile))))
    wait_until(pidfile.exists, 30, what="the child to start")
    wait_until(lambda: pidfile.read_text().strip() != "", 30, what="the child pid")
    child = int(pidfile.read_text())
    assert _alive(r.proc.pid) and _alive(child)
    t0 = time.monotonic()
    codes = sup.stop()
    assert time.monotonic() - t0 < 15
    assert codes["stubborn"] is not None
    wait_until(lambda: not _alive(child), 10, what="the orphan child to die")
    assert not _alive(r.proc.pid)


def test_wait_ready_reports_a_crash_with_the_log_tail(tmp_path: Path) -> None:
    with Supervisor(tmp_path) as sup:
        sup.start(Service("crasher", (sys.executable, "-c", "print('boom: bad flag'); raise SystemExit(3)"),
                          ready_url=f"http://127.0.0.1:{free_port()}/metrics"))
        with pytest.raises(ClusterError, match=r"crasher exited with code 3[\s\S]*boom: bad flag"):
            sup.wait_ready("crasher", timeout_s=30)
        with pytest.raises(ClusterError, match="crasher exited with code 3"):
            sup.check_alive()


def test_wait_ready_and_scrape_a_real_metrics_endpoint(tmp_path: Path) -> None:
    port = free_port()
    code = (
        "import time\n"
        "from prometheus_client import CollectorRegistry, Counter, start_http_server\n"
        "reg = CollectorRegistry()\n"
        "c = Counter('streamrec_stream_events', 'x', ['kind', 'scenario'], registry=reg)\n"
        "c.labels('impression', 'a').inc(3); c.labels('feedback', 'a').inc(2); c.labels('impression', 'b').inc()\n"
        f"start_http_server({port}, addr='127.0.0.1', registry=reg)\n"
        "time.sleep(600)\n"
    )
    url = f"http://127.0.0.1:{port}/metrics"
    with Supervisor(tmp_path) as sup:
        sup.start(Service("metrics", (sys.executable, "-c", code), ready_url=url))
        sup.wait_ready("metrics", timeout_s=30)
        s = scrape(url)
        assert metric_sum(s, "streamrec_stream_events_total") == 6
        assert metric_sum(s, "streamrec_stream_events_total", kind="impression") == 4
        assert metric_by(s, "streamrec_stream_events_total", "scenario") == {("a",): 5, ("b",): 1}
    assert scrape(url) == {}  # stopped


def test_completion_waits_for_consumed_stable_trained_and_served() -> None:
    done = Completion()
    p = Progress(worker_events_in=100, worker_samples_out=10, trainer_samples=10, trainer_snapshot_version=3,
                 serving_version=3, serving_samples_trained=10)
    assert not done.update(p, 0.0, settle_s=2)  # replay not finished
    done.replayed = 120
    assert not done.update(p, 1.0, settle_s=2)  # not all consumed
    p.worker_events_in = 120
    assert not done.update(p, 2.0, settle_s=2)  # samples count just seen
    assert not done.update(p, 3.0, settle_s=2)  # not stable long enough
    p.worker_samples_out = 12
    assert not done.update(p, 4.5, settle_s=2)  # moved again: stability restarts
    assert not done.update(p, 6.0, settle_s=2)
    assert not done.update(p, 7.0, settle_s=2)  # stable, but only 10 of 12 trained
    p.trainer_samples, p.trainer_snapshot_version = 12, 4
    assert not done.update(p, 8.0, settle_s=2)  # trained; serving still on v3 (10 samples)
    p.serving_version, p.serving_samples_trained = 4, 11
    assert not done.update(p, 9.0, settle_s=2)  # v4 was written before the last sample was trained
    p.trainer_snapshot_version, p.serving_version, p.serving_samples_trained = 5, 5, 12
    assert done.update(p, 10.0, settle_s=2)
    assert done.served_version == 5


@pytest.mark.kafka
def test_replay_thread_stop_ends_the_replay_and_closes_its_producer(bootstrap: str, topic_prefix: str) -> None:
    """What the demo does on Ctrl-C before it stops the broker: an unclosed producer would flush from its atexit
    handler at interpreter exit against a stopped broker and print a KafkaTimeoutError traceback."""
    from deploy.freshness import ReplayThread
    from streaming.datasets.synthetic import SyntheticConfig, generate
    from streaming.replay import ReplayConfig

    events = generate(SyntheticConfig(num_users=20, num_items=50, requests_per_user=20, seed=3))
    span = events[-1].ts - events[0].ts
    rt = ReplayThread(events, ReplayConfig(bootstrap=bootstrap, impressions_topic=topic_prefix + "imp",
                                           feedback_topic=topic_prefix + "fb", speedup=span / 600))  # ~10 min
    rt.start()
    wait_until(lambda: rt.sent > 0, 30, 0.05, "the first send")
    rt.stop()
    assert not rt.is_alive() and rt.error is None
    assert rt.summary is not None and rt.summary.interrupted and rt.summary.markers == 0
    assert 0 < rt.summary.events < len(events)
    assert rt.producer is not None
    inner = rt.producer.inner
    assert inner._closed and inner._cleanup is None  # closed: no atexit handler left
