"""In-process checks of the serving core: verification and rejection reasons, user-level == full scoring,
the user-state replica's record semantics, the config and the CLI."""

from __future__ import annotations

import dataclasses
import json
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from prometheus_client import CollectorRegistry

from model.batch import collate
from model.ranker import Ranker
from model.snapshot import SnapshotMeta, save_snapshot
from serving.config import ServingConfig
from serving.hotswap import ModelHolder
from serving.metrics import ServingMetrics
from serving.scoring import score_request
from serving.user_state import UserStateReplica
from streaming.user_state import Candidate, build_request_sample
from tests.serving.conftest import REPO
from tests.serving.models import small_model
from tests.serving.test_parity import make_state


def meta(v: int) -> SnapshotMeta:
    return SnapshotMeta(version=v, created_at=time.time(), max_event_ts=time.time() - 5, samples_trained=v)


@pytest.fixture
def holder() -> tuple[ModelHolder, CollectorRegistry]:
    reg = CollectorRegistry()
    return ModelHolder(ServingMetrics(reg)), reg


def failures(reg: CollectorRegistry, reason: str) -> float:
    return reg.get_sample_value("streamrec_serving_swap_failures_total", {"model": "default", "reason": reason}) or 0.0


def test_verified_swap_and_every_rejection_reason(tmp_path: Path, holder: tuple[ModelHolder, CollectorRegistry]) -> None:
    h, reg = holder
    torch.manual_seed(0)
    model, spec = small_model()
    p1 = save_snapshot(tmp_path, model, meta(1))
    assert h.load_one(str(p1)) and h.current is not None and h.current.meta.version == 1
    first = h.current
    assert reg.get_sample_value("streamrec_serving_model_version", {"model": "default"}) == 1.0
    assert reg.get_sample_value("streamrec_serving_swaps_total", {"model": "default"}) == 1.0
    assert 0 <= (reg.get_sample_value("streamrec_serving_model_age_seconds", {"model": "default"}) or -1) < 60

    # Stale: an older version is never swapped in (and is not a failure).
    p0 = save_snapshot(tmp_path / "old", model, meta(0))
    assert not h.load_one(str(p0)) and h.current is first

    # Corrupt weights (checksum) → load_error.
    p2 = save_snapshot(tmp_path, model, meta(2))
    w = p2 / "weights.safetensors"
    w.write_bytes(w.read_bytes()[:-100])
    assert not h.load_one(str(p2)) and failures(reg, "load_error") == 1.0

    # Incompatible metadata (unknown spec version) → load_error; a missing directory → load_error too.
    p3 = save_snapshot(tmp_path, model, meta(3))
    doc = json.loads((p3 / "meta.json").read_text())
    doc["feature_spec"]["version"] = 99
    (p3 / "meta.json").write_text(json.dumps(doc))
    assert not h.load_one(str(p3)) and failures(reg, "load_error") == 2.0
    assert not h.load_one(str(tmp_path / "nope")) and failures(reg, "load_error") == 3.0

    # NaN weights load fine but fail the smoke score → nonfinite_score.
    bad = Ranker(spec, model.config).eval()
    with torch.no_grad():
        for prm in bad.head.parameters():
            prm.fill_(float("nan"))
    p4 = save_snapshot(tmp_path, bad, meta(4))
    assert not h.load_one(str(p4)) and failures(reg, "nonfinite_score") == 1.0

    # Fewer tasks than the served model → incompatible (clients rely on the response's keys).
    one_task = dataclasses.replace(spec, tasks=("click",))
    p5 = save_snapshot(tmp_path, Ranker(one_task, model.config).eval(), meta(5))
    assert not h.load_one(str(p5)) and failures(reg, "incompatible") == 1.0

    # Every rejected path is remembered: offering it again does nothing.
    assert not h.load_one(str(p2)) and failures(reg, "load_error") == 3.0
    assert h.current is first and reg.get_sample_value("streamrec_serving_model_version", {"model": "default"}) == 1.0

    # A good newer one is swapped in; the old object is untouched (in-flight requests keep using it).
    p6 = save_snapshot(tmp_path, model, meta(6))
    assert h.load_one(str(p6)) and h.current is not first and h.current.meta.version == 6
    assert first.meta.version == 1


def test_directory_poll_and_loader_thread(tmp_path: Path, holder: tuple[ModelHolder, CollectorRegistry]) -> None:
    h, _ = holder
    model, _ = small_model()
    save_snapshot(tmp_path, model, meta(1))
    h.start(tmp_path, poll_s=0.1, bootstrap=None, topic="unused")
    try:
        deadline = time.monotonic() + 30
        while (h.current is None or h.current.meta.version != 1) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert h.current is not None and h.current.meta.version == 1
        save_snapshot(tmp_path, model, meta(2))
        while h.current.meta.version != 2 and time.monotonic() < deadline:
            time.sleep(0.05)
        assert h.current.meta.version == 2
    finally:
        h.stop()


