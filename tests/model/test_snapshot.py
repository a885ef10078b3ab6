"""Snapshot format: round trip in a fresh process is bit-identical; corruption and incompatibility are errors."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from model import Ranker
from model.batch import collate
from model.snapshot import (
    SnapshotError,
    SnapshotMeta,
    latest_snapshot,
    list_snapshots,
    load_snapshot,
    prune_snapshots,
    save_snapshot,
)
from tests.model.helpers import make_sample, seeded, small_config, small_spec

REPO = Path(__file__).resolve().parents[2]

_CHILD = """
import sys, torch
from safetensors.torch import save_file
from tests.model.helpers import make_sample
from model.batch import collate
from model.snapshot import load_snapshot
snap = load_snapshot(sys.argv[1])
batch = collate([make_sample(70), make_sample(71, n_tgt=2)], snap.spec)
with torch.no_grad():
    out = snap.model(batch)
save_file({k: v.contiguous() for k, v in out.items()}, sys.argv[2])
print(snap.meta.version, snap.meta.samples_trained)
"""


def _model() -> Ranker:
    m = seeded(Ranker(small_spec(), small_config()), seed=8)
    assert isinstance(m, Ranker)
    return m


@pytest.mark.slow  # a fresh interpreter imports torch + torchrec (~10 s on the shared box)
def test_round_trip_in_fresh_process_is_bit_identical(tmp_path: Path) -> None:
    model = _model()
    meta = SnapshotMeta(version=7, created_at=123.5, max_event_ts=1.7e9, samples_trained=4096)
    path = save_snapshot(tmp_path, model, meta)
    assert path.name == "snapshot-000000000007" and not [p for p in tmp_path.iterdir() if p.name.startswith(".tmp")]
    with torch.no_grad():
        want = model(collate([make_sample(70), make_sample(71, n_tgt=2)], model.spec))
    out_file = tmp_path / "scores.safetensors"
    proc = subprocess.run([sys.executable, "-c", _CHILD, str(path), str(out_file)], cwd=REPO, capture_output=True,
                          text=True, timeout=120, env={"PYTHONPATH": str(REPO), "PATH": "/usr/bin:/bin", "OMP_NUM_THREADS": "1"})
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.split() == ["7", "4096"]
    from safetensors.torch import load_file

    got = load_file(str(out_file))
    for task in model.spec.tasks:
        assert torch.equal(got[task], want[task])
    loaded = load_snapshot(path)
    assert loaded.meta == meta and loaded.spec == model.spec and loaded.config == model.config
    assert not loaded.model.training


def test_corrupt_weights_raise(tmp_path: Path) -> None:
    path = save_snapshot(tmp_path, _model(), SnapshotMeta(1, 0.0, 0.0, 0))
    w = path / "weights.safetensors"
    data = bytearray(w.read_bytes())
    data[len(data) // 2] ^= 0xFF
    w.write_bytes(bytes(data))
    with pytest.raises(SnapshotError, match="checksum"):
        load_snapshot(path)


def test_incompatible_snapshots_raise(tmp_path: Path) -> None:
    path = save_snapshot(tmp_path, _model(), SnapshotMeta(1, 0.0, 0.0, 0))
    meta_file = path / "meta.json"
    doc = json.loads(meta_file.read_text())
    meta_file.write_text(json.dumps({**doc, "format_version": 99}))
    with pytest.raises(SnapshotError, match="format_version"):
        load_snapshot(path)
    # weights whose shapes do not fit the config (checksum updated, so only the shape check can catch it)
    path2 = save_snapshot(tmp_path, _model(), SnapshotMeta(2, 0.0, 0.0, 0))
    save_file({"bogus": torch.zeros(3)}, str(path2 / "weights.safetensors"))
    import hashlib

    doc2 = json.loads((path2 / "meta.json").read_text())
    doc2["weights_sha256"] = hashlib.sha256((path2 / "weights.safetensors").read_bytes()).hexdigest()
    (path2 / "meta.json").write_text(json.dumps(doc2))
    with pytest.raises(SnapshotError, match="do not fit"):
        load_snapshot(path2)
    (path2 / "meta.json").write_text("{not json")
    with pytest.raises(SnapshotError, match="unreadable"):
        load_snapshot(path2)
    with pytest.raises(SnapshotError, match=r"no meta\.json"):
        load_snapshot(tmp_path / "missing")


def test_list_latest_prune(tmp_path: Path) -> None:
    assert latest_snapshot(tmp_path / "none") is None
    model = _model()
    for v in (3, 1, 12, 5):
        save_snapshot(tmp_path, model, SnapshotMeta(v, float(v), 0.0, v))
    (tmp_path / ".tmp-snapshot-000000000099-x").mkdir()  # an interrupted write is never listed
    (tmp_path / "snapshot-000000000100").mkdir()  # nor a directory without meta.json
    assert [p.name[-2:] for p in list_snapshots(tmp_path)] == ["01", "03", "05", "12"]
    assert latest_snapshot(tmp_path) == tmp_path / "snapshot-000000000012"
    with pytest.raises(SnapshotError, match="exists"):
        save_snapshot(tmp_path, model, SnapshotMeta(12, 0.0, 0.0, 0))
    removed = prune_snapshots(tmp_path, keep=2)
    assert [p.name[-2:] for p in removed] == ["01", "03"]
    assert (tmp_path / ".tmp-snapshot-000000000099-x").exists()  # young: maybe a write in progress
    prune_snapshots(tmp_path, keep=2, stale_tmp_s=-1.0)
    assert not (tmp_path / ".tmp-snapshot-000000000099-x").exists()
    assert [p.name[-2:] for p in list_snapshots(tmp_path)] == ["05", "12"]
    with pytest.raises(ValueError):
        prune_snapshots(tmp_path, keep=0)
