"""The sample spec on the real broker: a worker publishes its SampleSpec to ``<samples>.spec``; a second worker
configured with another L, a trainer whose model reads more history than the worker keeps, and serving with a preset
that does not fit refuse to start (exit code 2, one line naming the values); serving rejects a snapshot trained on
samples of another spec (``wrong_sample_spec``) and serves the one that matches."""

from __future__ import annotations

import dataclasses
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest
import torch

from model.ranker import Ranker
from model.snapshot import SnapshotMeta, save_snapshot
from streaming.spec import spec_topic
from streaming.spec_topic import read_spec
from tests.serving.conftest import start_server, wait_for
from tests.serving.models import small_model
from tests.streaming.test_worker_kafka import CFG, start_worker, stop_worker

ROOT = Path(__file__).resolve().parents[2]


def _errors(text: str) -> list[str]:
    return [ln for ln in text.splitlines() if "error:" in ln]


@pytest.mark.kafka
def test_worker_trainer_and_serving_refuse_a_mismatched_sample_spec(bootstrap: str, topic_prefix: str,
                                                                     tmp_path: Path) -> None:
    samples = f"{topic_prefix}samples"
    log_a, log_b = tmp_path / "worker-a.log", tmp_path / "worker-b.log"
    worker = start_worker(bootstrap, topic_prefix, tmp_path / "a", log_a)
    try:
        published = read_spec(bootstrap, samples, wait_s=60.0)
        assert published == CFG.sample_spec(), log_a.read_text()[-3000:]
        L = CFG.history_len
        # a second worker of the same pipeline with another L
        other = start_worker(bootstrap, topic_prefix, tmp_path / "b", log_b, extra=("--history-len", str(4 * L)))
        try:
            rc = other.wait(60)
        finally:
            stop_worker(other)
        lines = log_b.read_text().splitlines()
        assert rc == 2, lines[-20:]
        assert _errors(log_b.read_text()) == lines[-1:]
        assert lines[-1].startswith(f"error: sample spec conflict: history_len {4 * L} here, {L} in "
                                    f"{spec_topic(samples)} (written by another worker);")
    finally:
        stop_worker(worker)
    assert read_spec(bootstrap, samples, wait_s=0.0) == published  # the refused worker wrote nothing

    # a trainer whose model reads more history than the worker keeps
    trainer = subprocess.run(
        [sys.executable, "-m", "trainer", "--bootstrap", bootstrap, "--topic", samples, "--preset", "laptop",
         "--max-history", str(L + 1), "--run-dir", str(tmp_path / "run"), "--metrics-port", "0"],
        cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert trainer.returncode == 2, trainer.stderr[-3000:]
    assert _errors(trainer.stderr) == trainer.stderr.splitlines()[-1:] == [
        f"error: the model does not fit the samples on {samples}: max_history {L + 1} > the worker history_len {L} "
        f"({spec_topic(samples)}); lower --max-history or pick another --preset"]

    # serving: a preset that cannot serve the worker's samples (laptop reads 32 behaviors, the worker keeps L)
    assert L < 32
    topics = ["--bootstrap", bootstrap, "--samples-topic", samples, "--snapshots-topic", f"{topic_prefix}snapshots",
              "--user-state-topic", f"{topic_prefix}user_state"]
    refused = subprocess.run([sys.executable, "-m", "serving", "--port", "0", "--preset", "laptop", *topics],
                             cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert refused.returncode == 2, refused.stderr[-3000:]
    assert refused.stderr.splitlines()[-1] == (
        f"serving: error: --preset laptop cannot serve the samples of {samples}: max_history 32 > the worker "
        f"history_len {L} ({spec_topic(samples)})")

    # serving rejects a snapshot trained on other samples; the matching one serves
    torch.manual_seed(0)
    model, spec = small_model()
    model = Ranker(dataclasses.replace(spec, max_history=L), model.config).eval()
    snaps = tmp_path / "snapshots"

    def write(version: int, sample_spec: dict[str, object]) -> None:
        model.sample_spec = sample_spec
        save_snapshot(snaps, model, SnapshotMeta(version=version, created_at=time.time(), max_event_ts=0.0,
                                                 samples_trained=version))

    write(1, dataclasses.replace(published, history_len=4 * L).to_json())
    server = start_server(tmp_path, snaps, [*topics, "--snapshot-poll-s", "0.2"])
    try:
        wait_for(lambda: (server.metric("streamrec_serving_swap_failures_total", {"reason": "wrong_sample_spec"})
                          or 0) >= 1, 60, "the snapshot of other samples to be rejected")
        assert httpx.get(server.url + "/readyz", timeout=10).status_code == 503
        assert f"history_len {4 * L} in the snapshot, {L} in the worker's" in server.log()
        write(2, published.to_json())
        wait_for(lambda: server.version() == 2, 60, "the snapshot of the worker's samples to serve")
        assert server.metric("streamrec_serving_swap_failures_total", {"reason": "wrong_sample_spec"}) == 1.0
    finally:
        server.stop()
