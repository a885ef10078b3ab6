"""External distillation (ExFM): teacher-score records, the student's auxiliary head and adapter, the loss.

A *teacher* trainer scores every batch before it trains on it (its progressive predictions) and publishes the scores
as :class:`TeacherRecord` s, one per user-level sample, tagged with the teacher's snapshot version. A *student*
trainer joins them to the same samples by ``sample_id`` and trains on

    loss = Σ_task BCE(main logits, labels) + w · Σ_task BCE(aux logits, teacher probabilities)

* **Leak-free**: a record's scores come from the teacher model *before* its training step on that sample
  (``samples_trained`` says how many samples the teacher had trained on; the sample itself is not among them), so
  a student never learns from a teacher that already saw the sample's labels.
* **Auxiliary head** (:class:`AuxHeads`): one small MLP per task on the student's final representation (the input
  of its main head: the Ranker's MMoE input, the DLRM's tower input). The distillation gradient reaches the shared
  backbone through it, never the main head's own weights, so the main head stays calibrated on the true labels.
  It lives in :class:`DistilledStudent`, outside the servable model: snapshots and serving scores are unchanged.
* **Student adapter** (:class:`StudentAdapter`): the teacher's scores lag the stream (its snapshot is older than the
  student's data), so per task a monotone affine map of the teacher's logit, ``a · z_t + b`` with ``a = softplus(α)
  > 0`` (ranking preserved; initially the identity), is fitted online to the *true labels* by its own small Adam
  optimizer (online Platt scaling). The aux head learns the adapted probability ``σ(a · z_t + b)`` instead of the
  raw one. The adapter adapts a batch with its state from before that batch, then takes its step on the batch's
  labels.

Example:
    >>> rec = TeacherRecord("s1", ("e1", "e2"), {"click": (0.25, 0.5)}, teacher_version=3, snapshot_time=10.0,
    ...                     samples_trained=120, scored_at=12.5)
    >>> TeacherRecord.decode(rec.encode()) == rec
    True
    >>> TeacherRecord.decode(b'{"sample_id": 1}')
    Traceback (most recent call last):
    ...
    trainer.distill.TeacherRecordError: $.sample_id: expected a non-empty string, got 1
"""

from __future__ import annotations

import math
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import orjson
import torch
import torch.nn.functional as F
from torch import nn

from model.batch import Batch
from model.heads import mlp

RECORD_VERSION = 1
_EPS = 1e-6  # probabilities are clamped to [eps, 1 - eps] before taking logits

# The record's shape as a JSON Schema (documentation and the tests' cross-check; decoding validates by hand, with
# the same rules plus what JSON Schema cannot say: every task's list as long as event_ids).
TEACHER_RECORD_SCHEMA: dict[str, Any] = {
    "$schema": "https://json-schema.org/draft/2020-12/schema",
    "title": "teacher-score record",
    "type": "object",
    "required": ["v", "sample_id", "event_ids", "scores", "teacher_version", "snapshot_time", "samples_trained",
                 "scored_at"],
    "properties": {
        "v": {"const": RECORD_VERSION},
        "sample_id": {"type": "string", "minLength": 1},
        "event_ids": {"type": "array", "items": {"type": "string"}, "minItems": 1},
        "scores": {"type": "object", "minProperties": 1,
                   "additionalProperties": {"type": "array", "items": {"type": "number", "minimum": 0, "maximum": 1}}},
        "teacher_version": {"type": "integer", "minimum": 0},
        "snapshot_time": {"type": ["number", "null"]},
        "samples_trained": {"type": "integer", "minimum": 0},
        "scored_at": {"type": "number"},
    },
}


class TeacherRecordError(ValueError):
    """A teacher-score record that does not match :data:`TEACHER_RECORD_SCHEMA`; the message starts with the JSON
    path of the offending value (``$.scores.click[2]: ...``)."""


