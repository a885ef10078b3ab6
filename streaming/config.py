"""Configuration of the pure streaming core (join, history, cross features, aggregation) and of its Faust worker.

Built only at entry points (``python -m streaming worker ...``, the replay tool, offline evaluation); everything
else receives the frozen :class:`CoreConfig` (and the worker its :class:`WorkerConfig`).

Example:
    >>> cfg = CoreConfig(attribution_window_s=600.0)
    >>> cfg.task_of("order")
    'conversion'
    >>> cfg.task_of("share") is None
    True
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType

from streaming.cross import CrossSpec
from streaming.events import DEFAULT_ACTION_TASKS
from streaming.spec import DEFAULT_HISTORY_LEN, DEFAULT_MAX_TARGETS, SampleSpec

__all__ = ["CoreConfig", "CrossSpec", "WorkerConfig"]  # CrossSpec lives in streaming.cross; imported from here too


def _default_action_tasks() -> Mapping[str, str]:
    return MappingProxyType(dict(DEFAULT_ACTION_TASKS))


@dataclass(frozen=True)
class CoreConfig:
    """Settings of :class:`streaming.core.StreamCore`.

    - ``attribution_window_s``: a feedback labels an impression if its ts is in [imp.ts, imp.ts + window].
    - ``allowed_lateness_s``: watermark = min(max impression ts, max feedback ts) − lateness. Events with
      ts at or below the watermark when they arrive are *late* (see the late policy in ``streaming/core.py``).
    - ``history_len``: L, the number of behaviors in H (and in the published user state).
    - ``max_targets``: a sample is closed when it holds this many targets. L, ``max_targets`` and ``cross`` are the
      shape of the sample contract: :meth:`sample_spec` (what the worker publishes for trainers and serving).
    - ``span_s``: a sample holds a user's consecutive released targets with ts in [span_start, span_start + span_s).
    - ``late_horizon_s``: how long (event time, after an impression's window closed) released impressions and seen
      event ids are remembered, to recognise duplicates and late feedback.
    - ``action_tasks``: feedback action → task; actions not listed still become behaviors but label nothing.
    - ``skip_action``: an impression released with no positive label (no mapped feedback in its window) becomes a
      behavior with this action at ``ts + attribution_window_s`` — the moment "not acted on" is final, so no target
      sees it before then (implicit negative feedback in H/R; e.g. ``"skip"``). ``None`` (default) keeps only
      feedback behaviors: skips make every sample's H/R and published user state longer (the worker's rate on the
      streaming benchmark fell from ~11k to ~8-9k events/s with them on).

    Example:
        >>> CoreConfig().history_len
        256
    """

    attribution_window_s: float = 1800.0
    allowed_lateness_s: float = 60.0
    history_len: int = DEFAULT_HISTORY_LEN
    max_targets: int = DEFAULT_MAX_TARGETS
    span_s: float = 1800.0
    late_horizon_s: float = 3600.0
    action_tasks: Mapping[str, str] = field(default_factory=_default_action_tasks)
    skip_action: str | None = None
    cross: CrossSpec = field(default_factory=CrossSpec)

    def __post_init__(self) -> None:
        if self.attribution_window_s < 0 or self.allowed_lateness_s < 0 or self.late_horizon_s < 0:
            raise ValueError("attribution_window_s, allowed_lateness_s and late_horizon_s must be >= 0")
        if self.history_len < 0:
            raise ValueError("history_len must be >= 0")
        if self.max_targets < 1:
            raise ValueError("max_targets must be >= 1")
        if self.span_s <= 0:
            raise ValueError("span_s must be > 0")
        if self.skip_action is not None and (not self.skip_action or self.skip_action in self.action_tasks):
            raise ValueError(f"skip_action must be a non-empty action that labels no task, got {self.skip_action!r}")
        unknown = set(self.action_tasks.values()) - set(self.cross.tasks)
        if unknown:
            raise ValueError(f"action_tasks map to tasks {sorted(unknown)} not in cross.tasks {self.cross.tasks}")
        if not isinstance(self.action_tasks, MappingProxyType):
            object.__setattr__(self, "action_tasks", MappingProxyType(dict(self.action_tasks)))

    @property
    def tasks(self) -> tuple[str, ...]:
        return self.cross.tasks

    def sample_spec(self) -> SampleSpec:
        """The shape of the samples (and user states) this config produces: L, max_targets and the cross layout."""
        return SampleSpec(history_len=self.history_len, max_targets=self.max_targets, cross=self.cross)

    def task_of(self, action: str) -> str | None:
        return self.action_tasks.get(action)

    def __hash__(self) -> int:
        return hash((self.attribution_window_s, self.allowed_lateness_s, self.history_len, self.max_targets,
                     self.span_s, self.late_horizon_s, tuple(sorted(self.action_tasks.items())), self.skip_action,
                     self.cross))


@dataclass(frozen=True)
class WorkerConfig:
    """Kafka/Faust settings of the worker (:mod:`streaming.app`; the join semantics live in :class:`CoreConfig`).

    Attributes:
        bootstrap: Kafka bootstrap host:port.
        app_id: Faust app id (consumer group, table topic prefix).
        impressions_topic: input topic of impressions.
        feedback_topic: input topic of feedback.
        samples_topic: output topic of user-level samples.
        deadletter_topic: output topic of bad input and corrections.
        user_state_topic: compacted output topic of per-user state.
        partitions: partition count of every topic of the worker: inputs, outputs and table changelogs.
        store: Faust table store: memory:// or rocksdb:// (needs rocksdict).
        data_dir: Faust data directory.
        batch_max: max events per processed batch.
        batch_within_s: max wait to fill a batch, seconds.
        commit_interval_s: offset commit interval, seconds.
        session_timeout_s: consumer group session timeout: how long a dead worker holds its partitions.
        metrics_host: Prometheus metrics bind address.
        metrics_port: Prometheus metrics port (0: disabled).
        publish_user_state: publish per-user :class:`~streaming.user_state.UserState` records.
        snapshot_every_s: seconds between state snapshots (in between, each batch's events are logged).
        log_chunk_bytes: largest record of the batch log, bytes (keep it under the broker's message.max.bytes).
        batch_drain: deliver input as whole fetches (:mod:`streaming.batch_drain`) instead of the Faust agent's
            per-event stream (slower, same results).
        connect_timeout_s: at start, how long to wait for the broker to create/check the topics before exiting.

    Example:
        >>> WorkerConfig().partitions, WorkerConfig(partitions=2).samples_topic
        (8, 'samples')
    """

    bootstrap: str = "127.0.0.1:9092"
    app_id: str = "streamrec-stream"
    impressions_topic: str = "impressions"
    feedback_topic: str = "feedback"
    samples_topic: str = "samples"
    deadletter_topic: str = "deadletter"
    user_state_topic: str = "user_state"
    partitions: int = 8
    store: str = "memory://"
    data_dir: str = "runs/stream"
    batch_max: int = 2000
    batch_within_s: float = 0.2
    commit_interval_s: float = 1.0
    session_timeout_s: float = 30.0
    metrics_host: str = "127.0.0.1"
    metrics_port: int = 9101
    publish_user_state: bool = True
    snapshot_every_s: float = 30.0
    log_chunk_bytes: int = 512 * 1024
    batch_drain: bool = True
    connect_timeout_s: float = 60.0
