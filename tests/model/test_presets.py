"""Model presets (model/presets.py), the trainer's model contract (model/protocols.py), and how
snapshots written before RankerConfig's options were pruned load or are refused."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import pytest
import torch
from torch import nn

from model import (
    PRESETS,
    DLRMBaseline,
    DLRMConfig,
    Preset,
    Ranker,
    RankerConfig,
    SnapshotSource,
    TrainableModel,
)
from model.batch import Batch, collate
from model.ranker import REMOVED_FIELDS
from model.snapshot import SnapshotError, SnapshotMeta, load_snapshot, save_snapshot
from tests.model.helpers import make_sample, small_config, small_spec
from trainer.evaluate import EvalConfig
from trainer.loop import Trainer, TrainerConfig

REPO = Path(__file__).resolve().parents[2]


def test_registry_names_are_unique_and_each_config_names_its_preset() -> None:
    assert {"laptop", "base", "eval-ml100k"} <= set(PRESETS)
    for key, p in PRESETS.items():
        assert p.name == key == p.ranker.preset and p.description
    assert len({p.ranker for p in PRESETS.values()}) == len(PRESETS)  # no two presets are the same shape
    with pytest.raises(ValueError, match="names preset"):
        Preset(name="x", description="d", ranker=RankerConfig(preset="y"))


@pytest.mark.parametrize("name", sorted(PRESETS))
def test_every_preset_builds_a_model_that_scores_a_tiny_batch(name: str) -> None:
    preset = PRESETS[name]
    spec = preset.feature_spec()
    assert (spec.max_history, spec.max_realtime) == (preset.max_history, preset.max_realtime)
    if preset.max_table_rows:
        assert max(t.num_embeddings for t in spec.tables.values()) <= preset.max_table_rows
    torch.manual_seed(0)
    model = preset.build(spec).eval()
    assert model.config.preset == name
    batch = collate([make_sample(1, n_hist=3, n_rt=2, n_tgt=3), make_sample(2, n_tgt=2)], spec)
    with torch.no_grad():
        out = model(batch)
        cached = model.score_candidates(model.encode_user(batch), batch)
    for task in spec.tasks:
        assert out[task].shape == (5,) and bool(out[task].isfinite().all())
        torch.testing.assert_close(cached[task], out[task], atol=1e-5, rtol=1e-5)


def test_the_presets_keep_the_shapes_they_replace() -> None:
    """laptop = deploy's former LAPTOP_TRAINER_ARGS, base = RankerConfig/FeatureSpec defaults, eval-ml100k = the
    evaluation's default (the published MovieLens numbers)."""
    lap = PRESETS["laptop"]
    assert (lap.ranker.d_model, lap.ranker.num_blocks, lap.max_history, lap.max_realtime, lap.max_table_rows) == \
        (32, 1, 32, 16, 32768)
    assert dataclasses.replace(PRESETS["base"].ranker, preset="") == RankerConfig()
    assert EvalConfig().ranker == PRESETS["eval-ml100k"].ranker and EvalConfig().preset == "eval-ml100k"


def test_the_published_evaluation_names_its_preset_and_matches_it() -> None:
    cfg = json.loads((REPO / "docs" / "results" / "eval" / "metrics.json").read_text())["config"]
    assert cfg["preset"] == "eval-ml100k"
    preset = PRESETS["eval-ml100k"]
    ranker = {**cfg["ranker"], "attention": cfg["ranker"]["attention"].removeprefix("AttentionKind.").lower(),
              "preset": cfg["preset"]}
    assert RankerConfig.from_json(ranker) == preset.ranker  # written with the removed fields at their fixed values
    assert cfg["max_history"] == preset.max_history


def test_ranker_and_dlrm_implement_the_trainer_contract() -> None:
    spec = small_spec()
    ranker, dlrm = Ranker(spec, small_config()), DLRMBaseline(spec, DLRMConfig(embed_dim=8))
    assert isinstance(ranker, TrainableModel) and isinstance(ranker, SnapshotSource)
    assert isinstance(dlrm, TrainableModel) and not isinstance(dlrm, SnapshotSource)
    assert ranker.to_ranker() is ranker
    typed: list[TrainableModel] = [ranker, dlrm]  # mypy-checked too (trainer/loop.py _implements_the_contract)
    assert len(typed) == 2


class _NoContract(nn.Module):
    def forward(self, batch: Batch) -> dict[str, torch.Tensor]:
        return {}


def test_the_trainer_refuses_a_model_without_the_contract(tmp_path: Path) -> None:
    with pytest.raises(TypeError, match=r"does not implement model\.TrainableModel"):
        Trainer(TrainerConfig(run_dir=tmp_path, snapshots_topic=""), _NoContract(), small_spec())


def _rewrite_config(snapshot: Path, **fields: object) -> None:
    meta = json.loads((snapshot / "meta.json").read_text())
    meta["ranker_config"].update(fields)
    (snapshot / "meta.json").write_text(json.dumps(meta))


def test_snapshots_written_before_the_pruning_load_or_are_refused_with_the_field_named(tmp_path: Path) -> None:
    spec = small_spec()
    model = Ranker(spec, small_config(cowatch=True, cowatch_rows=64, cowatch_dim=8)).eval()
    old = save_snapshot(tmp_path, model, SnapshotMeta(1, 0.0, 0.0, 0))
    fixed = {k: list(v) if isinstance(v, tuple) else v for k, v in REMOVED_FIELDS.items()}
    _rewrite_config(old, **fixed)  # what a pre-pruning trainer wrote for the same model
    loaded = load_snapshot(old)
    assert loaded.config == model.config
    batch = collate([make_sample(3)], spec)
    with torch.no_grad():
        torch.testing.assert_close(loaded.model(batch)["click"], model(batch)["click"])
    off = save_snapshot(tmp_path, model, SnapshotMeta(2, 0.0, 0.0, 0))
    _rewrite_config(off, **{**fixed, "wide": False})  # a model this build cannot construct
    with pytest.raises(SnapshotError, match=r"incompatible metadata: .*RankerConfig\.wide=False is no longer supported"):
        load_snapshot(off)
