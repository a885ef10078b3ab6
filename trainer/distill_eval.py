"""The ``distill`` quality suite: a teacher's leak-free scores → students with and without distillation (ExFM).

Per dataset and seed, on the same samples and batch boundaries as every suite (:mod:`trainer.quality`):

1. **Teacher**: a Ranker of the first ``--presets`` entry runs the progressive evaluation with ``Trainer.train_step``;
   its score of batch b is the one it made *before* its step on b (``Trainer.last_probs``: leak-free by
   construction, what ``python -m trainer --teacher-scores-topic`` publishes). Record: model ``ranker``, variant
   ``teacher``.
2. **Stale teachers**: the same teacher snapshotted every ``SNAPSHOT_EVERY_BATCHES`` batches (the state before the
   step, as ``Trainer.snapshot`` writes it); for each N in ``--distill-stale``, batch b is scored by the snapshot
   N behind the newest one (snapshot ⌊b/K⌋ − N, at least the initial model): variant ``teacher-staleN``.
3. **Students** (``dlrm`` on the student preset's feature spec, and a Ranker of the student preset: the second
   ``--presets`` entry, else ``laptop``), each trained by ``train_step`` with the teacher's scores of the batch.
   ``NAME-per-scenario`` students are ExFM's vertical models: one model per scenario, trained on that scenario's
   targets only (histories keep every scenario, as the ``unified`` suite's per-scenario models), each given the
   unified teacher's scores of its targets (joined by event id); their ``*`` record scores the scenario models'
   predictions put back in stream order. Variants:

   ==========================  ==============================================================================
   variant                     student
   ==========================  ==============================================================================
   ``no-distill``              labels only (the baseline)
   ``distill``                 + w · BCE(aux head, adapted teacher score)   (aux head + adapter)
   ``distill-no-aux``          the distillation loss on the main head (+ adapter)
   ``distill-no-adapter``      aux head learns the raw teacher score
   ``distill-staleN``          aux head + adapter on the N-snapshots-stale teacher's scores
   ==========================  ==============================================================================

Every record is the student's main-head progressive score (what it serves), like every suite's.

Example:
    >>> [v for v, _ in student_variants((2,))]
    ['no-distill', 'distill', 'distill-no-aux', 'distill-no-adapter', 'distill-stale2']
"""

from __future__ import annotations

import copy
import math
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from prometheus_client import CollectorRegistry

from model import PRESETS, DLRMBaseline, Preset, Ranker
from model.batch import Batch
from model.features import FeatureSpec
from streaming.config import CoreConfig
from trainer.distill import DistillConfig, TeacherTargets, wrap_student
from trainer.evaluate import EvalConfig, Predictions
from trainer.loop import Trainer, TrainerConfig
from trainer.optim import OptimConfig

DEFAULT_STUDENT_PRESET = "laptop"
SNAPSHOT_EVERY_BATCHES = 100  # the stale teachers' snapshot cadence, in batches
DISTILL = DistillConfig()  # w = 1, aux head + adapter
TeacherScores = list[dict[str, torch.Tensor]]  # per batch: task → (T,) teacher probability


def student_variants(stale: Sequence[int], weight: float = 1.0
                     ) -> list[tuple[str, tuple[DistillConfig | None, int | None]]]:
    """(variant name, (distillation config or None = labels only, stale snapshots or None = live teacher)); with a
    weight other than 1 the distilling variants' names end in ``-w<weight>``.

    >>> [v for v, _ in student_variants((), weight=3.0)]
    ['no-distill', 'distill-w3', 'distill-no-aux-w3', 'distill-no-adapter-w3']
    """
    w = weight
    tag = "" if weight == DISTILL.weight else f"-w{weight:g}"
    out: list[tuple[str, tuple[DistillConfig | None, int | None]]] = [
        ("no-distill", (None, None)),
        ("distill" + tag, (DistillConfig(weight=w), None)),
        ("distill-no-aux" + tag, (DistillConfig(aux_head=False, weight=w), None)),
        ("distill-no-adapter" + tag, (DistillConfig(adapter=False, weight=w), None)),
    ]
    return out + [(f"distill-stale{n}{tag}", (DistillConfig(weight=w), n)) for n in stale]


def _trainer(model: torch.nn.Module, spec: FeatureSpec, optim: OptimConfig, seed: int, run_dir: str) -> Trainer:
    cfg = TrainerConfig(optim=optim, run_dir=Path(run_dir), device="cpu", seed=seed, snapshots_topic="")
    return Trainer(cfg, model, spec, registry=CollectorRegistry())


