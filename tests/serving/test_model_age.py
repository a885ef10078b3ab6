"""Model age and data freshness are wall-clock quantities: a model trained on 1998 events (MovieLens) that was
written seconds ago and serves data produced seconds ago reports seconds, not decades."""

from __future__ import annotations

import json
import math
import time
from pathlib import Path

import pytest
import torch
from prometheus_client import CollectorRegistry

from model.snapshot import SnapshotMeta, save_snapshot
from serving.api import ModelInfo, _model_info
from serving.hotswap import ModelHolder
from serving.metrics import ServingMetrics
from tests.serving.models import small_model

EVENT_TS_1998 = 893_286_638.0  # the last MovieLens-100K rating: 1998-04-22


@pytest.fixture(scope="module")
def model():  # type: ignore[no-untyped-def]
    torch.manual_seed(0)
    return small_model()[0]


def serve(tmp_path: Path, model: torch.nn.Module, meta: SnapshotMeta) -> tuple[ModelHolder, CollectorRegistry]:
    reg = CollectorRegistry()
    holder = ModelHolder(ServingMetrics(reg))
    assert holder.load_one(str(save_snapshot(tmp_path, model, meta)))  # type: ignore[arg-type]
    return holder, reg


def test_a_model_of_1998_events_reports_seconds_of_age_and_freshness(tmp_path: Path, model: torch.nn.Module) -> None:
    t0 = time.time()
    meta = SnapshotMeta(version=1, created_at=t0 - 3.0, max_event_ts=EVENT_TS_1998, samples_trained=10,
                        max_produce_ts=t0 - 5.0)
    holder, reg = serve(tmp_path, model, meta)
    assert holder.current is not None
    loaded_at = holder.current.loaded_at

    info = _model_info(holder.current)
    ModelInfo.model_validate(info)  # the documented response model
    assert "freshness_seconds" not in info
    assert info["max_event_ts"] == EVENT_TS_1998  # event time is still reported, under its own name
    assert info["max_produce_ts"] == t0 - 5.0
    assert 3.0 <= info["model_age_seconds"] < 60.0  # now − created_at
    assert info["data_freshness_seconds"] == pytest.approx(loaded_at - (t0 - 5.0))  # produced → serving
    assert 5.0 <= info["data_freshness_seconds"] < 60.0
    assert 0.0 <= info["seconds_since_update"] < 60.0
    json.dumps(info, allow_nan=False)

    age = reg.get_sample_value("streamrec_serving_model_age_seconds", {"model": "default"})
    fresh = reg.get_sample_value("streamrec_serving_data_freshness_seconds", {"model": "default"})
    assert age is not None and 3.0 <= age < 60.0
    assert fresh == pytest.approx(loaded_at - (t0 - 5.0))
    assert reg.get_sample_value("streamrec_serving_model_freshness_seconds") is None  # the event-time gauge is gone


def test_model_age_grows_while_data_freshness_is_fixed_once_serving(tmp_path: Path, model: torch.nn.Module) -> None:
    t0 = time.time()
    holder, reg = serve(tmp_path, model, SnapshotMeta(1, created_at=t0 - 100.0, max_event_ts=EVENT_TS_1998,
                                                      samples_trained=1, max_produce_ts=t0 - 102.0))
    assert holder.current is not None
    times = holder.current.times()
    assert times.model_age(now=t0 + 1000.0) == pytest.approx(1100.0)
    assert times.data_freshness() == pytest.approx(holder.current.loaded_at - (t0 - 102.0))
    age = reg.get_sample_value("streamrec_serving_model_age_seconds", {"model": "default"})
    assert age is not None and 100.0 <= age < 160.0


def test_a_snapshot_without_a_produce_time_has_unknown_freshness(tmp_path: Path, model: torch.nn.Module) -> None:
    holder, reg = serve(tmp_path, model, SnapshotMeta(1, created_at=time.time(), max_event_ts=EVENT_TS_1998,
                                                      samples_trained=1))
    assert holder.current is not None
    info = _model_info(holder.current)
    assert info["max_produce_ts"] is None and info["data_freshness_seconds"] is None
    ModelInfo.model_validate(info)
    assert math.isnan(reg.get_sample_value("streamrec_serving_data_freshness_seconds", {"model": "default"}) or 0.0)
    assert 0.0 <= (reg.get_sample_value("streamrec_serving_model_age_seconds", {"model": "default"}) or -1.0) < 60.0


def test_no_model_reports_nan_times() -> None:
    reg = CollectorRegistry()
    ModelHolder(ServingMetrics(reg))
    for name in ("model_age", "data_freshness", "since_last_update"):
        assert math.isnan(reg.get_sample_value(f"streamrec_serving_{name}_seconds", {"model": "default"}) or 0.0)
