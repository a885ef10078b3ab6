"""The named steps of one :meth:`trainer.loop.Trainer.run`, and the run's I/O they share.

:class:`RunSteps` is created by ``run`` and lives as long as it: it opens the trainer's outputs (metrics log, snapshot
announcer), the dead-letter producer, the record source and the prefetch thread, and owns the run's
:class:`trainer.schedule.RunStats`. Each step updates the trainer's lifetime state (counters, offsets, trained ids)
and the run's stats; ``Trainer.run`` only orders them::

    poll → [agree] → account → learn → persist → report   (per iteration)  … finish
"""

from __future__ import annotations

import contextlib
import dataclasses
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from model.batch import Batch, collate
from trainer.distill import DistilledStudent, TeacherJoin, TeacherTargets, records_from_batch, teacher_targets
from trainer.distill_source import TeacherConsumer, TeacherPublisher
from trainer.schedule import RunStats, RunSummary
from trainer.source import (
    RECONNECT_BACKOFF_MAX_MS,
    DeadLetter,
    KafkaSampleSource,
    Prefetcher,
    RecentIds,
    SampleBatch,
)

if TYPE_CHECKING:
    from trainer.loop import Trainer

SourceFactory = Callable[[dict[int, int], threading.Event], Any]  # (offsets, stop_event) -> a record source
POLL_TIMEOUT_S = 0.25  # the longest one iteration waits for data: stop requests and cadences are checked this often


@dataclass(frozen=True)
class Polled:
    """What one :meth:`RunSteps.poll` returned, and when (the end of the wait starts the batch's compute time)."""

    item: SampleBatch[Batch] | None  # None: nothing arrived within the poll timeout
    perf_t: float  # time.perf_counter() after the wait
    now: float  # time.monotonic() after the wait


