"""Two trainer ranks under torchrun on gloo: TorchRec DMP table-wise sharding, Kafka partitions split per rank."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
from collections import Counter
from pathlib import Path

import pytest
import torch

from model.batch import collate
from model.snapshot import latest_snapshot, load_snapshot
from tests.trainer.conftest import make_samples, produce

ROOT = Path(__file__).resolve().parents[2]
pytestmark = [pytest.mark.kafka, pytest.mark.slow]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_two_gloo_ranks_shard_tables_and_split_partitions(bootstrap: str, topic_prefix: str, tmp_path: Path) -> None:
    topic = topic_prefix + "samples"
    samples = make_samples(96, seed=7, users=40)
    produce(bootstrap, topic, [s.encode() for s in samples], keys=[s.user_id.encode() for s in samples],
            partitions=2)
    run_dir = tmp_path / "run"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", "2", "--master-addr", "127.0.0.1",
           "--master-port", str(_free_port()), "-m", "trainer", "--distributed", "--bootstrap", bootstrap,
           "--topic", topic, "--run-dir", str(run_dir), "--trained-log", str(tmp_path / "ids.txt"),
           "--batch-samples", "8", "--snapshot-every-s", "1", "--metrics-port", "0", "--threads", "1",
           "--snapshots-topic", "", "--deadletter-topic", "", "--exit-when-idle", "3", "--max-seconds", "200",
           "--max-table-rows", "2048", "--d-model", "16", "--num-blocks", "1", "--target-layers", "1",
           "--rank-loss-weight", "0.1"]  # the ranking loss runs in each rank's step like the BCE
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    log = tmp_path / "torchrun.log"
    with open(log, "wb") as out:
        proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
        try:
            rc = proc.wait(timeout=300)
        finally:
            if proc.poll() is None:  # never leave ranks behind: kill the whole session we started
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
    assert rc == 0, log.read_text()[-4000:]

    # Each rank trained only its partitions; together every sample exactly once.
    per_rank = [(tmp_path / f"rank{r}" / "ids.txt").read_text().splitlines() for r in (0, 1)]
    assert all(per_rank), "a rank trained nothing: partitions were not split"
    counts = Counter(per_rank[0] + per_rank[1])
    assert set(counts) == {s.sample_id for s in samples} and max(counts.values()) == 1
    assert (run_dir / "rank0" / "checkpoints").is_dir() and (run_dir / "rank1" / "checkpoints").is_dir()

    # Rank 0 gathered the sharded tables into an ordinary snapshot that loads and scores anywhere.
    snap = latest_snapshot(run_dir / "snapshots")
    assert snap is not None
    loaded = load_snapshot(snap)
    assert loaded.meta.samples_trained > 0
    with torch.no_grad():
        out = loaded.model(collate(samples[:4], loaded.spec))
    assert all(torch.isfinite(v).all() for v in out.values())