def test_announced_path_from_another_mount_is_found_locally(tmp_path: Path,
                                                             holder: tuple[ModelHolder, CollectorRegistry]) -> None:
    h, _ = holder
    model, _ = small_model()
    save_snapshot(tmp_path, model, meta(1))
    h.start(tmp_path, poll_s=0, bootstrap=None, topic="unused")  # one scan at start, then announcements only
    try:
        deadline = time.monotonic() + 30
        while h.current is None and time.monotonic() < deadline:
            time.sleep(0.05)
        p2 = save_snapshot(tmp_path, model, meta(2))
        h.offer(f"/mnt/trainer-volume/{p2.name}", 2)  # the trainer's path for the same shared directory
        while h.current is not None and h.current.meta.version != 2 and time.monotonic() < deadline:
            time.sleep(0.05)
        assert h.current is not None and h.current.meta.version == 2 and h.current.path == str(p2)
    finally:
        h.stop()


def test_user_level_scores_equal_full_forward(tmp_path: Path, holder: tuple[ModelHolder, CollectorRegistry]) -> None:
    h, _ = holder
    torch.manual_seed(1)
    model, _ = small_model()
    assert h.load_one(str(save_snapshot(tmp_path, model, meta(1))))
    assert h.current is not None
    now = 1_700_000_000.0
    state = make_state("u", 40, now)
    cands = [Candidate(f"i{i}", {"category": f"g{i % 3}"}, {"slot": str(i % 2)}, {"price": float(i)})
             for i in range(30)]
    res = score_request(h.current, state, "u", "home", cands, {"hour": "9"}, now)
    with torch.no_grad():
        full = model(collate([build_request_sample(state, "u", "home", cands, {"hour": "9"}, now)],
                             h.current.spec))
    for task, lg in full.items():
        assert res.scores[task] == pytest.approx(torch.sigmoid(lg).tolist(), rel=1e-5, abs=1e-6)
    # Candidates do not see each other: scoring one alone gives its score in the batch.
    alone = score_request(h.current, state, "u", "home", cands[7:8], {"hour": "9"}, now)
    assert alone.scores["click"][0] == pytest.approx(res.scores["click"][7], rel=1e-5, abs=1e-6)


def test_replica_applies_updates_tombstones_and_skips_bad_records() -> None:
    reg = CollectorRegistry()
    r = UserStateReplica(ServingMetrics(reg))
    r.apply(b"u1", make_state("u1", 3, 100.0).encode())
    r.apply(b"u2", make_state("u2", 1, 100.0).encode())
    assert len(r) == 2 and r.get("u1") is not None and len(r.get("u1").behaviors) == 3  # type: ignore[union-attr]
    r.apply(b"u1", make_state("u1", 5, 200.0).encode())
    assert len(r.get("u1").behaviors) == 5  # type: ignore[union-attr]
    r.apply(b"u1", b'{"version": 99}')
    r.apply(b"u1", b"\xff\xfe")
    r.apply(None, b"{}")
    assert len(r.get("u1").behaviors) == 5  # type: ignore[union-attr]
    assert reg.get_sample_value("streamrec_serving_user_state_errors_total", {"reason": "decode"}) == 2.0
    assert reg.get_sample_value("streamrec_serving_user_state_errors_total", {"reason": "no_key"}) == 1.0
    r.apply(b"u2", None)
    assert r.get("u2") is None and len(r) == 1
    assert reg.get_sample_value("streamrec_serving_user_states") == 1.0


def test_config_validation_and_cli() -> None:
    with pytest.raises(ValueError, match="max_candidates"):
        ServingConfig(max_candidates=0)
    out = subprocess.run([sys.executable, "-m", "serving", "--help"], cwd=REPO, capture_output=True, text=True,
                         timeout=60)
    assert out.returncode == 0
    for flag in ("--host", "--port", "--bootstrap", "--no-kafka", "--snapshot-dir", "--max-candidates",
                 "--max-body-bytes", "--torch-threads", "--snapshots-topic", "--user-state-topic"):
        assert flag in out.stdout
    bad = subprocess.run([sys.executable, "-m", "serving", "--max-candidates", "0"], cwd=REPO, capture_output=True,
                         text=True, timeout=60)
    assert bad.returncode == 2 and "max_candidates" in bad.stderr and "Traceback" not in bad.stderr

