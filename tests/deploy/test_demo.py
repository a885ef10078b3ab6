"""``python -m deploy demo`` end to end as a user runs it: a slice of MovieLens-100K, then Ctrl-C, no orphans."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

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


def test_demo_runs_serves_and_stops_cleanly_on_ctrl_c(tmp_path: Path, kafka_broker: object) -> None:
    # kafka_broker: only for its skip/fail logic when Java or Maven is missing (the demo starts its own broker)
    run_dir = tmp_path / "demo"
    cmd = [sys.executable, "-m", "deploy", "demo", "--limit", "3000", "--keep-running", "--run-dir", str(run_dir),
           "--kafka-port", "0", "--worker-port", "0", "--trainer-port", "0", "--serving-port", "0",
           "--prometheus-port", "0", "--timeout", "400"]
    proc = subprocess.Popen(cmd, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            start_new_session=True, env={**os.environ, "COLUMNS": "160"})
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
            pytest.fail("demo did not reach the running state:\n" + "".join(lines[-60:]))
        out = "".join(lines)
        assert "serving API" in out and "curl -s -X POST" in out
        assert "HTTP 200" in out, out[-3000:]  # the example request was scored
        assert "/metrics" in out
        assert _pids_mentioning(str(run_dir)), "services should be running"
        os.kill(proc.pid, signal.SIGINT)  # what Ctrl-C sends to the foreground process
        rc = proc.wait(timeout=90)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
    t.join(5)
    assert rc == 0, "".join(lines[-30:])
    assert "stopped" in "".join(lines[-5:])
    deadline = time.monotonic() + 10
    while _pids_mentioning(str(run_dir)) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert _pids_mentioning(str(run_dir)) == [], "orphaned processes after Ctrl-C"