@dataclass(frozen=True)
class TeacherRecord:
    """The teacher's scores of one user-level sample, made before the teacher trained on it.

    Attributes:
        sample_id: the sample's id (the join key).
        event_ids: the sample's targets, in order (a student checks them against its own copy of the sample).
        scores: task → one teacher probability per target, aligned with ``event_ids``.
        teacher_version: the teacher's newest snapshot version when it scored (0 = none yet).
        snapshot_time: that snapshot's ``created_at`` (wall clock, s); None when there is none.
        samples_trained: samples the teacher had trained on when it scored (this one is not among them).
        scored_at: wall-clock time of the scoring.
    """

    sample_id: str
    event_ids: tuple[str, ...]
    scores: Mapping[str, tuple[float, ...]]
    teacher_version: int = 0
    snapshot_time: float | None = None
    samples_trained: int = 0
    scored_at: float = 0.0

    def to_json(self) -> dict[str, Any]:
        return {"v": RECORD_VERSION, "sample_id": self.sample_id, "event_ids": list(self.event_ids),
                "scores": {t: list(p) for t, p in self.scores.items()}, "teacher_version": self.teacher_version,
                "snapshot_time": self.snapshot_time, "samples_trained": self.samples_trained,
                "scored_at": self.scored_at}

    def encode(self) -> bytes:
        return orjson.dumps(self.to_json())

    @staticmethod
    def decode(raw: bytes | str) -> TeacherRecord:
        """Parse and validate; raises :class:`TeacherRecordError` naming the first bad value's path."""
        try:
            d = orjson.loads(raw)
        except orjson.JSONDecodeError as e:
            raise TeacherRecordError(f"$: invalid JSON ({e})") from None
        return TeacherRecord.from_json(d)

    @staticmethod
    def from_json(d: Any) -> TeacherRecord:
        if not isinstance(d, dict):
            raise TeacherRecordError(f"$: expected an object, got {type(d).__name__}")
        sid = d.get("sample_id")
        if not isinstance(sid, str) or not sid:
            raise TeacherRecordError(f"$.sample_id: expected a non-empty string, got {sid!r}")
        if d.get("v") != RECORD_VERSION:
            raise TeacherRecordError(f"$.v: expected {RECORD_VERSION}, got {d.get('v')!r}")
        eids = d.get("event_ids")
        if not isinstance(eids, list) or not eids or not all(isinstance(e, str) for e in eids):
            raise TeacherRecordError(f"$.event_ids: expected a non-empty array of strings, got {eids!r}")
        scores = d.get("scores")
        if not isinstance(scores, dict) or not scores:
            raise TeacherRecordError(f"$.scores: expected a non-empty object, got {scores!r}")
        out: dict[str, tuple[float, ...]] = {}
        for task, ps in scores.items():
            if not isinstance(ps, list) or len(ps) != len(eids):
                raise TeacherRecordError(f"$.scores.{task}: expected an array of {len(eids)} probabilities "
                                         f"(one per event id), got {ps!r}")
            for i, p in enumerate(ps):
                if isinstance(p, bool) or not isinstance(p, int | float) or not 0.0 <= p <= 1.0:
                    raise TeacherRecordError(f"$.scores.{task}[{i}]: expected a number in [0, 1], got {p!r}")
            out[task] = tuple(float(p) for p in ps)
        for name in ("teacher_version", "samples_trained"):
            v = d.get(name)
            if isinstance(v, bool) or not isinstance(v, int) or v < 0:
                raise TeacherRecordError(f"$.{name}: expected an integer >= 0, got {v!r}")
        snap = d.get("snapshot_time")
        if snap is not None and (isinstance(snap, bool) or not isinstance(snap, int | float) or not math.isfinite(snap)):
            raise TeacherRecordError(f"$.snapshot_time: expected a finite number or null, got {snap!r}")
        at = d.get("scored_at")
        if isinstance(at, bool) or not isinstance(at, int | float) or not math.isfinite(at):
            raise TeacherRecordError(f"$.scored_at: expected a finite number, got {at!r}")
        return TeacherRecord(sid, tuple(eids), out, int(d["teacher_version"]),
                             None if snap is None else float(snap), int(d["samples_trained"]), float(at))


def records_from_batch(batch: Batch, probs: Mapping[str, torch.Tensor], *, teacher_version: int,
                       snapshot_time: float | None, samples_trained: int, scored_at: float) -> list[TeacherRecord]:
    """One record per sample of ``batch`` from the teacher's (T,) probabilities per task (scored before training)."""
    off = batch.target_offsets.tolist()
    cpu = {t: p.detach().float().cpu().clamp(0.0, 1.0).tolist() for t, p in probs.items()}
    return [TeacherRecord(sid, tuple(batch.target_event_ids[a:b]), {t: tuple(v[a:b]) for t, v in cpu.items()},
                          teacher_version, snapshot_time, samples_trained, scored_at)
            for sid, a, b in zip(batch.sample_ids, off[:-1], off[1:], strict=True)]


