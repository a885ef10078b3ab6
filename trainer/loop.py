"""The continual training loop: Kafka samples → progressive validation → train step → checkpoints and snapshots.

One iteration (nanoGPT style, see :meth:`Trainer.run`)::

    item  = prefetcher.get()                    # decoded + collated on a background thread (pinned on CUDA)
    probs = sigmoid(model(batch))               # score BEFORE learning: progressive validation
    loss  = Σ_task BCE(logits, labels)          # then learn from the same forward pass
    step row-wise Adagrad (embeddings) + AdamW (dense)
    every --snapshot-every-s / --snapshot-every-samples:  checkpoint, then serving snapshot, announce on Kafka

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
import math
import threading
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal, TextIO

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
    latest_checkpoint,
    load_checkpoint,
    prune_checkpoints,
    save_checkpoint,
)
from trainer.metrics import TrainerMetrics
from trainer.optim import OptimConfig, build_optimizers, multitask_bce
from trainer.progressive import ProgressiveConfig, ProgressiveValidator

if TYPE_CHECKING:
    from model import DLRMBaseline
    from trainer.distributed import Collective, ShardedRanker

    def _implements_the_contract(r: Ranker, d: DLRMBaseline, s: ShardedRanker
                                 ) -> tuple[SnapshotSource, TrainableModel, SnapshotSource]:
        """mypy checks each model the trainer is given against its Protocol here (never called)."""
        return r, d, s
from trainer.source import (
    RECONNECT_BACKOFF_MAX_MS,
    DeadLetter,
    KafkaSampleSource,
    Prefetcher,
    RecentIds,
    SampleBatch,
    SourceConfig,
)

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


def _jsonable(x: Any) -> Any:
    """NaN/inf → None so the JSONL log stays strict JSON."""
    if isinstance(x, float):
        return x if math.isfinite(x) else None
    if isinstance(x, dict):
        return {str(k): _jsonable(v) for k, v in x.items()}
    if isinstance(x, list | tuple):
        return [_jsonable(v) for v in x]
    return x


def _model_config_json(model: TrainableModel) -> str:
    cfg = model.config
    if dataclasses.is_dataclass(cfg) and not isinstance(cfg, type):
        return json.dumps(dataclasses.asdict(cfg), sort_keys=True, default=str)
    return "{}"


@dataclass
class RunSummary:
    """What :meth:`Trainer.run` did (also the last ``stop`` line of the metrics log)."""

    samples_trained: int
    targets_trained: int
    steps: int
    records: int
    skipped: dict[str, int]
    data_wait_s: float
    compute_s: float
    persist_s: float
    wall_s: float
    startup_wait_s: float  # data wait before the first batch of this run (consumer assignment, first fetch)
    snapshot_version: int


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
        emb = model.embedding_parameters()
        dense = model.dense_parameters()
        self.emb_opt, self.dense_opt = build_optimizers(emb, dense, config.optim)
        self.progressive = ProgressiveValidator(config.progressive)
        self.metrics = TrainerMetrics(registry if registry is not None else REGISTRY)
        self.trained = RecentIds(config.source.dedupe_capacity)
        self.trained_log = TrainedLog(config.trained_log) if config.trained_log else None
        self.stop_event = threading.Event()
        self.offsets: dict[int, int] = {}
        self.samples_trained = 0
        self.targets_trained = 0
        self.steps = 0
        self.max_event_ts = 0.0
        self.max_produce_ts: float | None = None  # newest samples record consumed (Kafka timestamp, wall clock)
        self.snapshot_version = 0
        self.last_snapshot_path: Path | None = None
        self.resumed_from: Path | None = None
        self._dirty_ckpt = False  # trained since the last checkpoint
        self._dirty_snap = False  # trained since the last snapshot
        self._samples_at_snapshot = 0
        self._skipped: Counter[str] = Counter()
        self._announcer: Any = None
        self._metrics_file: TextIO | None = None
        # model.snapshot serialises the Ranker (a sharded one is gathered to rank 0 first)
        self.servable: SnapshotSource | None = model if isinstance(model, SnapshotSource) else None
        if self.servable is None:
            log.warning("%s: serving snapshots are written for the Ranker only; checkpoints still are",
                        type(model).__name__)
        self._pad: Batch | None = None
        self._score_in_eval = any(isinstance(x, nn.Dropout) and x.p > 0 for x in model.modules())
        self._resume()

    # ------------------------------------------------------------------ resume / checkpoint / snapshot
    def _resume(self) -> None:
        path = latest_checkpoint(self.config.checkpoints_path)
        if self.collective is not None:  # every rank resumes from the newest step all of them have
            step = self.collective.agree_min(_step_of(path) if path is not None else -1)
            path = None if step < 0 else self.config.checkpoints_path / f"ckpt-{step:012d}.pt"
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
        saved_topic = ck["offsets"]["topic"]
        if saved_topic == self.config.source.topic:
            self.offsets = {int(p): int(o) for p, o in ck["offsets"]["partitions"].items()}
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
        self._samples_at_snapshot = self.samples_trained
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
        self._dirty_ckpt = False
        self._last_ckpt_t = time.monotonic()
        self.metrics.checkpoints.inc()
        self._log_event({"event": "checkpoint", "path": str(path), "samples_trained": self.samples_trained,
                         "offsets": {str(k): v for k, v in self.offsets.items()}})
        return path

    def snapshot(self) -> Path:
        """Checkpoint, then write + announce a serving snapshot of the raw model (version + 1)."""
        from model.snapshot import SnapshotMeta, prune_snapshots, save_snapshot

        if self.servable is None:
            self._dirty_snap = False
            self._last_snap_t = time.monotonic()
            return self.checkpoint()
        version = self.snapshot_version + 1
        self.snapshot_version = version  # recorded in the checkpoint before the snapshot exists: versions never repeat
        self.checkpoint()
        created = time.time()
        meta = SnapshotMeta(version=version, created_at=created, max_event_ts=self.max_event_ts,
                            samples_trained=self.samples_trained, max_produce_ts=self.max_produce_ts)
        model: Ranker | None = self.servable.to_ranker()  # sharded: a collective gather, the Ranker on rank 0 only
        if model is None:  # another rank writes and announces
            self._dirty_snap = False
            self._samples_at_snapshot = self.samples_trained
            self._last_snap_t = time.monotonic()
            self.metrics.snapshot_published(version, created)
            return self.config.snapshots_path
        was_training = model.training
        model.eval()
        try:
            path = save_snapshot(self.config.snapshots_path, model, meta)
        finally:
            model.train(was_training)
        prune_snapshots(self.config.snapshots_path, self.config.snapshot_keep)
        self.last_snapshot_path = Path(path)
        self._dirty_snap = False
        self._samples_at_snapshot = self.samples_trained
        self._last_snap_t = time.monotonic()
        self.metrics.snapshot_published(version, created)
        announcement = {"version": version, "path": str(Path(path).resolve()), "created_at": created,
                        "max_event_ts": self.max_event_ts, "samples_trained": self.samples_trained,
                        "max_produce_ts": self.max_produce_ts}
        if self._announcer is not None:
            try:
                self._announcer.send(self.config.snapshots_topic, key=b"trainer",
                                     value=json.dumps(announcement).encode())
                self._announcer.flush(timeout=10)
            except Exception as e:  # the snapshot exists on disk; serving can also poll the directory
                log.warning("could not announce snapshot %d: %s", version, e)
        self._log_event({"event": "snapshot", **announcement})
        return Path(path)

    # ------------------------------------------------------------------ one step
    def train_step(self, batch: Batch, weight: float = 1.0) -> dict[str, float]:
        """Score ``batch`` (progressive validation), then learn from it. Returns per-task losses.

        ``weight=0`` runs the full forward/backward with a zero loss and no validation (a lockstep stand-in).
        """
        model = self.model
        if self._score_in_eval:  # dropout active: score with a separate deterministic forward, as serving would
            model.eval()
            with torch.no_grad():
                probs = {t: torch.sigmoid(z) for t, z in model(batch).items()}
        model.train()
        logits = model(batch)  # {task: (T,)}
        if not self._score_in_eval:  # no dropout: the training forward's scores equal serving's
            probs = {t: torch.sigmoid(z.detach()) for t, z in logits.items()}
        # Progressive validation: these scores come from the model *before* this batch's update.
        if weight > 0:
            self.progressive.update(probs, {t: batch.labels[t] for t in probs}, batch.target_scenarios,
                                    batch.target_user_ids)
        loss, per_task = multitask_bce(logits, batch.labels)
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
        if weight > 0:  # after scoring and learning: no progressive score sees its own batch's statistics
            self.trainable.observe(batch)
        per_task["total"] = float(loss.detach())
        return per_task

    # ------------------------------------------------------------------ the loop
    def _log_event(self, obj: dict[str, Any]) -> None:
        if self._metrics_file is None:
            return
        obj = {"ts": time.time(), **obj}
        self._metrics_file.write(json.dumps(_jsonable(obj)) + "\n")
        self._metrics_file.flush()

    def _collate(self, samples: list[Sample]) -> Batch:
        return collate(samples, self.spec)

    def run(self, max_samples: int | None = None, max_seconds: float | None = None,
            exit_when_idle_s: float | None = None,
            source_factory: Callable[[dict[int, int], threading.Event], Any] | None = None) -> RunSummary:
        """Train until stopped (``stop_event``), ``max_samples`` trained, ``max_seconds`` passed, or no record
        arrived for ``exit_when_idle_s``. Always ends with a checkpoint and (if anything new) a snapshot."""
        cfg = self.config
        m = self.metrics
        cfg.run_dir.mkdir(parents=True, exist_ok=True)
        cfg.metrics_path.parent.mkdir(parents=True, exist_ok=True)
        self._metrics_file = open(cfg.metrics_path, "a", encoding="utf-8")  # noqa: SIM115 (closed in finally)
        if cfg.source.deadletter_topic or cfg.snapshots_topic:
            from kafka import KafkaProducer

            if cfg.snapshots_topic:
                self._announcer = KafkaProducer(bootstrap_servers=cfg.source.bootstrap, linger_ms=0,
                                                reconnect_backoff_max_ms=RECONNECT_BACKOFF_MAX_MS)
        deadletter = (DeadLetter(cfg.source.bootstrap, cfg.source.deadletter_topic, cfg.source.topic)
                      if cfg.source.deadletter_topic else None)
        if source_factory is not None:
            source = source_factory(dict(self.offsets), self.stop_event)
        else:
            source = KafkaSampleSource(cfg.source, self.offsets, self.stop_event)
        seen = RecentIds(cfg.source.dedupe_capacity, self.trained.to_list())
        prefetcher: Prefetcher[Batch] = Prefetcher(source, self._collate, seen, cfg.source,
                                                   pin=self.device.type == "cuda", deadletter=deadletter,
                                                   keep_history=self.spec.max_history,
                                                   keep_realtime=self.spec.max_realtime)
        self._log_event({"event": "start", "resumed_from": str(self.resumed_from) if self.resumed_from else None,
                         "samples_trained": self.samples_trained, "offsets": {str(k): v for k, v in self.offsets.items()},
                         "device": str(self.device), "rank": cfg.source.rank, "world_size": cfg.source.world_size})
        t_start = time.monotonic()
        self._last_ckpt_t = self._last_snap_t = self._last_log_t = t_start
        last_record_t = t_start
        run_samples = run_targets = run_records = 0
        data_wait = compute = persist = 0.0
        startup_wait: float | None = None
        win_samples, win_targets, win_t = 0, 0, t_start
        last_loss: dict[str, float] = {}
        prefetcher.start()
        try:
            soft_stop = False
            while self.collective is not None or not self.stop_event.is_set():
                # ---- wait for data
                t0 = time.perf_counter()
                item: SampleBatch[Batch] | None = prefetcher.get(timeout_s=0.25)
                t1 = time.perf_counter()
                data_wait += t1 - t0
                m.data_wait.inc(t1 - t0)
                now = time.monotonic()
                batch = item.batch if item is not None else None
                snap_due, ckpt_due = self._persist_due(now, idle=item is not None and item.records == 0)
                if self.collective is not None:  # lockstep ranks agree on what happens this iteration
                    any_batch, stop, snap_due, ckpt_due = self.collective.sync(
                        batch is not None, self.stop_event.is_set(), soft_stop, snap_due, ckpt_due)
                    if stop:
                        break  # this item is dropped unaccounted: its offsets were not taken, it is re-read later
                    if any_batch and batch is None:
                        # Keep DMP's all-to-alls and DDP's all-reduce matched: an empty batch would skip parts of
                        # the backward graph (and hang the other ranks), so train a zero-weighted stand-in.
                        self.train_step(self._padding_batch(), weight=0.0)
                        self._dirty_ckpt = self._dirty_snap = True
                if item is not None:
                    self.offsets.update(item.offsets)
                    if item.max_produce_ts is not None:
                        self.max_produce_ts = max(self.max_produce_ts or 0.0, item.max_produce_ts)
                    if item.records:
                        last_record_t = now
                        run_records += item.records
                        m.records.inc(item.records)
                    for reason, n in item.skipped.items():
                        self._skipped[reason] += n
                        m.skipped.labels(reason=reason).inc(n)
                    if item.skipped:
                        self._dirty_ckpt = True  # offsets moved past skipped records
                    if item.lag is not None:
                        m.consumer_lag.set(item.lag)
                if batch is not None:
                    if startup_wait is None:
                        startup_wait = data_wait
                    # ---- score, then train
                    if self.device.type != "cpu":
                        batch = batch.to(self.device, non_blocking=True)
                    last_loss = self.train_step(batch)
                    t2 = time.perf_counter()
                    last_record_t = time.monotonic()  # idle time counts only while waiting for data
                    compute += t2 - t1
                    m.compute.inc(t2 - t1)
                    ns, nt = batch.num_samples, batch.num_targets
                    self.samples_trained += ns
                    self.targets_trained += nt
                    self.steps += 1
                    run_samples += ns
                    run_targets += nt
                    win_samples += ns
                    win_targets += nt
                    self.max_event_ts = max(self.max_event_ts, float(batch.max_event_ts))
                    for sid in batch.sample_ids:
                        self.trained.add(sid)
                    if self.trained_log is not None:
                        self.trained_log.add(batch.sample_ids)
                    self._dirty_ckpt = self._dirty_snap = True
                    m.samples.inc(ns)
                    m.impressions.inc(nt)
                    m.steps.inc()
                    if "total" in last_loss and ns:
                        m.loss.set(last_loss["total"])
                    for task, v in last_loss.items():
                        if task != "total":
                            m.task_loss.labels(task=task).set(v)
                    m.max_event_ts.set(self.max_event_ts)
                # ---- cadence work: snapshots (which checkpoint first), checkpoints, metrics log
                t3 = time.perf_counter()
                if snap_due:
                    self.snapshot()
                elif ckpt_due:
                    self.checkpoint()
                persist += time.perf_counter() - t3
                m.persist.inc(time.perf_counter() - t3)
                now = time.monotonic()
                if now - self._last_log_t >= cfg.log_every_s:
                    dt = max(1e-9, now - win_t)
                    self._log_metrics(last_loss, win_samples / dt, win_targets / dt, data_wait, compute, persist)
                    win_samples = win_targets = 0
                    win_t = now
                    self._last_log_t = now
                m.tick(time.time())
                if self.max_event_ts > 0:
                    m.event_lag.set(time.time() - self.max_event_ts)
                soft_stop = (
                    (max_samples is not None and run_samples >= max_samples)
                    or (max_seconds is not None and now - t_start >= max_seconds)
                    or (exit_when_idle_s is not None and now - last_record_t >= exit_when_idle_s)
                )
                if self.collective is None and (soft_stop or self.stop_event.is_set()):
                    break
        finally:
            prefetcher.close()
            with contextlib.suppress(Exception):
                source.close()
            try:
                snap, ckpt = self._dirty_snap, self._dirty_ckpt
                if self.collective is not None:
                    _, _, snap, ckpt = self.collective.sync(False, True, True, snap, ckpt)
                if snap:
                    self.snapshot()
                elif ckpt:
                    self.checkpoint()
            finally:
                wall = time.monotonic() - t_start
                dt = max(1e-9, time.monotonic() - win_t)
                self._log_metrics(last_loss, win_samples / dt, win_targets / dt, data_wait, compute, persist)
                summary = RunSummary(
                    samples_trained=self.samples_trained, targets_trained=self.targets_trained, steps=self.steps,
                    records=run_records, skipped=dict(self._skipped), data_wait_s=data_wait, compute_s=compute,
                    persist_s=persist, wall_s=wall, snapshot_version=self.snapshot_version,
                    startup_wait_s=startup_wait if startup_wait is not None else data_wait)
                self._log_event({"event": "stop", **dataclasses.asdict(summary), "run_samples": run_samples,
                                 "run_targets": run_targets})
                if deadletter is not None:
                    with contextlib.suppress(Exception):
                        deadletter.close()
                if self._announcer is not None:
                    with contextlib.suppress(Exception):
                        self._announcer.close(timeout=10)
                    self._announcer = None
                if self._metrics_file is not None:
                    self._metrics_file.close()
                    self._metrics_file = None
        return summary

    def _persist_due(self, now: float, idle: bool = False) -> tuple[bool, bool]:
        """(snapshot due, checkpoint due) by this rank's cadence (``idle``: the last poll found no new record)."""
        cfg = self.config
        snap = self._dirty_snap and (
            (cfg.snapshot_every_s > 0 and now - self._last_snap_t >= cfg.snapshot_every_s)
            or (idle and cfg.snapshot_idle_s > 0 and now - self._last_snap_t >= cfg.snapshot_idle_s)
            or (cfg.snapshot_every_samples > 0
                and self.samples_trained - self._samples_at_snapshot >= cfg.snapshot_every_samples)
        )
        ckpt = self._dirty_ckpt and cfg.checkpoint_every_s > 0 and now - self._last_ckpt_t >= cfg.checkpoint_every_s
        return snap, ckpt

    def _padding_batch(self) -> Batch:
        """A one-target stand-in for a rank without data (its loss is multiplied by 0; nothing is counted)."""
        if self._pad is None:
            self._pad = collate([_PAD_SAMPLE], self.spec)
            if self.device.type != "cpu":
                self._pad = self._pad.to(self.device)
        return self._pad

    def _log_metrics(self, loss: dict[str, float], sps: float, ips: float, data_wait: float, compute: float,
                     persist: float) -> None:
        quality = self.progressive.compute()
        self.metrics.set_quality(quality)
        self._log_event({
            "event": "metrics", "samples_trained": self.samples_trained, "targets_trained": self.targets_trained,
            "steps": self.steps, "loss": loss, "samples_per_s": sps, "impressions_per_s": ips,
            "data_wait_s": data_wait, "compute_s": compute, "persist_s": persist, "skipped": dict(self._skipped),
            "max_event_ts": self.max_event_ts, "snapshot_version": self.snapshot_version,
            "offsets": {str(k): v for k, v in self.offsets.items()}, "progressive": quality,
        })


def _step_of(path: Path) -> int:
    """The step number in a checkpoint file name ``ckpt-<step>.pt``."""
    return int(path.stem.split("-", 1)[1])
