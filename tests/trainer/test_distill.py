"""External distillation (trainer/distill.py): records, loss, adapter, aux head, and the leak-free teacher."""

from __future__ import annotations

import math
import tempfile
from pathlib import Path

import jsonschema
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from prometheus_client import CollectorRegistry

from model import DLRMBaseline, DLRMConfig, Ranker, RankerConfig
from model.batch import collate
from model.presets import shaped_spec
from tests.trainer.conftest import make_samples
from trainer.distill import (
    TEACHER_RECORD_SCHEMA,
    DistillConfig,
    DistilledStudent,
    ServableDistilledStudent,
    StudentAdapter,
    TeacherRecord,
    TeacherRecordError,
    records_from_batch,
    teacher_targets,
    wrap_student,
)
from trainer.loop import Trainer, TrainerConfig

SPEC = shaped_spec(8, 4, 1024)  # small tables: fast steps
TINY = RankerConfig(d_model=16, num_blocks=1, target_layers=1, q_heads=2, kv_heads=1, head_dim=8, num_experts=2,
                    expert_dim=8)


def _trainer(model: torch.nn.Module, run_dir: Path, seed: int = 0) -> Trainer:
    cfg = TrainerConfig(run_dir=run_dir, device="cpu", seed=seed, snapshots_topic="")
    return Trainer(cfg, model, SPEC, registry=CollectorRegistry())


def _batches(n_batches: int, per: int = 6, seed: int = 0) -> list:
    samples = make_samples(n_batches * per, seed=seed)
    return [collate(samples[i:i + per], SPEC) for i in range(0, len(samples), per)]


# ---------------------------------------------------------------------------------------------- records
def test_record_round_trip_and_schema_agree() -> None:
    rec = TeacherRecord("s1", ("e1", "e2", "e3"), {"click": (0.0, 0.5, 1.0), "conversion": (0.1, 0.2, 0.3)},
                        teacher_version=7, snapshot_time=None, samples_trained=42, scored_at=1.5)
    assert TeacherRecord.decode(rec.encode()) == rec
    jsonschema.validate(rec.to_json(), TEACHER_RECORD_SCHEMA)


@pytest.mark.parametrize(("change", "path"), [
    ({"sample_id": ""}, "$.sample_id"),
    ({"v": 2}, "$.v"),
    ({"event_ids": []}, "$.event_ids"),
    ({"scores": {"click": [0.5, 1.5]}}, "$.scores.click[1]"),
    ({"scores": {"click": [0.5]}}, "$.scores.click"),  # one score for two event ids
    ({"scores": {"click": [0.5, True]}}, "$.scores.click[1]"),
    ({"teacher_version": -1}, "$.teacher_version"),
    ({"samples_trained": 1.5}, "$.samples_trained"),
    ({"snapshot_time": "x"}, "$.snapshot_time"),
    ({"scored_at": None}, "$.scored_at"),
])
def test_bad_records_name_the_offending_path(change: dict, path: str) -> None:
    good = TeacherRecord("s", ("a", "b"), {"click": (0.5, 0.5)}).to_json()
    bad = {**good, **change}
    with pytest.raises(TeacherRecordError, match=r"^" + path.replace("$", r"\$").replace("[", r"\[").replace("]", r"\]")):
        TeacherRecord.from_json(bad)
    if path != "$.scores.click":  # lengths per event id are beyond JSON Schema; every other rule is in the schema
        with pytest.raises(jsonschema.ValidationError):
            jsonschema.validate(bad, TEACHER_RECORD_SCHEMA)
    with pytest.raises(TeacherRecordError, match=r"^\$: invalid JSON"):
        TeacherRecord.decode(b"{nope")


def test_teacher_targets_align_by_sample_id_and_skip_mismatched_records() -> None:
    batch = _batches(1)[0]
    probs = {t: torch.rand(batch.num_targets) for t in SPEC.tasks}
    recs = records_from_batch(batch, probs, teacher_version=3, snapshot_time=5.0, samples_trained=9, scored_at=6.0)
    assert [r.sample_id for r in recs] == batch.sample_ids
    by_id = {r.sample_id: TeacherRecord.decode(r.encode()) for r in recs}
    first = recs[0]
    by_id[first.sample_id] = TeacherRecord(first.sample_id, ("other",) * len(first.event_ids), first.scores)
    tt = teacher_targets(batch, by_id, SPEC.tasks)
    n0 = len(first.event_ids)
    assert not tt.mask[:n0].any() and tt.mask[n0:].all()
    assert tt.joined == batch.num_targets - n0
    for t in SPEC.tasks:
        torch.testing.assert_close(tt.probs[t][n0:], probs[t][n0:])
    assert set(tt.versions[n0:].tolist()) == {3}


