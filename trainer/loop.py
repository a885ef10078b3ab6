"""The continual training loop: Kafka samples → progressive validation → train step → checkpoints and snapshots.

One iteration of :meth:`Trainer.run`, one named step of :class:`trainer.steps.RunSteps` each::

    poll       item  = prefetcher.get()              # decoded + collated on a background thread (pinned on CUDA)
    agree      torchrun ranks agree on batch/stop/persist (a rank without data trains a zero-weighted stand-in)
    account    offsets, produce time, records and skips of the item
    learn      probs = sigmoid(model(batch))         # score BEFORE learning: progressive validation
               loss  = Σ_task BCE(logits, labels)    # then learn from the same forward pass
               step row-wise Adagrad (embeddings) + AdamW (dense)
    persist    every --snapshot-every-s / --snapshot-every-samples: checkpoint, then serving snapshot, announce
               (else every --checkpoint-every-s: checkpoint), as :class:`trainer.schedule.PersistSchedule` says
    report     metrics JSONL line every --log-every-s (:mod:`trainer.outputs`), Prometheus gauges every iteration

Exactly-once training: a checkpoint stores the model, the optimizers, the next Kafka offset of every partition, the
progressive-metric state and the last N trained sample ids, all taken at the same batch boundary; a restart loads it
and seeks there, so work after the last checkpoint is redone exactly once on the restored model. Replayed samples
(same ``sample_id``, e.g. the streaming worker re-emitting after its own crash) are skipped as ``duplicate``.
A serving snapshot is always preceded by a checkpoint, so a published snapshot never contains training that a
restart would roll back.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import logging
import threading
import time
from collections import Counter
from contextlib import AbstractContextManager
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Literal

import torch
from prometheus_client import REGISTRY, CollectorRegistry
from torch import nn

from model import Ranker, SnapshotSource, TrainableModel
from model.batch import Batch, collate
from model.features import FeatureSpec
from streaming.sample import Sample, Target
from trainer.checkpoint import (
    CHECKPOINT_FORMAT,
    TrainedLog,
    checkpoint_path,
    checkpoint_step,
    latest_checkpoint,
    load_checkpoint,
    prune_checkpoints,
    save_checkpoint,
)
from trainer.distill import DistillConfig, DistilledStudent, DistillStats, TeacherTargets
from trainer.metrics import TrainerMetrics
from trainer.optim import OptimConfig, WeightAverage, build_optimizers, multitask_bce, pairwise_rank_loss
from trainer.outputs import MetricsLog, SnapshotAnnouncer
from trainer.progressive import ProgressiveConfig, ProgressiveValidator
from trainer.schedule import PersistSchedule, RunLimits, RunSummary
from trainer.source import RecentIds, SourceConfig
from trainer.steps import RunSteps, SourceFactory

if TYPE_CHECKING:
    from model import DLRMBaseline
    from trainer.distributed import Collective, ShardedRanker

    def _implements_the_contract(r: Ranker, d: DLRMBaseline, s: ShardedRanker
                                 ) -> tuple[SnapshotSource, TrainableModel, SnapshotSource]:
        """mypy checks each model the trainer is given against its Protocol here (never called)."""
        return r, d, s


log = logging.getLogger(__name__)
_PAD_SAMPLE = Sample("__pad__", "__pad__", [Target("__pad__", "__pad__", "__pad__", "__pad__", 0.0)])


@dataclass(frozen=True)
class TrainerConfig:
    """Everything ``python -m trainer`` configures (built only in ``trainer.__main__``).

    Attributes:
        source: Kafka source and batching.
        optim: optimizers.
        progressive: progressive-validation windows.
        run_dir: parent of the default snapshot/checkpoint dirs and metrics log.
        snapshot_dir / checkpoint_dir / metrics_log: None = ``run_dir/snapshots``, ``run_dir/checkpoints``,
            ``run_dir/metrics.jsonl``.
        trained_log: optional file of trained sample ids, committed with each checkpoint (exactly-once audits).
        snapshot_every_s / snapshot_every_samples: snapshot cadence (whichever comes first; 0 disables one).
        snapshot_idle_s: also snapshot as soon as the trainer has caught up (a poll found no new record) with
            training not yet in a snapshot, at most once per this many seconds (0 = off): the last batches of a
            burst are served without waiting out the cadence.
        snapshot_keep / checkpoint_keep: retention.
        checkpoint_every_s: checkpoint cadence between snapshots (a snapshot always checkpoints first).
        snapshots_topic: announce snapshots here ("" = don't announce).
        log_every_s: metrics JSONL / Prometheus quality refresh cadence.
        device: "auto" (CUDA when present), "cpu" or "cuda".
        seed: torch seed for model init.
        teacher_scores_topic: publish every trained batch's pre-update scores here as teacher records
            (:mod:`trainer.distill`; "" = off).
        distill_from: join teacher records from this topic and distill them ("" = off; the model must be a
            :class:`trainer.distill.DistilledStudent`).
        distill_wait_s: how long a batch waits for its samples' teacher records (then: labels only, counted).
        distill_buffer: teacher records held for samples not yet trained (oldest evicted beyond).
        distill: the student's distillation settings.
    """

    source: SourceConfig = field(default_factory=SourceConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    progressive: ProgressiveConfig = field(default_factory=ProgressiveConfig)
    run_dir: Path = Path("runs")
    snapshot_dir: Path | None = None
    checkpoint_dir: Path | None = None
    metrics_log: Path | None = None
    trained_log: Path | None = None
    snapshot_every_s: float = 5.0
    snapshot_every_samples: int = 0
    snapshot_idle_s: float = 0.0
    snapshot_keep: int = 5
    checkpoint_every_s: float = 30.0
    checkpoint_keep: int = 2
    snapshots_topic: str = "snapshots"
    log_every_s: float = 5.0
    device: Literal["auto", "cpu", "cuda"] = "auto"
    seed: int = 0
    teacher_scores_topic: str = ""
    distill_from: str = ""
    distill_wait_s: float = 2.0
    distill_buffer: int = 100_000
    distill: DistillConfig = field(default_factory=DistillConfig)

    @property
    def snapshots_path(self) -> Path:
        return self.snapshot_dir or self.run_dir / "snapshots"

    @property
    def checkpoints_path(self) -> Path:
        return self.checkpoint_dir or self.run_dir / "checkpoints"

    @property
    def metrics_path(self) -> Path:
        return self.metrics_log or self.run_dir / "metrics.jsonl"


def resolve_device(name: str) -> torch.device:
    """``auto`` → CUDA when available, else CPU."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def _model_config_json(model: TrainableModel) -> str:
    cfg = model.config
    if dataclasses.is_dataclass(cfg) and not isinstance(cfg, type):
        return json.dumps(dataclasses.asdict(cfg), sort_keys=True, default=str)
    return "{}"


class Trainer:
    """Continual trainer of one servable model (``forward(batch) -> {task: logits (T,)}``).

    Args:
        config: the trainer configuration.
        model: the raw model, an ``nn.Module`` implementing :class:`model.TrainableModel` (``observe(batch)``
            is called after each real training step); serving snapshots are written when it is also a
            :class:`model.SnapshotSource` (checkpoints only otherwise).
        spec: the feature spec used by ``collate`` (saved into every snapshot by ``model.snapshot``).
        registry: Prometheus registry (a private one in tests).
        collective: lockstep agreement of torchrun ranks (``trainer.distributed``); None on one process.

    Example (consumes from a broker, so not a doctest)::

        trainer = Trainer(TrainerConfig(), Ranker(spec, RankerConfig()), spec)
        trainer.run(max_samples=10_000)
    """

    def __init__(self, config: TrainerConfig, model: nn.Module, spec: FeatureSpec,
                 registry: CollectorRegistry | None = None, collective: Collective | None = None) -> None:
        self.config = config
        self.collective = collective
        self.spec = spec
        self.device = resolve_device(config.device)
        if not isinstance(model, TrainableModel):
            raise TypeError(f"{type(model).__name__} does not implement model.TrainableModel (config, "
                            "embedding_parameters, dense_parameters, observe)")
        self.model: nn.Module = model.to(self.device)
        self.trainable: TrainableModel = model  # the same object, seen through the trainer's contract
        self.emb_opt, self.dense_opt = build_optimizers(model.embedding_parameters(), model.dense_parameters(),
                                                        config.optim)
        # scores and snapshots use the average of the dense weights (OptimConfig.ema_decay; None = the weights)
        self.average: WeightAverage | None = (
            WeightAverage([p for g in self.dense_opt.param_groups for p in g["params"]], config.optim.ema_decay)
            if config.optim.ema_decay > 0 and self.dense_opt is not None else None)
        self.progressive = ProgressiveValidator(config.progressive)
        self.metrics = TrainerMetrics(registry if registry is not None else REGISTRY)
        self.trained = RecentIds(config.source.dedupe_capacity)
        self.trained_log = TrainedLog(config.trained_log) if config.trained_log else None
        self.stop_event = threading.Event()
        # Lifetime state, restored from the checkpoint by _resume.
        self.offsets: dict[int, int] = {}  # partition → next offset to read
        self.samples_trained = 0
        self.targets_trained = 0
        self.steps = 0
        self.max_event_ts = 0.0
        self.max_produce_ts: float | None = None  # newest samples record consumed (Kafka timestamp, wall clock)
        self.snapshot_version = 0
        self.last_snapshot_path: Path | None = None
        self.resumed_from: Path | None = None
        self.skipped: Counter[str] = Counter()  # reason → records skipped by this process
        self.schedule = PersistSchedule()  # what is not yet checkpointed/snapshotted, and since when
        self.metrics_log = MetricsLog()  # open while run() runs
        self.announcer = SnapshotAnnouncer()  # open while run() runs, when snapshots_topic is set
        # model.snapshot serialises the Ranker (a sharded one is gathered to rank 0 first)
        self.servable: SnapshotSource | None = model if isinstance(model, SnapshotSource) else None
        if self.servable is None:
            log.warning("%s: serving snapshots are written for the Ranker only; checkpoints still are",
                        type(model).__name__)
        # A one-target stand-in for a lockstep rank without data (its loss is multiplied by 0; nothing is counted).
        self.padding_batch: Batch | None = (None if collective is None
                                            else collate([_PAD_SAMPLE], spec).to(self.device))
        self.last_probs: dict[str, torch.Tensor] = {}  # the last train_step's pre-update scores, task → (T,)
        self.last_distill: DistillStats | None = None  # the last train_step's distillation stats (None: none)
        self.snapshot_created_at: float | None = None  # wall clock of this process's newest snapshot
        self._score_in_eval = any(isinstance(x, nn.Dropout) and x.p > 0 for x in model.modules())
        self._resume()

    # ------------------------------------------------------------------ resume / checkpoint / snapshot
    def _resume(self) -> None:
        """Load the newest checkpoint (the newest all ranks have, under torchrun) into the lifetime state."""
        path = latest_checkpoint(self.config.checkpoints_path)
        if self.collective is not None:  # every rank resumes from the newest step all of them have
            step = self.collective.agree_min(checkpoint_step(path) if path is not None else -1)
            path = None if step < 0 else checkpoint_path(self.config.checkpoints_path, step)
            if path is not None and not path.exists():
                raise RuntimeError(f"rank {self.collective.rank} lacks {path}: ranks' checkpoints diverged")
        if path is None:
            if self.trained_log is not None:
                self.trained_log.truncate(0)  # a fresh run owns a fresh audit log
            self._sync_snapshot_version()
            return
        ck = load_checkpoint(path)
        try:
            self.model.load_state_dict(ck["model"])
        except RuntimeError as e:
            raise RuntimeError(f"checkpoint {path} does not fit this model (different model flags?): {e}") from None
        if self.emb_opt is not None and ck.get("optim_embedding") is not None:
            self.emb_opt.load_state_dict(ck["optim_embedding"])
        if self.dense_opt is not None and ck.get("optim_dense") is not None:
            self.dense_opt.load_state_dict(ck["optim_dense"])
        if self.average is not None and ck.get("weight_average") is not None:
            self.average.load_state_dict(ck["weight_average"])
        saved_topic = ck["offsets"]["topic"]
        if saved_topic == self.config.source.topic:
            self.offsets.update({int(p): int(o) for p, o in ck["offsets"]["partitions"].items()})
        else:
            log.warning("checkpoint offsets are for topic %r, not %r: not seeking", saved_topic, self.config.source.topic)
        self.progressive.load_state_dict(ck["progressive"])
        self.trained = RecentIds(self.config.source.dedupe_capacity, ck["trained_ids"])
        self.samples_trained = int(ck["samples_trained"])
        self.targets_trained = int(ck["targets_trained"])
        self.steps = int(ck["steps"])
        self.max_event_ts = float(ck["max_event_ts"])
        self.max_produce_ts = ck.get("max_produce_ts")
        self.snapshot_version = int(ck["snapshot_version"])
        self.schedule.samples_at_snapshot = self.samples_trained
        if self.trained_log is not None:
            self.trained_log.truncate(int(ck["trained_log_bytes"]))
        self._sync_snapshot_version()
        self.resumed_from = path
        log.info("resumed from %s: %d samples trained, offsets %s", path, self.samples_trained, self.offsets)

    def _sync_snapshot_version(self) -> None:
        from model.snapshot import next_version

        self.snapshot_version = max(self.snapshot_version, next_version(self.config.snapshots_path) - 1)

    def checkpoint(self) -> Path:
        """Write a checkpoint at the current batch boundary (commits the trained-ids log with it)."""
        log_bytes = self.trained_log.commit() if self.trained_log is not None else -1
        payload = {
            "format": CHECKPOINT_FORMAT,
            "model": {k: v.detach().cpu() for k, v in self.model.state_dict().items()},
            "optim_embedding": self.emb_opt.state_dict() if self.emb_opt is not None else None,
            "optim_dense": self.dense_opt.state_dict() if self.dense_opt is not None else None,
            "weight_average": self.average.state_dict() if self.average is not None else None,
            "offsets": {"topic": self.config.source.topic, "partitions": dict(self.offsets)},
            "progressive": self.progressive.state_dict(),
            "trained_ids": self.trained.to_list(),
            "samples_trained": self.samples_trained,
            "targets_trained": self.targets_trained,
            "steps": self.steps,
            "max_event_ts": self.max_event_ts,
            "max_produce_ts": self.max_produce_ts,
            "snapshot_version": self.snapshot_version,
            "trained_log_bytes": log_bytes,
            "feature_spec": self.spec.to_json(),
            "model_config": _model_config_json(self.trainable),
            "created_at": time.time(),
        }
        path = save_checkpoint(self.config.checkpoints_path, self.steps, payload)  # steps: equal on all ranks
        prune_checkpoints(self.config.checkpoints_path, self.config.checkpoint_keep)
        self.schedule.checkpointed(time.monotonic())
        self.metrics.checkpoints.inc()
        self.metrics_log.write({"event": "checkpoint", "path": str(path), "samples_trained": self.samples_trained,
                                 "offsets": {str(k): v for k, v in self.offsets.items()}})
        return path

    def snapshot(self) -> Path:
        """Checkpoint, then write + announce a serving snapshot of the model (version + 1; with
        ``OptimConfig.ema_decay`` its averaged dense weights, the ones progressive validation scores)."""
        from model.snapshot import SnapshotMeta, prune_snapshots, save_snapshot

        if self.servable is None:
            self.schedule.snapshotted(time.monotonic(), samples_trained=None)
            return self.checkpoint()
        version = self.snapshot_version + 1
        self.snapshot_version = version  # recorded in the checkpoint before the snapshot exists: versions never repeat
        self.checkpoint()
        created = time.time()
        meta = SnapshotMeta(version=version, created_at=created, max_event_ts=self.max_event_ts,
                            samples_trained=self.samples_trained, max_produce_ts=self.max_produce_ts)
        with self._averaged():  # serve what progressive validation scored: the averaged weights, if any
            # sharded: a collective gather, the Ranker on rank 0 only; unsharded: the model itself
            model: Ranker | None = self.servable.to_ranker()
            if model is not None:
                was_training = model.training
                model.eval()
                try:
                    path = Path(save_snapshot(self.config.snapshots_path, model, meta))
                finally:
                    model.train(was_training)
        if model is None:  # another rank writes and announces
            self.schedule.snapshotted(time.monotonic(), self.samples_trained)
            self.metrics.snapshot_published(version, created)
            return self.config.snapshots_path
        prune_snapshots(self.config.snapshots_path, self.config.snapshot_keep)
        self.last_snapshot_path = path
        self.schedule.snapshotted(time.monotonic(), self.samples_trained)
        self.metrics.snapshot_published(version, created)
        self.snapshot_created_at = created
        announcement = {"version": version, "path": str(path.resolve()), "created_at": created,
                        "max_event_ts": self.max_event_ts, "samples_trained": self.samples_trained,
                        "max_produce_ts": self.max_produce_ts}
        self.announcer.announce(announcement)
        self.metrics_log.write({"event": "snapshot", **announcement})
        return path

    def _averaged(self) -> AbstractContextManager[None]:
        """The averaged dense weights in the model inside the block (a no-op without ``ema_decay``)."""
        return self.average.swapped() if self.average is not None else contextlib.nullcontext()

    # ------------------------------------------------------------------ one step
    def train_step(self, batch: Batch, weight: float = 1.0, teacher: TeacherTargets | None = None) -> dict[str, float]:
        """Score ``batch`` (progressive validation), then learn from it. Returns per-task losses.

        ``weight=0`` runs the full forward/backward with a zero loss and no validation (a lockstep stand-in).
        ``teacher``: the teacher's scores of the batch's targets; a :class:`trainer.distill.DistilledStudent` model
        adds its distillation loss (``last_distill`` keeps its stats). The pre-update probabilities stay in
        ``last_probs`` (what a teacher publishes).
        """
        model = self.model
        separate = self._score_in_eval or self.average is not None
        if separate:  # dropout or averaged weights: score with a separate forward of what serving would run
            model.eval()
            with torch.no_grad(), self._averaged():
                probs = {t: torch.sigmoid(z) for t, z in model(batch).items()}
        model.train()
        logits = model(batch)  # {task: (T,)}
        if not separate:  # the training forward's scores equal serving's
            probs = {t: torch.sigmoid(z.detach()) for t, z in logits.items()}
        # Progressive validation: these scores come from the model *before* this batch's update.
        if weight > 0:
            self.progressive.update(probs, {t: batch.labels[t] for t in probs}, batch.target_scenarios,
                                    batch.target_user_ids)
        self.last_probs = probs
        loss, per_task = multitask_bce(logits, batch.labels)
        if self.config.optim.rank_loss_weight > 0:
            rank = pairwise_rank_loss(logits, batch.labels, batch.target_offsets)
            if rank is not None:
                loss = loss + self.config.optim.rank_loss_weight * rank
        self.last_distill = None
        if teacher is not None and isinstance(model, DistilledStudent) and weight > 0:
            d_loss, self.last_distill = model.distill_loss(logits, probs, batch.labels, teacher.to(self.device))
            loss = loss + d_loss
        if weight != 1.0:
            loss = loss * weight
        for opt in (self.emb_opt, self.dense_opt):
            if opt is not None:
                opt.zero_grad(set_to_none=True)
        loss.backward()
        if self.config.optim.grad_clip > 0 and self.dense_opt is not None:
            params = [p for g in self.dense_opt.param_groups for p in g["params"]]
            torch.nn.utils.clip_grad_norm_(params, self.config.optim.grad_clip)
        for opt in (self.emb_opt, self.dense_opt):
            if opt is not None:
                opt.step()
        if self.average is not None:
            self.average.update()
        if weight > 0:  # after scoring and learning: no progressive score sees its own batch's statistics
            self.trainable.observe(batch)
        per_task["total"] = float(loss.detach())
        return per_task

    # ------------------------------------------------------------------ the loop
    def run(self, max_samples: int | None = None, max_seconds: float | None = None,
            exit_when_idle_s: float | None = None,
            source_factory: SourceFactory | None = None) -> RunSummary:
        """Train until stopped (``stop_event``), ``max_samples`` trained, ``max_seconds`` passed, or no record
        arrived for ``exit_when_idle_s``. Always ends with a checkpoint and (if anything new) a snapshot.

        ``source_factory(offsets, stop_event)`` replaces the Kafka source (tests: an in-process stand-in).
        Under torchrun every decision of an iteration is agreed by all ranks, so only the collective stops them.
        """
        limits = RunLimits(max_samples, max_seconds, exit_when_idle_s)
        steps = RunSteps(self, source_factory)  # outputs and source open, prefetch thread started
        try:
            soft_stop = False  # a limit was reached (under torchrun: agreed with the other ranks before stopping)
            while self.collective is not None or not self.stop_event.is_set():
                polled = steps.poll()
                item = polled.item
                batch = item.batch if item is not None else None
                snap_due, ckpt_due = self.schedule.due(self.config, polled.now, self.samples_trained,
                                                       idle=item is not None and item.records == 0)
                if self.collective is not None:
                    agreed = steps.agree(batch is not None, soft_stop, snap_due, ckpt_due)
                    if agreed is None:
                        break  # this item is dropped unaccounted: its offsets were not taken, it is re-read later
                    snap_due, ckpt_due = agreed
                if item is not None:
                    steps.account(item, polled.now)
                if batch is not None:
                    steps.learn(batch, polled.perf_t)
                steps.persist(snap_due, ckpt_due)
                now = time.monotonic()
                steps.report(now)
                soft_stop = limits.reached(steps.stats, now)
                if self.collective is None and (soft_stop or self.stop_event.is_set()):
                    break
        finally:
            summary = steps.finish()
        return summary
