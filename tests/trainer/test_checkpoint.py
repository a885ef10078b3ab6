"""Checkpoint files, the trained-ids log, and a full trainer-state round trip (resume == never stopped)."""

from __future__ import annotations

import dataclasses
import pickle
from pathlib import Path

import pytest
import torch
from prometheus_client import CollectorRegistry

from model import Ranker, RankerConfig
from model.batch import collate
from model.features import FeatureSpec, TableSpec
from tests.trainer.conftest import make_samples
from trainer.checkpoint import (
    TrainedLog,
    latest_checkpoint,
    list_checkpoints,
    load_checkpoint,
    prune_checkpoints,
    save_checkpoint,
)
from trainer.loop import Trainer, TrainerConfig
from trainer.source import SourceConfig


class NotAllowed:
    pass


def test_save_is_atomic_and_latest_and_prune(tmp_path: Path) -> None:
    for step in (5, 40, 12):
        save_checkpoint(tmp_path, step, {"format": 1, "step": step, "w": torch.full((3,), float(step))})
    (tmp_path / ".ckpt-crashed.tmp").write_bytes(b"half a file")  # a crash mid-write leaves only a temp file
    assert [p.name for p in list_checkpoints(tmp_path)] == [f"ckpt-{s:012d}.pt" for s in (5, 12, 40)]
    assert load_checkpoint(latest_checkpoint(tmp_path))["step"] == 40
    prune_checkpoints(tmp_path, keep=2)
    assert [load_checkpoint(p)["step"] for p in list_checkpoints(tmp_path)] == [12, 40]
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".ckpt-") and p.name != ".ckpt-crashed.tmp"]


def test_load_refuses_pickled_objects_and_foreign_files(tmp_path: Path) -> None:
    torch.save({"format": 1, "evil": NotAllowed()}, tmp_path / "ckpt-000000000001.pt")
    with pytest.raises(pickle.UnpicklingError):
        load_checkpoint(tmp_path / "ckpt-000000000001.pt")
    torch.save({"w": torch.ones(1)}, tmp_path / "ckpt-000000000002.pt")
    with pytest.raises(ValueError, match="not a streamrec trainer checkpoint"):
        load_checkpoint(tmp_path / "ckpt-000000000002.pt")


def test_trained_log_truncates_to_the_checkpointed_size(tmp_path: Path) -> None:
    log = TrainedLog(tmp_path / "ids.txt")
    log.add(["a", "b"])
    size = log.commit()
    log.add(["c"])
    log.commit()  # committed, but its checkpoint never landed (crash)
    log.add(["d"])  # pending, never committed
    log.truncate(size)
    assert log.read() == ["a", "b"]
    log.add(["c"])
    log.commit()
    assert log.read() == ["a", "b", "c"]


def _trainer(run_dir: Path) -> Trainer:
    base = FeatureSpec()
    spec = dataclasses.replace(base, tables={n: TableSpec(min(t.num_embeddings, 512), t.dim)
                                             for n, t in base.tables.items()})
    torch.manual_seed(0)
    model = Ranker(spec, RankerConfig(d_model=16, num_blocks=1, target_layers=1, head_dim=8))
    cfg = TrainerConfig(source=SourceConfig(dedupe_capacity=50), run_dir=run_dir, device="cpu")
    return Trainer(cfg, model, spec, CollectorRegistry())


@pytest.mark.slow
def test_resume_continues_exactly_like_an_uninterrupted_trainer(tmp_path: Path) -> None:
    samples = make_samples(60, seed=4)
    batches = [samples[i : i + 20] for i in range(0, 60, 20)]
    a = _trainer(tmp_path / "a")
    for b in batches[:2]:
        batch = collate(b, a.spec)
        a.train_step(batch)
        a.trained_log = None
        for s in b:
            a.trained.add(s.sample_id)
        a.samples_trained += len(b)
    a.offsets = {0: 40, 1: 7}
    a.checkpoint()

    b_ = _trainer(tmp_path / "a")  # same run dir: resumes
    assert b_.resumed_from is not None
    assert b_.offsets == {0: 40, 1: 7} and b_.samples_trained == 40
    assert b_.trained.to_list() == a.trained.to_list()
    assert repr(b_.progressive.compute()) == repr(a.progressive.compute())
    for (k, v), (k2, v2) in zip(a.model.state_dict().items(), b_.model.state_dict().items(), strict=True):
        assert k == k2 and torch.equal(v, v2), k

    # One more identical batch on both: optimizer state was restored too, so the weights stay bit-identical.
    last = collate(batches[2], a.spec)
    a.train_step(last)
    b_.train_step(last)
    for (k, v), (_, v2) in zip(a.model.state_dict().items(), b_.model.state_dict().items(), strict=True):
        assert torch.equal(v, v2), k
    assert repr(b_.progressive.compute()) == repr(a.progressive.compute())


class _OneBurstSource:
    """In-process stand-in for the Kafka source: every record in the first poll, nothing after."""

    def __init__(self, values: list[bytes]) -> None:
        self.values = values

    def poll(self, max_records: int, timeout_s: float) -> tuple[list[bytes | None], dict[int, int]]:
        out: list[bytes | None] = list(self.values[:max_records])
        self.values = self.values[max_records:]
        return out, {0: 0}

    def measure_lag(self) -> int:
        return len(self.values)

    def close(self) -> None:
        pass


@pytest.mark.parametrize("idle_s", [0.0, 0.05])
def test_snapshot_once_caught_up_only_with_snapshot_idle_s(tmp_path: Path, idle_s: float) -> None:
    """With a long cadence, --snapshot-idle-s publishes the burst's training as soon as the source runs dry;
    without it the only snapshot is the one written at the end of the run."""
    import json

    t = _trainer(tmp_path)
    t.config = dataclasses.replace(t.config, snapshots_topic="", snapshot_every_s=1e6, snapshot_idle_s=idle_s,
                                   source=SourceConfig(deadletter_topic="", batch_samples=16, batch_timeout_s=0.05))
    values = [s.encode() for s in make_samples(8, seed=2)]
    t.run(max_seconds=3.0, source_factory=lambda offsets, stop: _OneBurstSource(values))
    events = [json.loads(line) for line in t.config.metrics_path.read_text().splitlines()]
    start = next(e["ts"] for e in events if e["event"] == "start")
    snaps = [e["ts"] - start for e in events if e["event"] == "snapshot"]
    assert len(snaps) == 1 and t.samples_trained == 8
    assert (snaps[0] < 2.0) if idle_s else (snaps[0] >= 3.0)