# ---------------------------------------------------------------------------------------------- adapter, loss
def test_adapter_learns_a_shift_of_the_teacher_logit() -> None:
    g = torch.Generator().manual_seed(0)
    ad = StudentAdapter(("click",), lr=0.05)
    for _ in range(600):
        z_true = torch.randn(256, generator=g) * 1.5
        y = (torch.rand(256, generator=g) < torch.sigmoid(z_true)).float()
        stale = torch.sigmoid(z_true + 2.0)  # the teacher is 2 logits too optimistic
        ad.update({"click": stale}, {"click": y}, torch.ones(256, dtype=torch.bool))
    out = ad({"click": torch.sigmoid(torch.tensor([0.0, 2.0]))})["click"]
    assert out[0].item() == pytest.approx(-2.0, abs=0.3) and out[1].item() == pytest.approx(0.0, abs=0.3)


def test_distill_loss_is_weighted_bce_to_the_teacher_and_skips_the_main_head() -> None:
    torch.manual_seed(0)
    batch = _batches(1)[0]
    student = DistilledStudent(DLRMBaseline(SPEC, DLRMConfig(embed_dim=8)), DistillConfig(weight=2.5, adapter=False))
    logits = student(batch)
    p_t = {t: torch.rand(batch.num_targets) for t in SPEC.tasks}
    mask = torch.ones(batch.num_targets, dtype=torch.bool)
    mask[0] = False
    from trainer.distill import TeacherTargets

    tt = TeacherTargets(p_t, mask, torch.zeros(batch.num_targets, dtype=torch.int64),
                        torch.zeros(batch.num_targets, dtype=torch.float64))
    probs = {t: torch.sigmoid(z.detach()) for t, z in logits.items()}
    loss, stats = student.distill_loss(logits, probs, batch.labels, tt)
    assert student.aux is not None
    aux = student.aux(student._rep)
    want = torch.stack([torch.nn.functional.binary_cross_entropy_with_logits(aux[t][1:], p_t[t][1:])
                        for t in SPEC.tasks]).sum().detach()
    assert float(loss.detach()) == pytest.approx(2.5 * float(want), rel=1e-5)
    assert stats.joined == batch.num_targets - 1 and stats.missing == 1
    assert stats.agreement == pytest.approx(float(torch.stack(
        [(probs[t][1:] - p_t[t][1:]).abs().mean() for t in SPEC.tasks]).mean()), rel=1e-5)
    loss.backward()
    towers = student.student.towers  # the main head gets no distillation gradient, the backbone does
    assert all(p.grad is None or not p.grad.any() for p in towers.parameters())
    assert any(p.grad is not None and p.grad.any() for p in student.student.bottom.parameters())


@pytest.mark.parametrize("kind", ["ranker", "dlrm"])
def test_aux_head_with_weight_zero_leaves_the_main_scores_bit_identical(kind: str) -> None:
    """Same seed, same batches: a wrapped student with w = 0 (aux head and adapter on) scores and learns exactly like
    the plain model, and the wrapper scores what its student scores."""
    def make() -> torch.nn.Module:
        torch.manual_seed(3)
        return Ranker(SPEC, TINY) if kind == "ranker" else DLRMBaseline(SPEC, DLRMConfig(embed_dim=8))

    batches = _batches(5)
    with tempfile.TemporaryDirectory() as d1, tempfile.TemporaryDirectory() as d2:
        plain = _trainer(make(), Path(d1))
        wrapped_model = wrap_student(make(), DistillConfig(weight=0.0))
        assert isinstance(wrapped_model, ServableDistilledStudent) == (kind == "ranker")
        wrapped = _trainer(wrapped_model, Path(d2))
        for b in batches:
            tt = teacher_targets(b, {r.sample_id: r for r in records_from_batch(
                b, {t: torch.rand(b.num_targets) for t in SPEC.tasks}, teacher_version=1, snapshot_time=None,
                samples_trained=0, scored_at=0.0)}, SPEC.tasks)
            plain.train_step(b)
            wrapped.train_step(b, teacher=tt)
            assert wrapped.last_distill is not None and wrapped.last_distill.joined == b.num_targets
            for t in SPEC.tasks:
                assert torch.equal(plain.last_probs[t], wrapped.last_probs[t])
        with torch.no_grad():
            a, b2 = wrapped_model(batches[0]), wrapped_model.student(batches[0])
        assert all(torch.equal(a[t], b2[t]) for t in SPEC.tasks)