class RunSteps:
    """One run of ``trainer``: its open I/O, its stats, and the steps of its iterations.

    Args:
        trainer: the trainer whose state the steps update.
        source_factory: ``(offsets, stop_event) -> source`` replacing the Kafka source (tests); None = Kafka.

    Example (the loop of ``Trainer.run``, single process, so not a doctest)::

        steps = RunSteps(trainer, None)           # outputs and source open, prefetch thread started
        try:
            polled = steps.poll()
            ...
        finally:
            summary = steps.finish()              # persists what is new, closes everything
    """

    def __init__(self, trainer: Trainer, source_factory: SourceFactory | None) -> None:
        self.trainer = trainer
        self.stats = RunStats()
        self.deadletter = self._open_outputs()
        self.teacher_counts = {"published": 0, "joined": 0, "missing": 0}  # this run's teacher records (samples)
        self.teacher_out, self.teacher_in = self._open_distillation()
        self.source, self.prefetcher = self._open_source(source_factory)
        self._start()
        self.prefetcher.start()

    def _open_outputs(self) -> DeadLetter | None:
        """Open the metrics log and the snapshot announcer; return the dead-letter producer (None: not configured)."""
        tr, cfg = self.trainer, self.trainer.config
        cfg.run_dir.mkdir(parents=True, exist_ok=True)
        tr.metrics_log.open(cfg.metrics_path)
        if cfg.snapshots_topic:
            tr.announcer.open(cfg.source.bootstrap, cfg.snapshots_topic, RECONNECT_BACKOFF_MAX_MS)
        if not cfg.source.deadletter_topic:
            return None
        return DeadLetter(cfg.source.bootstrap, cfg.source.deadletter_topic, cfg.source.topic)

    def _open_distillation(self) -> tuple[TeacherPublisher | None, TeacherConsumer | None]:
        """The teacher-record publisher (``teacher_scores_topic``) and the student's consumer thread filling the
        join buffer (``distill_from``); None where off."""
        tr, cfg = self.trainer, self.trainer.config
        out = TeacherPublisher(cfg.source.bootstrap, cfg.teacher_scores_topic) if cfg.teacher_scores_topic else None
        if not cfg.distill_from:
            return out, None
        if not isinstance(tr.model, DistilledStudent):
            raise TypeError("distill_from needs a trainer.distill.DistilledStudent model (trainer.distill.wrap_student)")
        self.join = TeacherJoin(cfg.distill_buffer)
        m = tr.metrics
        consumer = TeacherConsumer(cfg.source.bootstrap, cfg.distill_from, self.join, set(tr.trained.to_list()),
                                   on_invalid=lambda _e: m.teacher_invalid.inc())
        self.teacher_version_seen = -1
        return out, consumer.start()

    def _open_source(self, source_factory: SourceFactory | None) -> tuple[Any, Prefetcher[Batch]]:
        """The record source (seeking to the checkpoint's offsets) and the prefetch thread over it (not started).

        The prefetcher's dedupe memory starts from the checkpoint's trained ids, so a replay is skipped as
        ``duplicate`` before it is collated.
        """
        tr, cfg = self.trainer, self.trainer.config
        if source_factory is not None:
            source = source_factory(dict(tr.offsets), tr.stop_event)
        else:
            source = KafkaSampleSource(cfg.source, tr.offsets, tr.stop_event)
        seen = RecentIds(cfg.source.dedupe_capacity, tr.trained.to_list())
        spec = tr.spec
        prefetcher: Prefetcher[Batch] = Prefetcher(source, lambda samples: collate(samples, spec), seen, cfg.source,
                                                   pin=tr.device.type == "cuda", deadletter=self.deadletter,
                                                   keep_history=spec.max_history, keep_realtime=spec.max_realtime)
        return source, prefetcher

    def _start(self) -> None:
        """Log the ``start`` event and start the run's clocks (persist cadence, counters, rate window)."""
        tr = self.trainer
        tr.metrics_log.write({
            "event": "start", "resumed_from": str(tr.resumed_from) if tr.resumed_from else None,
            "samples_trained": tr.samples_trained, "offsets": {str(k): v for k, v in tr.offsets.items()},
            "device": str(tr.device), "rank": tr.config.source.rank, "world_size": tr.config.source.world_size})
        now = time.monotonic()
        tr.schedule.start(now)
        self.stats.start(now)

    # ------------------------------------------------------------------ per iteration
    def poll(self) -> Polled:
        """Wait up to ``POLL_TIMEOUT_S`` for the next prefetched item (a collated batch and/or offsets, skips, lag)."""
        t0 = time.perf_counter()
        item: SampleBatch[Batch] | None = self.prefetcher.get(timeout_s=POLL_TIMEOUT_S)
        t1 = time.perf_counter()
        self.stats.data_wait_s += t1 - t0
        self.trainer.metrics.data_wait.inc(t1 - t0)
        return Polled(item, t1, time.monotonic())

    def agree(self, has_batch: bool, soft_stop: bool, snap_due: bool, ckpt_due: bool) -> tuple[bool, bool] | None:
        """Lockstep ranks agree on this iteration: None = all stop; else the agreed (snapshot due, checkpoint due).

        A rank without a batch while another has one trains the zero-weighted stand-in: an empty step would skip
        DMP's all-to-alls and DDP's all-reduce in the backward graph and hang the other ranks.
        """
        tr = self.trainer
        assert tr.collective is not None and tr.padding_batch is not None
        any_batch, stop, snap_due, ckpt_due = tr.collective.sync(
            has_batch, tr.stop_event.is_set(), soft_stop, snap_due, ckpt_due)
        if stop:
            return None
        if any_batch and not has_batch:
            tr.train_step(tr.padding_batch, weight=0.0)
            tr.schedule.mark_trained()
        return snap_due, ckpt_due

    def account(self, item: SampleBatch[Batch], now: float) -> None:
        """Take the item's offsets (they move even when every record was skipped), produce time, records, skips."""
        tr, m = self.trainer, self.trainer.metrics
        tr.offsets.update(item.offsets)
        if item.max_produce_ts is not None:
            tr.max_produce_ts = max(tr.max_produce_ts or 0.0, item.max_produce_ts)
        if item.records:
            self.stats.last_record_t = now
            self.stats.records += item.records
            m.records.inc(item.records)
        for reason, n in item.skipped.items():
            tr.skipped[reason] += n
            m.skipped.labels(reason=reason).inc(n)
        if item.skipped:
            tr.schedule.mark_skipped()
        if item.lag is not None:
            m.consumer_lag.set(item.lag)

    def learn(self, batch: Batch, polled_perf_t: float) -> None:
        """Score, then train on ``batch`` (S samples, T targets; moved to the device), and count it as trained.

        Its compute time runs from the end of the data wait (``polled_perf_t``) to the end of the step.
        """
        tr, st, m = self.trainer, self.stats, self.trainer.metrics
        if st.startup_wait_s is None:
            st.startup_wait_s = st.data_wait_s
        if tr.device.type != "cpu":
            batch = batch.to(tr.device, non_blocking=True)
        teacher = self._teacher_of(batch) if self.teacher_in is not None else None
        loss = tr.train_step(batch, teacher=teacher)
        if self.teacher_out is not None:  # scores made before this step: leak-free (tr.samples_trained excludes it)
            n = self.teacher_out.publish(records_from_batch(
                batch, tr.last_probs, teacher_version=tr.snapshot_version, snapshot_time=tr.snapshot_created_at,
                samples_trained=tr.samples_trained, scored_at=time.time()))
            m.teacher_published.inc(n)
            self.teacher_counts["published"] += n
        t = time.perf_counter()
        st.last_record_t = time.monotonic()  # idle time counts only while waiting for data
        st.compute_s += t - polled_perf_t
        m.compute.inc(t - polled_perf_t)
        ns, nt = batch.num_samples, batch.num_targets
        tr.samples_trained += ns
        tr.targets_trained += nt
        tr.steps += 1
        st.count(ns, nt)
        st.last_loss = loss
        tr.max_event_ts = max(tr.max_event_ts, float(batch.max_event_ts))
        for sid in batch.sample_ids:
            tr.trained.add(sid)
        if tr.trained_log is not None:
            tr.trained_log.add(batch.sample_ids)
        tr.schedule.mark_trained()
        m.samples.inc(ns)
        m.impressions.inc(nt)
        m.steps.inc()
        if "total" in loss and ns:
            m.loss.set(loss["total"])
        d = tr.last_distill
        if d is not None and d.joined:
            m.teacher_agreement.set(d.agreement)
        for task, v in loss.items():
            if task != "total":
                m.task_loss.labels(task=task).set(v)
        m.max_event_ts.set(tr.max_event_ts)

    def _teacher_of(self, batch: Batch) -> TeacherTargets:
        """The batch's teacher scores from the join buffer (waiting up to ``distill_wait_s``), and its metrics."""
        tr, m = self.trainer, self.trainer.metrics
        records = self.join.take(batch.sample_ids, tr.config.distill_wait_s)
        m.teacher_joined.inc(len(records))
        m.teacher_missing.inc(batch.num_samples - len(records))
        self.teacher_counts["joined"] += len(records)
        self.teacher_counts["missing"] += batch.num_samples - len(records)
        if records:
            now = time.time()
            versions = [r.teacher_version for r in records.values()]
            self.teacher_version_seen = max(self.teacher_version_seen, *versions)
            m.teacher_versions_behind.set(self.teacher_version_seen - min(versions))
            newest = max(records.values(), key=lambda r: r.teacher_version)
            if newest.snapshot_time is not None:
                m.teacher_staleness.set(now - newest.snapshot_time)
        return teacher_targets(batch, records, tr.spec.tasks)

    def persist(self, snap_due: bool, ckpt_due: bool) -> None:
        """A due snapshot (which checkpoints first), else a due checkpoint; timed as persist time."""
        t0 = time.perf_counter()
        if snap_due:
            self.trainer.snapshot()
        elif ckpt_due:
            self.trainer.checkpoint()
        dt = time.perf_counter() - t0
        self.stats.persist_s += dt
        self.trainer.metrics.persist.inc(dt)

    def report(self, now: float) -> None:
        """A metrics line once per ``log_every_s`` (rates over the window since the last one); Prometheus ticks."""
        tr = self.trainer
        if now - self.stats.window_start >= tr.config.log_every_s:
            self._log_metrics(*self.stats.take_window(now))
        tr.metrics.tick(time.time())
        if tr.max_event_ts > 0:
            tr.metrics.event_lag.set(time.time() - tr.max_event_ts)

    # ------------------------------------------------------------------ the end
    def finish(self) -> RunSummary:
        """Stop reading, persist what is new (agreed by all ranks), log the last metrics and ``stop`` lines and
        close every output, also when persisting fails (its error then propagates)."""
        tr = self.trainer
        self.prefetcher.close()
        with contextlib.suppress(Exception):
            self.source.close()
        if self.teacher_in is not None:
            self.teacher_in.close()
        try:
            snap, ckpt = tr.schedule.dirty_snapshot, tr.schedule.dirty_checkpoint
            if tr.collective is not None:
                _, _, snap, ckpt = tr.collective.sync(False, True, True, snap, ckpt)
            if snap:
                tr.snapshot()
            elif ckpt:
                tr.checkpoint()
        finally:
            st = self.stats
            self._log_metrics(*st.rates(time.monotonic()))
            summary = RunSummary(
                samples_trained=tr.samples_trained, targets_trained=tr.targets_trained, steps=tr.steps,
                records=st.records, skipped=dict(tr.skipped), data_wait_s=st.data_wait_s, compute_s=st.compute_s,
                persist_s=st.persist_s, wall_s=time.monotonic() - st.t_start, snapshot_version=tr.snapshot_version,
                startup_wait_s=st.startup_wait_s if st.startup_wait_s is not None else st.data_wait_s)
            tr.metrics_log.write({"event": "stop", **dataclasses.asdict(summary), "run_samples": st.samples,
                                  "run_targets": st.targets})
            if self.deadletter is not None:
                with contextlib.suppress(Exception):
                    self.deadletter.close()
            if self.teacher_out is not None:
                self.teacher_out.close()
            tr.announcer.close()
            tr.metrics_log.close()
        return summary

    def _log_metrics(self, samples_per_s: float, impressions_per_s: float) -> None:
        """Export the progressive quality to Prometheus and write a ``metrics`` line (lifetime and run counters)."""
        tr, st = self.trainer, self.stats
        quality = tr.progressive.compute()
        tr.metrics.set_quality(quality)
        tr.metrics_log.write({
            "event": "metrics", "samples_trained": tr.samples_trained, "targets_trained": tr.targets_trained,
            "steps": tr.steps, "loss": st.last_loss, "samples_per_s": samples_per_s,
            "impressions_per_s": impressions_per_s, "data_wait_s": st.data_wait_s, "compute_s": st.compute_s,
            "persist_s": st.persist_s, "skipped": dict(tr.skipped), "max_event_ts": tr.max_event_ts,
            "snapshot_version": tr.snapshot_version, "offsets": {str(k): v for k, v in tr.offsets.items()},
            "progressive": quality,
            **({"teacher_records": dict(self.teacher_counts)} if self.teacher_out or self.teacher_in else {}),
        })