def run_teacher(model: torch.nn.Module, batches: Sequence[Batch], spec: FeatureSpec, optim: OptimConfig, seed: int,
                stale: Sequence[int] = (), snapshot_every: int = SNAPSHOT_EVERY_BATCHES
                ) -> tuple[TeacherScores, dict[int, TeacherScores], float]:
    """(live pre-step scores per batch, {N: N-snapshots-stale scores per batch}, seconds).

    A snapshot is the state before the step on batch j·K (trained on batches < j·K); batch b's N-stale score comes
    from snapshot max(0, ⌊b/K⌋ − N), scored without gradients by a copy of the model.
    """
    t0 = time.perf_counter()
    live: TeacherScores = []
    stale_out: dict[int, TeacherScores] = {n: [] for n in stale}
    lagged = copy.deepcopy(model) if stale else None
    snaps: list[dict[str, torch.Tensor]] = []  # the last max(stale) + 1 snapshots, oldest first
    keep = max(stale, default=0) + 1
    with tempfile.TemporaryDirectory(prefix="streamrec-distill-") as d:
        tr = _trainer(model, spec, optim, seed, d)
        for b, batch in enumerate(batches):
            if lagged is not None:
                if b % snapshot_every == 0:
                    snaps = [*snaps, {k: v.detach().clone() for k, v in model.state_dict().items()}][-keep:]
                j = b // snapshot_every  # newest snapshot index; snaps[-1] is snapshot j
                for n in stale:
                    lagged.load_state_dict(snaps[max(len(snaps) - 1 - n, 0)] if j - n >= 0 else snaps[0])
                    with torch.no_grad():
                        stale_out[n].append({t: torch.sigmoid(z).float() for t, z in lagged(batch).items()})
            tr.train_step(batch)
            live.append({t: p.detach().float().cpu() for t, p in tr.last_probs.items()})
    return live, stale_out, time.perf_counter() - t0


def run_student(model: torch.nn.Module, batches: Sequence[Batch], spec: FeatureSpec, optim: OptimConfig, seed: int,
                distill: DistillConfig | None, teacher: TeacherScores | None) -> Predictions:
    """Progressive main-head predictions of a student trained on labels (+ the teacher's scores when ``distill``)."""
    t0 = time.perf_counter()
    if distill is not None:
        model = wrap_student(model, distill)
    probs: dict[str, list[np.ndarray]] = {t: [] for t in spec.tasks}
    with tempfile.TemporaryDirectory(prefix="streamrec-distill-") as d:
        tr = _trainer(model, spec, optim, seed, d)
        for b, batch in enumerate(batches):
            tt = None
            if distill is not None and teacher is not None:
                T = batch.num_targets
                tt = TeacherTargets(teacher[b], torch.ones(T, dtype=torch.bool), torch.zeros(T, dtype=torch.int64),
                                    torch.full((T,), math.nan, dtype=torch.float64))
            tr.train_step(batch, teacher=tt)
            for t in spec.tasks:
                probs[t].append(tr.last_probs[t].detach().double().cpu().numpy())
    return Predictions({t: np.concatenate(v) if v else np.zeros(0) for t, v in probs.items()},
                       time.perf_counter() - t0)


def teacher_table(batches: Sequence[Batch], scores: TeacherScores) -> dict[str, dict[str, float]]:
    """event id → task → the teacher's score of that target (``scores[b]`` holds batch b's, in target order)."""
    out: dict[str, dict[str, float]] = {}
    for batch, per_task in zip(batches, scores, strict=True):
        cols = {t: p.tolist() for t, p in per_task.items()}
        for i, eid in enumerate(batch.target_event_ids):
            out[eid] = {t: c[i] for t, c in cols.items()}
    return out


def scores_for(batches: Sequence[Batch], table: dict[str, dict[str, float]]) -> TeacherScores:
    """The teacher's scores of other batches of the same targets (a scenario's subset, other boundaries).

    Example:
        >>> from types import SimpleNamespace as NS
        >>> t = teacher_table([NS(target_event_ids=["a", "b"])], [{"click": torch.tensor([0.25, 0.5])}])
        >>> scores_for([NS(target_event_ids=["b"])], t)
        [{'click': tensor([0.5000])}]
    """
    out: TeacherScores = []
    for batch in batches:
        rows = [table[e] for e in batch.target_event_ids]
        out.append({t: torch.tensor([r[t] for r in rows], dtype=torch.float32) for t in (rows[0] if rows else {})})
    return out


def check_aligned(teacher_batches: Sequence[Batch], student_batches: Sequence[Batch]) -> None:
    """The teacher's and a student's batches hold the same targets in the same order (same samples, same
    boundaries; only the feature spec differs)."""
    if len(teacher_batches) != len(student_batches) or any(
            a.target_event_ids != b.target_event_ids for a, b in zip(teacher_batches, student_batches, strict=True)):
        raise ValueError("teacher and student batches differ: distillation needs the same samples and boundaries")