def test_distillation_with_weight_moves_the_student_towards_the_teacher() -> None:
    torch.manual_seed(0)
    student = wrap_student(DLRMBaseline(SPEC, DLRMConfig(embed_dim=8)), DistillConfig(weight=5.0, adapter=False))
    batch = _batches(1)[0]
    target = {t: torch.full((batch.num_targets,), 0.9) for t in SPEC.tasks}
    tt = teacher_targets(batch, {r.sample_id: r for r in records_from_batch(
        batch, target, teacher_version=1, snapshot_time=None, samples_trained=0, scored_at=0.0)}, SPEC.tasks)
    with tempfile.TemporaryDirectory() as d:
        tr = _trainer(student, Path(d))
        losses = []
        for _ in range(30):
            tr.train_step(batch, teacher=tt)
            assert tr.last_distill is not None
            losses.append(tr.last_distill.loss)
        assert all(math.isfinite(x) for x in losses) and losses[-1] < 0.5 * losses[0]


# ---------------------------------------------------------------------------------------------- leak-free
@settings(max_examples=8, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(sizes=st.lists(st.integers(1, 5), min_size=1, max_size=5), seed=st.integers(0, 1000))
def test_a_teacher_record_holds_the_teachers_prediction_before_its_step_on_that_batch(sizes: list[int],
                                                                                      seed: int) -> None:
    """For any sequence of batches: the published scores equal a no-grad forward of the teacher's weights as they
    were just before its train step on the batch, and differ from its weights after it (the step changed them)."""
    samples = make_samples(sum(sizes), seed=seed)
    torch.manual_seed(seed)
    model = Ranker(SPEC, TINY)
    with tempfile.TemporaryDirectory() as d:
        tr = _trainer(model, Path(d), seed)
        start = 0
        for n in sizes:
            batch = collate(samples[start:start + n], SPEC)
            start += n
            with torch.no_grad():
                before = {t: torch.sigmoid(z) for t, z in model(batch).items()}
            trained_before = tr.samples_trained
            tr.train_step(batch)
            recs = records_from_batch(batch, tr.last_probs, teacher_version=tr.snapshot_version,
                                      snapshot_time=None, samples_trained=trained_before, scored_at=0.0)
            tr.samples_trained += batch.num_samples
            tt = teacher_targets(batch, {r.sample_id: r for r in recs}, SPEC.tasks)
            assert bool(tt.mask.all())
            with torch.no_grad():
                after = {t: torch.sigmoid(z) for t, z in model(batch).items()}
            for t in SPEC.tasks:
                torch.testing.assert_close(tt.probs[t], before[t].float(), rtol=0, atol=1e-6)
            assert any(not torch.allclose(tt.probs[t], after[t], rtol=0, atol=1e-7) for t in SPEC.tasks)
            assert all(r.samples_trained == trained_before for r in recs)


# ---------------------------------------------------------------------------------------------- join buffer
def test_join_waits_for_a_record_added_by_another_thread_and_gives_up_at_the_deadline() -> None:
    import threading

    from trainer.distill import TeacherJoin

    rec = TeacherRecord("late", ("e",), {"click": (0.3,)})
    j = TeacherJoin(capacity=10)
    j.add(TeacherRecord("early", ("e",), {"click": (0.7,)}))
    adder = threading.Thread(target=j.add, args=(rec,))
    adder.start()
    got = j.take(["early", "late"], timeout_s=60.0)  # returns as soon as both are there
    adder.join()
    assert set(got) == {"early", "late"} and len(j) == 0  # taken records leave the buffer
    ticks = iter([0.0, 100.0])  # a fake clock: the deadline has passed at the first check
    j2 = TeacherJoin(capacity=10, clock=lambda: next(ticks))
    j2.add(rec)
    assert set(j2.take(["late", "never"], timeout_s=5.0)) == {"late"}


def test_join_evicts_the_oldest_beyond_capacity_and_a_newer_record_replaces_an_older() -> None:
    from trainer.distill import TeacherJoin

    j = TeacherJoin(capacity=2)
    j.add(TeacherRecord("a", ("e",), {"click": (0.1,)}))
    j.add(TeacherRecord("b", ("e",), {"click": (0.2,)}))
    j.add(TeacherRecord("a", ("e",), {"click": (0.9,)}, teacher_version=2))  # a again: now the newest
    j.add(TeacherRecord("c", ("e",), {"click": (0.3,)}))  # evicts b
    got = j.take(["a", "b", "c"], timeout_s=0.0)
    assert sorted(got) == ["a", "c"] and got["a"].scores["click"] == (0.9,) and j.evicted == 1
