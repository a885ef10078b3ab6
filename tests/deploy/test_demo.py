"""``python -m deploy demo`` end to end as a user runs it: a slice of MovieLens-100K, then Ctrl-C, no orphans."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from deploy.supervisor import wait_until
from tests.deploy.test_cluster import _alive

REPO = Path(__file__).resolve().parents[2]

pytestmark = [pytest.mark.kafka, pytest.mark.slow]


def _pids_mentioning(text: str) -> list[int]:
    """Processes whose command line mentions ``text`` (the demo's run directory is in every service's argv)."""
    out = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        try:
            cmd = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        if text in cmd and _alive(int(entry.name)):
            out.append(int(entry.name))
    return out


@contextlib.contextmanager
def running_demo(run_dir: Path, *flags: str, columns: int = 160) -> Iterator[tuple[subprocess.Popen[str], list[str]]]:
    """``python -m deploy demo --limit 3000 --keep-running`` (every port free, ``flags`` added), yielded once it
    prints its running state with the lines it printed so far (still growing); the whole session is killed on exit
    if the body did not stop it."""
    cmd = [sys.executable, "-m", "deploy", "demo", *flags, "--limit", "3000", "--keep-running", "--run-dir",
           str(run_dir), "--kafka-port", "0", "--worker-port", "0", "--trainer-port", "0", "--serving-port", "0",
           "--prometheus-port", "0", "--timeout", "400"]
    proc = subprocess.Popen(cmd, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            start_new_session=True, env={**os.environ, "COLUMNS": str(columns)})
    lines: list[str] = []
    ready = threading.Event()

    def reader() -> None:
        assert proc.stdout is not None
        for line in proc.stdout:
            lines.append(line)
            if "Ctrl-C stops everything" in line:
                ready.set()

    t = threading.Thread(target=reader, daemon=True)
    t.start()
    try:
        if not ready.wait(timeout=480):
            pytest.fail("the demo did not reach the running state:\n" + "".join(lines[-60:]))
        yield proc, lines
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
        t.join(5)


def test_demo_runs_serves_and_stops_cleanly_on_ctrl_c(tmp_path: Path, kafka_broker: object) -> None:
    # kafka_broker: only for its skip/fail logic when Java or Maven is missing (the demo starts its own broker)
    run_dir = tmp_path / "demo"
    with running_demo(run_dir) as (proc, lines):
        out = "".join(lines)
        assert "serving API" in out and "curl -s -X POST" in out
        assert "HTTP 200" in out, out[-3000:]  # the example request was scored
        assert "/metrics" in out
        assert _pids_mentioning(str(run_dir)), "services should be running"
        os.kill(proc.pid, signal.SIGINT)  # what Ctrl-C sends to the foreground process
        rc = proc.wait(timeout=90)
    assert rc == 0, "".join(lines[-30:])
    assert "stopped" in "".join(lines[-5:])
    wait_until(lambda: not _pids_mentioning(str(run_dir)), 10, 0.2, "no orphaned process after Ctrl-C")


EXAMPLES = REPO / "examples"


def test_demo_on_your_own_log_trains_every_impression_and_scores_a_request(
        tmp_path: Path, kafka_broker: object, capsys: pytest.CaptureFixture[str],
        monkeypatch: pytest.MonkeyPatch) -> None:
    """What `make demo DATA=examples/events.csv MAP=examples/mapping.toml` runs, in-process: the shipped example log
    through the real broker, worker, trainer and serving to a scored request; a taken port is announced."""
    import re
    import socket

    from deploy import demo
    from streaming.datasets.eventlog import LogMapping, load_log
    from streaming.events import Impression

    monkeypatch.setenv("COLUMNS", "200")
    impressions = sum(isinstance(e, Impression) for e in load_log(EXAMPLES / "events.csv",
                                                                  LogMapping.from_file(EXAMPLES / "mapping.toml")))
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        rc = demo.main(["--data", str(EXAMPLES / "events.csv"), "--map", str(EXAMPLES / "mapping.toml"),
                        "--run-dir", str(tmp_path / "demo"), "--kafka-port", "0", "--worker-port", str(port),
                        "--trainer-port", "0", "--serving-port", "0", "--no-prometheus", "--timeout", "400"])
    out = capsys.readouterr().out
    flat = " ".join(out.split())
    assert rc == 0, out[-4000:]
    assert f"port {port} is taken; the worker's /metrics uses 127.0.0.1:" in flat
    assert "note: no item has the feature" not in flat  # the mapping's category_key is an item feature
    m = re.search(r"trained ([\d,]+) user-level samples \(([\d,]+) impressions\)", flat)
    assert m is not None, out[-4000:]
    assert int(m.group(2).replace(",", "")) == impressions  # every impression of the log was trained
    assert "then 8 end-of-stream markers" in flat
    assert "→ HTTP 200: {" in flat, out[-3000:]  # the example request was scored
    answer = flat[flat.index("→ HTTP 200: {"):][:400]
    assert '"candidates"' in answer and '"model_version"' in answer
    assert '"cold_start":false' in answer  # serving has the user's state from the worker
    assert "stopped" in flat and "and Kafka" in flat


def test_demo_rejects_data_without_a_mapping(capsys: pytest.CaptureFixture[str]) -> None:
    from deploy import demo

    with pytest.raises(SystemExit) as e:
        demo.config_from_args(["--data", str(EXAMPLES / "events.csv")])
    assert e.value.code == 2
    assert "--data and --map go together" in capsys.readouterr().err
    cfg = demo.config_from_args(["--data", "x.csv", "--map", "m.toml"])
    assert (cfg.dataset, cfg.data, cfg.mapping) == ("log", Path("x.csv"), Path("m.toml"))
    assert demo.dataset_args(cfg) == ["--dataset", "log", "--path", "x.csv", "--mapping", "m.toml"]


def test_ctrl_c_during_the_replay_exits_quietly(tmp_path: Path, kafka_broker: object) -> None:
    """Ctrl-C while events are still being produced: exit 130, every process stopped, and no traceback (the
    replay's producer used to be flushed by an atexit handler after the broker was gone: KafkaTimeoutError)."""
    import re

    from streaming.datasets.synthetic import SyntheticConfig, generate

    assert len(generate(SyntheticConfig())) == 35_414  # the demo's synthetic dataset: a few seconds of replay

    run_dir = tmp_path / "demo"
    cmd = [sys.executable, "-m", "deploy", "demo", "--dataset", "synthetic", "--run-dir", str(run_dir),
           "--kafka-port", "0", "--worker-port", "0", "--trainer-port", "0", "--serving-port", "0",
           "--no-prometheus", "--timeout", "300"]
    proc = subprocess.Popen(cmd, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            start_new_session=True, env={**os.environ, "COLUMNS": "160"})
    lines: list[str] = []
    replaying = threading.Event()

    def reader() -> None:
        assert proc.stdout is not None
        for line in proc.stdout:
            lines.append(line)
            if line.startswith("replaying "):
                replaying.set()

    t = threading.Thread(target=reader, daemon=True)
    t.start()
    try:
        if not replaying.wait(timeout=240):
            pytest.fail("demo did not start replaying:\n" + "".join(lines[-60:]))
        os.kill(proc.pid, signal.SIGINT)
        rc = proc.wait(timeout=90)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
    t.join(5)
    out = "".join(lines)
    assert rc == 130, out[-3000:]
    assert "Traceback" not in out and "Error in atexit" not in out, out[-3000:]
    assert re.search(r"stopping during the replay \([\d,]+ of 35,414 events sent\)", out), out[-3000:]
    assert "stopped" in "".join(lines[-3:])
    assert _pids_mentioning(str(run_dir)) == [], "orphaned processes after Ctrl-C"