def run_distill(prep: Any, core: CoreConfig, cfg: Any, dataset: str, commit: str, progress: bool,
                write: Callable[[list[dict[str, Any]]], None], log: Callable[[str], None]) -> list[dict[str, Any]]:
    """Every run of the ``distill`` suite on one dataset (``prep``: :class:`trainer.quality._Prepared`); each run's
    records are passed to ``write`` as soon as it ends."""
    from trainer.quality import eval_config, records_of

    teacher_preset: Preset = PRESETS[cfg.presets[0]]
    student_preset: Preset = PRESETS[cfg.presets[1] if len(cfg.presets) > 1 else DEFAULT_STUDENT_PRESET]
    new: list[dict[str, Any]] = []

    def emit(preds: Predictions, tg: Any, model: str, preset: str, variant: str, seed: int,
             per_scenario: dict[str, tuple[Predictions, Any]] | None = None) -> None:
        base = {"suite": cfg.suite, "dataset": dataset, "preset": preset, "model": model, "variant": variant,
                "seed": seed, "commit": commit, "command": cfg.command, "limit_targets": cfg.limit_targets,
                "teacher_preset": teacher_preset.name}
        if per_scenario is None:
            recs = records_of(preds, tg, sorted(set(tg.scenarios.tolist())), base, preds.seconds)
        else:  # '*' from the scenario models' predictions in stream order, each scenario from its own model
            recs = records_of(preds, tg, [], base, preds.seconds)
            for s, (sp, stg) in per_scenario.items():
                recs += [r for r in records_of(sp, stg, [s], base, sp.seconds) if r["scenario"] == s]
        new.extend(recs)
        write(recs)
        head = "; ".join(f"{r['task']} AUC {_pct(r['auc'])} GAUC {_pct(r['gauc'])}" for r in recs if r["scenario"] == "*")
        log(f"[distill] {dataset} {model}/{preset}/{variant} seed {seed}: {preds.seconds:.1f} s; {head}")

    for seed in cfg.seeds:
        tec = eval_config(teacher_preset, seed, core, cfg.batch_samples)
        t_spec = tec.feature_spec()
        t_batches, t_tg = prep.batches(t_spec)
        t_list = [b for _, b in t_batches]
        torch.manual_seed(seed)
        live, stale, secs = run_teacher(Ranker(t_spec, tec.ranker), t_list, t_spec, tec.ranker_optim or tec.optim,
                                        seed, cfg.distill_stale)
        emit(Predictions({t: np.concatenate([p[t].double().numpy() for p in live]) for t in t_spec.tasks}, secs),
             t_tg, "ranker", teacher_preset.name, "teacher", seed)
        for n, scores in stale.items():
            emit(Predictions({t: np.concatenate([p[t].double().numpy() for p in scores]) for t in t_spec.tasks}, secs),
                 t_tg, "ranker", teacher_preset.name, f"teacher-stale{n}", seed)
        sec = eval_config(student_preset, seed, core, cfg.batch_samples)
        s_spec = sec.feature_spec()
        s_batches, s_tg = prep.batches(s_spec) if s_spec != t_spec else (t_batches, t_tg)
        s_list = [b for _, b in s_batches]
        check_aligned(t_list, s_list)
        scenarios = sorted(set(s_tg.scenarios.tolist()))
        for student in cfg.distill_students:
            kind = student.removesuffix("-per-scenario")
            optim = sec.optim if kind == "dlrm" else (sec.ranker_optim or sec.optim)
            for variant, (dc, lag) in student_variants(cfg.distill_stale, cfg.distill_weight):
                scores = live if lag is None else stale[lag]
                if kind == student:
                    emit(run_student(_student(kind, s_spec, sec, seed), s_list, s_spec, optim, seed, dc, scores), s_tg, student,
                         student_preset.name, variant, seed)
                    continue
                table = teacher_table(t_list, scores)
                combined = {t: np.zeros(len(s_tg.ts)) for t in s_spec.tasks}
                parts: dict[str, tuple[Predictions, Any]] = {}
                for s in scenarios:
                    sb, stg = prep.batches(s_spec, scenario=s)
                    sl = [b for _, b in sb]
                    sp = run_student(_student(kind, s_spec, sec, seed), sl, s_spec, optim, seed, dc, scores_for(sl, table))
                    for t in s_spec.tasks:
                        combined[t][s_tg.scenarios == s] = sp.probs[t]
                    parts[s] = (sp, stg)
                total = sum(sp.seconds for sp, _ in parts.values())
                emit(Predictions(combined, total), s_tg, student, student_preset.name, variant, seed, parts)
    return new


def _student(kind: str, spec: FeatureSpec, ec: EvalConfig, seed: int) -> torch.nn.Module:
    """A freshly seeded student: the DLRM baseline or a Ranker of the student preset."""
    torch.manual_seed(seed)
    return DLRMBaseline(spec, ec.dlrm) if kind == "dlrm" else Ranker(spec, ec.ranker)


def _pct(x: float | None) -> str:
    return "n/a" if x is None else f"{100 * x:.2f}"


__all__ = ["EvalConfig", "check_aligned", "run_distill", "run_student", "run_teacher", "scores_for", "student_variants",
           "teacher_table"]
