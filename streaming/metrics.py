"""Prometheus metrics of the streaming worker (subsystem ``stream``), all created on a caller-given registry.

Example:
    >>> from prometheus_client import CollectorRegistry
    >>> reg = CollectorRegistry()
    >>> m = StreamMetrics(reg)
    >>> m.events.labels(type="impression", scenario="home").inc()
    >>> reg.get_sample_value("streamrec_stream_events_total", {"type": "impression", "scenario": "home"})
    1.0
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

from streaming.core import CoreCounters


class StreamMetrics:
    """The worker's metrics. ``observe_core`` turns :class:`CoreCounters` deltas into counter increments."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self.events = Counter("streamrec_stream_events_total", "Input events accepted by the parser, by type and "
                              "scenario", ["type", "scenario"], registry=registry)
        self.labels = Counter("streamrec_stream_labels_released_total", "Labeled impressions released, by task and "
                              "label (positive/negative)", ["task", "label"], registry=registry)
        self.duplicates = Counter("streamrec_stream_duplicates_total", "Events dropped because their event_id was "
                                  "already seen: sent more than once by producers (each copy at its own offset)",
                                  registry=registry)
        self.redelivered = Counter("streamrec_stream_redelivered_total", "Input records skipped because Kafka "
                                   "delivered them again (offset at or below the last one this partition's state "
                                   "already holds: re-read after a crash or rebalance)", registry=registry)
        self.offset_jumps = Counter("streamrec_stream_input_offset_jumps_total", "Input records whose offset is more "
                                    "than one past the last one this partition's state holds: records in between "
                                    "were never processed (expected 0; real gaps only come from compaction or "
                                    "transaction markers on the input topics)", registry=registry)
        self.late = Counter("streamrec_stream_late_total", "Late events (ts at or below the watermark on arrival), by "
                            "kind. impression: dead-lettered late_impression. Each late feedback is exactly one of "
                            "feedback (joined a still-pending impression), behavior (joined an already released "
                            "impression: a history behavior from then on), orphan (joined nothing: dead-lettered "
                            "orphan_feedback). positive: late_positive corrections emitted (one per released "
                            "impression a late feedback with a mapped action labels)", ["kind"], registry=registry)
        self.orphans = Counter("streamrec_stream_orphans_total", "Feedback that never joined an impression "
                               "(dead-lettered orphan_feedback; late or not)", registry=registry)
        self.joined = Counter("streamrec_stream_joined_feedback_total", "Feedback joined to a pending impression "
                              "(behaviors; late ones that joined a released impression: late_total{kind=\"behavior\"})",
                              registry=registry)
        self.deadletter = Counter("streamrec_stream_deadletter_total", "Records written to the dead-letter topic, by "
                                  "reason", ["reason"], registry=registry)
        self.samples = Counter("streamrec_stream_samples_total", "User-level samples emitted", registry=registry)
        self.targets_per_sample = Histogram("streamrec_stream_targets_per_sample", "Targets (T tokens) per emitted "
                                            "sample", buckets=(1, 2, 4, 8, 16, 32, 64, 128, 256), registry=registry)
        self.user_states = Counter("streamrec_stream_user_state_published_total", "UserState records published",
                                   registry=registry)
        self.snapshots = Counter("streamrec_stream_snapshots_total", "State snapshots written (changed users + "
                                 "partition meta), after which the covered batch-log entries are deleted",
                                 registry=registry)
        self.watermark_lag = Gauge("streamrec_stream_watermark_lag_seconds", "Wall clock minus the partition's event-"
                                   "time watermark", ["partition"], registry=registry)
        self.consumer_lag = Gauge("streamrec_stream_consumer_lag_records", "Input records not yet processed: the "
                                  "partition's high watermark minus the next offset to process, by topic and "
                                  "partition", ["topic", "partition"], registry=registry)
        self.batch_seconds = Histogram("streamrec_stream_batch_processing_seconds", "Wall time to process one input "
                                       "batch end to end (parse, core, produce, persist)",
                                       buckets=(0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5),
                                       registry=registry)
        self.batch_events = Histogram("streamrec_stream_batch_events", "Input events per processed batch",
                                      buckets=(1, 10, 100, 500, 1000, 2000, 5000, 10000), registry=registry)

        self._children: dict[tuple[str, ...], Counter] = {}

    def event_counter(self, typ: str, scenario: str) -> Counter:
        """The cached ``events`` child for (type, scenario): one dict lookup instead of ``labels()`` per use."""
        key = ("events", typ, scenario)
        c = self._children.get(key)
        if c is None:
            c = self._children[key] = self.events.labels(type=typ, scenario=scenario)
        return c

    def deadletter_counter(self, reason: str) -> Counter:
        """The cached ``deadletter`` child for ``reason``."""
        key = ("deadletter", reason)
        c = self._children.get(key)
        if c is None:
            c = self._children[key] = self.deadletter.labels(reason=reason)
        return c

    def observe_core(self, before: CoreCounters, after: CoreCounters) -> None:
        """Increment counters by the difference between two :class:`CoreCounters` snapshots of one core."""
        self.duplicates.inc(after.duplicates - before.duplicates)
        self.late.labels(kind="impression").inc(after.late_impressions - before.late_impressions)
        self.late.labels(kind="feedback").inc(after.late_feedback - before.late_feedback)
        self.late.labels(kind="behavior").inc(after.late_behaviors - before.late_behaviors)
        self.late.labels(kind="orphan").inc(after.late_orphans - before.late_orphans)
        self.late.labels(kind="positive").inc(after.late_positives - before.late_positives)
        self.orphans.inc(after.orphans - before.orphans)
        self.joined.inc(after.joined - before.joined)
        for label, a, b in (("positive", after.positives, before.positives),
                            ("negative", after.negatives, before.negatives)):
            for task, n in a.items():
                d = n - b.get(task, 0)
                if d:
                    self.labels.labels(task=task, label=label).inc(d)
