"""Serving refuses a snapshot trained on samples of another spec (``wrong_sample_spec``), like ``wrong_preset``: counted,
logged, the current model keeps serving. Snapshots record the spec the trainer validated; old ones (none recorded)
still load and are checked on their feature spec only."""

from __future__ import annotations

import dataclasses
import json
import time
from pathlib import Path

import torch
from prometheus_client import CollectorRegistry

from model.ranker import Ranker
from model.snapshot import META_FILE, SnapshotMeta, load_snapshot, save_snapshot
from serving.hotswap import ModelHolder
from serving.metrics import ServingMetrics
from streaming.spec import SampleSpec
from tests.serving.models import small_model

WORKER = SampleSpec(history_len=256, max_targets=16)


def _meta(v: int) -> SnapshotMeta:
    return SnapshotMeta(version=v, created_at=time.time(), max_event_ts=0.0, samples_trained=v)


def _model(sample_spec: SampleSpec | None, max_history: int = 256) -> Ranker:
    torch.manual_seed(0)
    model, spec = small_model()
    if max_history != spec.max_history:
        model = Ranker(dataclasses.replace(spec, max_history=max_history), model.config).eval()
    model.sample_spec = None if sample_spec is None else sample_spec.to_json()
    return model


def test_the_snapshot_records_the_models_sample_spec_and_old_ones_load(tmp_path: Path) -> None:
    p = save_snapshot(tmp_path, _model(WORKER), _meta(1))
    assert load_snapshot(p).meta.sample_spec == WORKER.to_json()
    assert load_snapshot(p).model.sample_spec == WORKER.to_json()
    old = save_snapshot(tmp_path, _model(None), _meta(2))
    doc = json.loads((old / META_FILE).read_text())
    del doc["meta"]["sample_spec"]  # written before the field existed
    (old / META_FILE).write_text(json.dumps(doc))
    assert load_snapshot(old).meta.sample_spec is None


def test_a_snapshot_of_other_samples_is_rejected_and_the_served_one_stays(tmp_path: Path) -> None:
    reg = CollectorRegistry()
    holder = ModelHolder(ServingMetrics(reg), sample_spec=WORKER)
    assert holder.load_one(str(save_snapshot(tmp_path, _model(WORKER), _meta(1))))
    other = dataclasses.replace(WORKER, history_len=512)
    bad = [save_snapshot(tmp_path, _model(other), _meta(2)),  # trained on samples with L = 512
           save_snapshot(tmp_path, _model(None, max_history=300), _meta(3))]  # none recorded, reads 300 > 256
    for p in bad:
        assert not holder.load_one(str(p))
        assert holder.current is not None and holder.current.meta.version == 1
    assert reg.get_sample_value("streamrec_serving_swap_failures_total", {"model": "default", "reason": "wrong_sample_spec"}) == 2.0
    assert holder.load_one(str(save_snapshot(tmp_path, _model(None), _meta(4))))  # old snapshot that fits

    unknown = ModelHolder(ServingMetrics(CollectorRegistry()))  # the worker's spec unknown: nothing to check
    assert unknown.load_one(str(bad[0]))


def test_the_followed_spec_replaces_the_known_one(tmp_path: Path) -> None:
    holder = ModelHolder(ServingMetrics(CollectorRegistry()))

    class Rec:
        offset = 0
        value = dataclasses.replace(WORKER, history_len=64).encode()

    holder.on_sample_spec(Rec())
    assert holder.sample_spec is not None and holder.sample_spec.history_len == 64
    Rec.value = b"{oops"
    holder.on_sample_spec(Rec())  # unreadable: ignored, the last good one stays
    assert holder.sample_spec.history_len == 64
    assert not holder.load_one(str(save_snapshot(tmp_path, _model(WORKER), _meta(1))))
