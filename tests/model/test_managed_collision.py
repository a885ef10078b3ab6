"""TorchRec managed-collision (zero-collision hashing) tables on CPU: distinct ids get distinct rows."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import torch

from kernels.attention import TokenGroup
from model import Ranker
from model.batch import collate
from model.snapshot import SnapshotMeta, load_snapshot, save_snapshot
from tests.model.helpers import make_sample, small_config, small_spec


def _colliding_items() -> tuple[str, str]:
    """Two item ids that share a row under plain ``hash % rows`` hashing."""
    plain, seen = small_spec(), dict[int, str]()
    for i in range(10_000):
        b = plain.bucket("item_id", f"item{i}")
        if b in seen:
            return seen[b], f"item{i}"
        seen[b] = f"item{i}"
    raise AssertionError("no collision found")


def test_managed_collision_separates_colliding_ids(tmp_path: Path) -> None:
    a, b = _colliding_items()
    spec = small_spec(managed_collision=True, mc_eviction_interval=1)  # admit ids on every training step
    s = make_sample(80, n_tgt=2)
    s = dataclasses.replace(s, targets=[dataclasses.replace(s.targets[0], item_id=a),
                                        dataclasses.replace(s.targets[1], item_id=b)])
    batch = collate([s, make_sample(81)], spec)
    torch.manual_seed(0)
    model = Ranker(spec, small_config()).train()
    out = model(batch)  # training mode admits the new ids into the tables
    torch.stack([o.sum() for o in out.values()]).sum().backward()
    assert all(p.grad is not None for p in model.embedding_parameters())
    model.eval()
    mcc = model.embedder.features.ebc._managed_collision_collection
    assert isinstance(mcc, torch.nn.Module)
    item = mcc(batch.sparse).to_dict()["item_id"]
    t_rows = batch.group_rows[TokenGroup.T][:2]
    per_token = item.to_dense()
    ids = [per_token[int(r)].tolist() for r in t_rows]
    assert small_spec().bucket("item_id", a) == small_spec().bucket("item_id", b)  # they collide without MC
    assert len(ids[0]) == len(ids[1]) == 1 and ids[0] != ids[1]  # and get their own rows with MC
    with torch.no_grad():
        want = model(batch)
    cached = model.score_candidates(model.encode_user(batch), batch)
    loaded = load_snapshot(save_snapshot(tmp_path, model, SnapshotMeta(1, 0.0, 0.0, 0))).model
    with torch.no_grad():
        got = loaded(batch)
    for task in spec.tasks:
        torch.testing.assert_close(cached[task], want[task], atol=1e-5, rtol=1e-5)
        assert torch.equal(got[task], want[task])  # the id->row mapping travels in the snapshot
