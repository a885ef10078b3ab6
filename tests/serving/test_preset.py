"""``python -m serving --preset NAME``: only snapshots trained from that model preset are served; the rest are
rejected with the reason ``wrong_preset`` while the current model keeps serving. Without it any snapshot serves."""

from __future__ import annotations

import time
from pathlib import Path

import pytest
import torch
from prometheus_client import CollectorRegistry

from model import PRESETS
from model.snapshot import SnapshotMeta, save_snapshot
from serving.__main__ import parse_config
from serving.hotswap import ModelHolder
from serving.metrics import ServingMetrics
from tests.serving.models import small_model


def _meta(v: int) -> SnapshotMeta:
    return SnapshotMeta(version=v, created_at=time.time(), max_event_ts=0.0, samples_trained=v)


def test_the_flag_takes_a_preset_name_and_defaults_to_any() -> None:
    assert parse_config(["--no-kafka"]).preset is None
    assert parse_config(["--no-kafka", "--preset", "laptop"]).preset == "laptop"
    with pytest.raises(SystemExit):
        parse_config(["--preset", "no-such-preset"])


def test_a_snapshot_of_another_preset_is_rejected_and_the_expected_one_serves(tmp_path: Path) -> None:
    reg = CollectorRegistry()
    holder = ModelHolder(ServingMetrics(reg), preset="laptop")
    torch.manual_seed(0)
    hand_built, _ = small_model()  # RankerConfig.preset == ""
    other = PRESETS["base"].with_changes(max_table_rows=4096).build().eval()  # overrides keep the name "base"
    laptop = PRESETS["laptop"].build().eval()
    for version, model in ((1, hand_built), (2, other)):
        assert not holder.load_one(str(save_snapshot(tmp_path, model, _meta(version))))
        assert holder.current is None
    assert reg.get_sample_value("streamrec_serving_swap_failures_total", {"model": "default", "reason": "wrong_preset"}) == 2.0
    assert holder.load_one(str(save_snapshot(tmp_path, laptop, _meta(3))))
    assert holder.current is not None and holder.current.meta.version == 3

    anything = ModelHolder(ServingMetrics(CollectorRegistry()))  # no --preset: the snapshot decides
    assert anything.load_one(str(tmp_path / "snapshot-000000000002"))