@dataclass
class TeacherTargets:
    """The teacher's scores of one student batch (T targets), joined by sample id.

    Attributes:
        probs: task → (T,) teacher probability (0.5 where ``mask`` is False).
        mask: (T,) bool: the target's sample had a matching teacher record.
        versions: (T,) int64 teacher snapshot version per target (-1 where missing).
        snapshot_times: (T,) float64 teacher snapshot time per target (nan where missing or unknown).
    """

    probs: dict[str, torch.Tensor]
    mask: torch.Tensor
    versions: torch.Tensor
    snapshot_times: torch.Tensor

    @property
    def joined(self) -> int:
        return int(self.mask.sum())

    def to(self, device: torch.device) -> TeacherTargets:
        return TeacherTargets({t: p.to(device) for t, p in self.probs.items()}, self.mask.to(device),
                              self.versions, self.snapshot_times)


def teacher_targets(batch: Batch, records: Mapping[str, TeacherRecord], tasks: Sequence[str]) -> TeacherTargets:
    """Align ``records`` (by sample id) with ``batch``'s targets. A record whose event ids differ from the sample's
    targets (another version of the sample) or that lacks a task counts as missing for that sample."""
    T = batch.num_targets
    probs = {t: torch.full((T,), 0.5) for t in tasks}
    mask = torch.zeros(T, dtype=torch.bool)
    versions = torch.full((T,), -1, dtype=torch.int64)
    times = torch.full((T,), math.nan, dtype=torch.float64)
    off = batch.target_offsets.tolist()
    for sid, a, b in zip(batch.sample_ids, off[:-1], off[1:], strict=True):
        rec = records.get(sid)
        if rec is None or rec.event_ids != tuple(batch.target_event_ids[a:b]) or any(t not in rec.scores for t in tasks):
            continue
        for t in tasks:
            probs[t][a:b] = torch.tensor(rec.scores[t])
        mask[a:b] = True
        versions[a:b] = rec.teacher_version
        times[a:b] = math.nan if rec.snapshot_time is None else rec.snapshot_time
    return TeacherTargets(probs, mask, versions, times)


class TeacherJoin:
    """A bounded, thread-safe buffer of teacher records by sample id: the consumer thread adds, the training loop
    takes a batch's records, waiting up to a deadline for the missing ones.

    At most ``capacity`` records are held; adding beyond evicts the oldest (counted in ``evicted``: its sample, if it
    ever comes, trains on labels only). A record is removed when taken. A newer record for the same sample (a
    restarted teacher redoing a batch) replaces the older one: both were made before the teacher trained on it.

    Example:
        >>> j = TeacherJoin(capacity=2)
        >>> for sid in ("a", "b", "c"):
        ...     j.add(TeacherRecord(sid, ("e",), {"click": (0.5,)}))
        >>> sorted(j.take(["a", "b", "c"], timeout_s=0.0)), j.evicted
        (['b', 'c'], 1)
    """

    def __init__(self, capacity: int, clock: Callable[[], float] = time.monotonic) -> None:
        if capacity < 1:
            raise ValueError("capacity must be >= 1")
        self.capacity = capacity
        self.evicted = 0
        self._clock = clock
        self._records: OrderedDict[str, TeacherRecord] = OrderedDict()
        self._cv = threading.Condition()

    def __len__(self) -> int:
        with self._cv:
            return len(self._records)

    def add(self, record: TeacherRecord) -> None:
        with self._cv:
            self._records.pop(record.sample_id, None)
            self._records[record.sample_id] = record
            while len(self._records) > self.capacity:
                self._records.popitem(last=False)
                self.evicted += 1
            self._cv.notify_all()

    def take(self, sample_ids: Sequence[str], timeout_s: float) -> dict[str, TeacherRecord]:
        """The records of ``sample_ids`` (removed from the buffer), waiting up to ``timeout_s`` until all are there;
        those still missing then are left out."""
        deadline = self._clock() + timeout_s
        with self._cv:
            while True:
                missing = [s for s in sample_ids if s not in self._records]
                left = deadline - self._clock()
                if not missing or left <= 0:
                    break
                self._cv.wait(timeout=left)
            return {s: self._records.pop(s) for s in sample_ids if s in self._records}


# ---------------------------------------------------------------------------------------------- student side
@dataclass(frozen=True)
class DistillConfig:
    """How a student learns from teacher scores.

    Attributes:
        weight: w, the distillation loss's weight next to the label loss (0 = labels only).
        aux_head: learn the teacher through :class:`AuxHeads` (True) or directly through the main head (False).
        adapter: correct the teacher's scores with :class:`StudentAdapter` before learning them.
        aux_hidden: hidden width of each task's aux MLP.
        adapter_lr: the adapter's Adam learning rate.
    """

    weight: float = 1.0
    aux_head: bool = True
    adapter: bool = True
    aux_hidden: int = 32
    adapter_lr: float = 0.01

    def __post_init__(self) -> None:
        if self.weight < 0 or self.aux_hidden < 1 or self.adapter_lr <= 0:
            raise ValueError("weight must be >= 0, aux_hidden >= 1, adapter_lr > 0")


