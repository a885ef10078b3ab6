"""Prometheus metrics of the trainer (``streamrec_trainer_*``), all created on an explicit registry.

Rates (samples/s, impressions/s) are counters: use ``rate(streamrec_trainer_samples_total[1m])`` in PromQL.

Example:
    >>> from prometheus_client import CollectorRegistry
    >>> reg = CollectorRegistry()
    >>> m = TrainerMetrics(reg)
    >>> m.samples.inc(3)
    >>> reg.get_sample_value("streamrec_trainer_samples_total")
    3.0
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

from prometheus_client import CollectorRegistry, Counter, Gauge

if TYPE_CHECKING:
    from trainer.progressive import Metrics, Quality

QUALITY = ("auc", "gauc", "logloss", "calibration")
# Quality gauges carry scope="overall" (every target once, no scenario label) or scope="scenario" with the scenario
# name: scenario names are open strings, so no scenario value can stand for the overall aggregate.
QUALITY_LABELS = ["scope", "scenario", "task", "window"]


class TrainerMetrics:
    """All trainer metrics; ``registry`` is a private ``CollectorRegistry`` in tests, the process one in production."""

    def __init__(self, registry: CollectorRegistry) -> None:
        p = "streamrec_trainer_"
        self.samples = Counter(p + "samples", "User-level samples trained", registry=registry)
        self.impressions = Counter(p + "impressions", "Targets (impressions) trained", registry=registry)
        self.records = Counter(p + "records", "Kafka records read from the samples topic", registry=registry)
        self.steps = Counter(p + "steps", "Optimizer steps", registry=registry)
        self.skipped = Counter(p + "skipped", "Records not trained, by reason", ["reason"], registry=registry)
        self.data_wait = Counter(p + "data_wait_seconds", "Time the training loop waited for a batch",
                                 registry=registry)
        self.compute = Counter(p + "compute_seconds", "Time spent scoring + training batches", registry=registry)
        self.persist = Counter(p + "persist_seconds", "Time spent writing checkpoints and snapshots",
                               registry=registry)
        self.loss = Gauge(p + "loss", "Training loss of the last batch (BCE, summed over tasks)", registry=registry)
        self.task_loss = Gauge(p + "task_loss", "Training BCE of the last batch per task", ["task"],
                               registry=registry)
        self.quality = {
            name: Gauge(p + name, f"Progressive-validation {name} (scored before training)",
                        QUALITY_LABELS, registry=registry)
            for name in QUALITY
        }
        self.eval_count = Gauge(p + "progressive_targets", "Targets in the progressive-validation window",
                                QUALITY_LABELS, registry=registry)
        self.snapshot_version = Gauge(p + "snapshot_version", "Version of the last published snapshot",
                                      registry=registry)
        self.snapshot_time = Gauge(p + "last_snapshot_timestamp_seconds", "Unix time of the last snapshot",
                                   registry=registry)
        self.since_snapshot = Gauge(p + "seconds_since_last_snapshot", "Seconds since the last snapshot",
                                    registry=registry)
        self.snapshots = Counter(p + "snapshots", "Snapshots written", registry=registry)
        self.checkpoints = Counter(p + "checkpoints", "Checkpoints written", registry=registry)
        self.consumer_lag = Gauge(p + "consumer_lag_records", "Records behind the samples topic's log end",
                                  registry=registry)
        self.max_event_ts = Gauge(p + "max_event_timestamp_seconds", "Largest event time trained on",
                                  registry=registry)
        self.event_lag = Gauge(p + "max_event_ts_lag_seconds", "Wall clock minus the largest event time trained on",
                               registry=registry)
        # External distillation (trainer/distill.py): a teacher counts what it publishes, a student what it joined.
        self.teacher_published = Counter(p + "teacher_records_published", "Teacher-score records published "
                                         "(one per trained sample, scored before training on it)", registry=registry)
        self.teacher_joined = Counter(p + "teacher_records_joined", "Samples trained with their teacher record",
                                      registry=registry)
        self.teacher_missing = Counter(p + "teacher_records_missing", "Samples trained on labels only: their teacher "
                                       "record was late, evicted or missing", registry=registry)
        self.teacher_invalid = Counter(p + "teacher_records_invalid", "Undecodable teacher-score records dropped",
                                       registry=registry)
        self.teacher_agreement = Gauge(p + "teacher_agreement", "Mean |p_teacher - p_student| over the last batch's "
                                       "joined targets and tasks (student scored before training)", registry=registry)
        self.teacher_staleness = Gauge(p + "teacher_staleness_seconds", "Student wall clock minus the snapshot time "
                                       "of the newest teacher version in the last batch", registry=registry)
        self.teacher_versions_behind = Gauge(p + "teacher_versions_behind", "Newest teacher version seen minus the "
                                             "oldest teacher version in the last batch", registry=registry)
        self._last_snapshot: float | None = None

    def set_quality(self, values: Quality) -> None:
        """Export :meth:`trainer.progressive.ProgressiveValidator.compute` output."""
        for task, windows in values["overall"].items():
            self._set_windows("overall", "", task, windows)
        for scenario, tasks in values["scenarios"].items():
            for task, windows in tasks.items():
                self._set_windows("scenario", scenario, task, windows)

    def _set_windows(self, scope: str, scenario: str, task: str, windows: Metrics) -> None:
        for window, ms in windows.items():
            labels = {"scope": scope, "scenario": scenario, "task": task, "window": window}
            for name, gauge in self.quality.items():
                gauge.labels(**labels).set(ms.get(name, math.nan))
            self.eval_count.labels(**labels).set(ms.get("count", 0.0))

    def snapshot_published(self, version: int, created_at: float) -> None:
        self.snapshots.inc()
        self.snapshot_version.set(version)
        self.snapshot_time.set(created_at)
        self._last_snapshot = created_at

    def tick(self, now: float) -> None:
        """Refresh time-derived gauges (seconds since snapshot)."""
        if self._last_snapshot is not None:
            self.since_snapshot.set(max(0.0, now - self._last_snapshot))