def prob_logit(p: torch.Tensor) -> torch.Tensor:
    """logit of probabilities clamped away from 0 and 1."""
    return torch.logit(p.clamp(_EPS, 1.0 - _EPS))


class StudentAdapter(nn.Module):
    """Per task, a monotone affine map of the teacher's logit, fitted online to the true labels.

    ``forward({task: (T,) teacher probs}) -> {task: (T,) adapted logits}`` = ``softplus(α_t) · logit(p) + b_t``,
    initially the identity (α = log(e − 1), b = 0). :meth:`update` takes one Adam step of the masked BCE of the
    adapted logits against the labels (its own optimizer: the adapter never shares the student's gradient clipping).

    Example:
        >>> ad = StudentAdapter(("click",))
        >>> round(float(ad({"click": torch.tensor([0.25])})["click"].detach()), 4) == round(math.log(1 / 3), 4)
        True
    """

    def __init__(self, tasks: Sequence[str], lr: float = 0.01) -> None:
        super().__init__()
        self.tasks = tuple(tasks)
        k = len(self.tasks)
        self.alpha = nn.Parameter(torch.full((k,), math.log(math.e - 1.0)))
        self.bias = nn.Parameter(torch.zeros(k))
        self._opt = torch.optim.Adam(self.parameters(), lr=lr)

    def forward(self, probs: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        a = F.softplus(self.alpha)
        return {t: a[i] * prob_logit(probs[t]) + self.bias[i] for i, t in enumerate(self.tasks)}

    def update(self, probs: Mapping[str, torch.Tensor], labels: Mapping[str, torch.Tensor],
               mask: torch.Tensor) -> float:
        """One step on the targets of ``mask``; returns the loss before the step (nan when ``mask`` is empty)."""
        if not bool(mask.any()):
            return math.nan
        z = self({t: p.detach()[mask] for t, p in probs.items()})
        loss = sum((F.binary_cross_entropy_with_logits(z[t], labels[t][mask].to(z[t].dtype)) for t in self.tasks),
                   torch.zeros((), device=mask.device))
        self._opt.zero_grad(set_to_none=True)
        loss.backward()
        self._opt.step()
        return float(loss.detach())


class AuxHeads(nn.Module):
    """One MLP per task on the student's final representation: ``forward((T, d)) -> {task: (T,) logits}``.

    Example:
        >>> AuxHeads(8, ("click",), hidden=4)(torch.zeros(3, 8))["click"].shape
        torch.Size([3])
    """

    def __init__(self, d_in: int, tasks: Sequence[str], hidden: int = 32) -> None:
        super().__init__()
        self.towers = nn.ModuleDict({t: mlp([d_in, hidden, 1]) for t in tasks})

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        return {t: tower(x).squeeze(-1) for t, tower in self.towers.items()}


def representation_site(model: nn.Module) -> tuple[nn.Module, int]:
    """(module whose first input is the student's final per-target representation (T, d), d).

    The Ranker: its MMoE head (input = [final-norm target token, wide input token], (T, 2·d_model)); the DLRM
    baseline: its first task tower (input = [pairwise interactions, target token, dense vector]).
    """
    from model import DLRMBaseline, Ranker

    if isinstance(model, Ranker):
        expert = model.head.experts[0]
        assert isinstance(expert, nn.Sequential)
        first = expert[0]
        assert isinstance(first, nn.Linear)
        return model.head, first.in_features
    if isinstance(model, DLRMBaseline):
        tower = next(iter(model.towers.values()))
        assert isinstance(tower, nn.Sequential) and isinstance(tower[0], nn.Linear)
        return tower, tower[0].in_features
    raise TypeError(f"no known final representation in {type(model).__name__} (Ranker or DLRMBaseline)")


@dataclass
class DistillStats:
    """What one distillation step saw: targets with a teacher score, the distillation loss, mean |p_t − p_s| (the
    student's pre-update main-head probabilities), and the adapter's label loss."""

    joined: int = 0
    missing: int = 0
    loss: float = math.nan
    agreement: float = math.nan
    adapter_loss: float = math.nan
    versions: list[int] = field(default_factory=list)


class DistilledStudent(nn.Module):
    """A student model with the distillation parts next to it; scores exactly as the wrapped model does.

    ``forward(batch)`` is the student's (a forward pre-hook on its head only *records* the final representation
    for :meth:`distill_loss`). ``dense_parameters`` adds the aux heads (trained by the trainer's AdamW with the
    student); the adapter keeps its own optimizer. A servable student is written to snapshots as itself
    (:class:`ServableDistilledStudent.to_ranker`), without aux head or adapter.

    Example:
        >>> from model import DLRMBaseline, DLRMConfig
        >>> from model.features import FeatureSpec
        >>> s = DistilledStudent(DLRMBaseline(FeatureSpec(), DLRMConfig()), DistillConfig())
        >>> sorted(s.aux.towers) if s.aux is not None else None
        ['click', 'conversion']
    """

    def __init__(self, student: nn.Module, config: DistillConfig) -> None:
        super().__init__()
        self.student = student
        self.distill = config
        self.tasks: tuple[str, ...] = tuple(student.spec.tasks)  # type: ignore[union-attr, arg-type]
        site, dim = representation_site(student)
        self._rep: torch.Tensor | None = None
        site.register_forward_pre_hook(self._capture)
        self.aux = AuxHeads(dim, self.tasks, config.aux_hidden) if config.aux_head else None
        self.adapter = StudentAdapter(self.tasks, config.adapter_lr) if config.adapter else None

    def _capture(self, _m: nn.Module, args: tuple[Any, ...]) -> None:
        self._rep = args[0]

    @property
    def config(self) -> Any:
        return self.student.config

    def forward(self, batch: Batch) -> dict[str, torch.Tensor]:
        return self.student(batch)  # type: ignore[no-any-return]

    def embedding_parameters(self) -> list[nn.Parameter]:
        return self.student.embedding_parameters()  # type: ignore[operator, no-any-return]

    def dense_parameters(self) -> list[nn.Parameter]:
        aux = list(self.aux.parameters()) if self.aux is not None else []
        return self.student.dense_parameters() + aux  # type: ignore[operator, no-any-return]

    def observe(self, batch: Batch) -> None:
        self.student.observe(batch)  # type: ignore[operator]

    def distill_loss(self, logits: Mapping[str, torch.Tensor], student_probs: Mapping[str, torch.Tensor],
                     labels: Mapping[str, torch.Tensor], teacher: TeacherTargets) -> tuple[torch.Tensor, DistillStats]:
        """``w · Σ_task BCE(aux (or main) logits, teacher targets)`` over the targets with a teacher score, after
        the forward that produced ``logits``; the adapter (when on) adapts first, then steps on ``labels``."""
        mask = teacher.mask.to(next(iter(logits.values())).device)
        n = int(mask.sum())
        stats = DistillStats(joined=n, missing=int(mask.numel()) - n,
                             versions=sorted(set(teacher.versions[teacher.mask].tolist())))
        zero = next(iter(logits.values())).sum() * 0.0
        if n == 0:
            return zero, stats
        stats.agreement = float(torch.stack([(student_probs[t].detach()[mask] - teacher.probs[t][mask]).abs().mean()
                                             for t in self.tasks]).mean())
        if self.adapter is not None:
            with torch.no_grad():
                target_logits = self.adapter(teacher.probs)
            stats.adapter_loss = self.adapter.update(teacher.probs, labels, mask)
            targets = {t: torch.sigmoid(z) for t, z in target_logits.items()}
        else:
            targets = dict(teacher.probs)
        w = self.distill.weight
        if w == 0:  # no graph at all: the student's update is exactly the label-only one
            return zero, stats
        if self.aux is not None:
            assert self._rep is not None, "distill_loss needs the forward pass of the same batch first"
            pred = self.aux(self._rep)
        else:
            pred = dict(logits)
        loss = sum((F.binary_cross_entropy_with_logits(pred[t][mask], targets[t][mask]) for t in self.tasks),
                   zero)
        stats.loss = float(loss.detach())
        return w * loss, stats


class ServableDistilledStudent(DistilledStudent):
    """A :class:`DistilledStudent` around a servable model (the Ranker): snapshots hold only the student."""

    def to_ranker(self) -> Any:
        return self.student.to_ranker()  # type: ignore[operator]


def wrap_student(model: nn.Module, config: DistillConfig) -> DistilledStudent:
    """``model`` with the distillation parts: servable (``to_ranker``) when ``model`` is."""
    cls = ServableDistilledStudent if hasattr(model, "to_ranker") else DistilledStudent
    return cls(model, config)
