"""The bookkeeping of :meth:`trainer.loop.Trainer.run`: when to snapshot and checkpoint, what one run counted and
timed, when it stops, and what it reports.

Pure state with no I/O: the trainer owns one :class:`PersistSchedule` and one :class:`RunStats`, created with it and
updated in place by its loop's steps; :class:`RunLimits` is the stopping rule given to ``run``. All times are
``time.monotonic()`` seconds except the durations, which are ``time.perf_counter()`` differences.
"""

from __future__ import annotations

from dataclasses import dataclass, field, fields
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from trainer.loop import TrainerConfig


@dataclass
class PersistSchedule:
    """Snapshot and checkpoint cadence: what was trained since the last of each, and when each last happened.

    A snapshot always checkpoints first, so a due snapshot makes a due checkpoint moot; the cadence itself
    (``snapshot_every_s`` ...) is read from the trainer's config on every :meth:`due` call.

    Example:
        >>> from trainer.loop import TrainerConfig
        >>> cfg = TrainerConfig(snapshot_every_s=5.0, checkpoint_every_s=30.0)
        >>> s = PersistSchedule()
        >>> s.start(now=100.0)
        >>> s.due(cfg, now=106.0, samples_trained=0)       # nothing trained yet: nothing to persist
        (False, False)
        >>> s.mark_trained()
        >>> s.due(cfg, now=106.0, samples_trained=8)
        (True, False)
        >>> s.snapshotted(now=106.0, samples_trained=8)
        >>> s.checkpointed(now=106.0)
        >>> s.dirty_snapshot, s.dirty_checkpoint
        (False, False)
    """

    dirty_checkpoint: bool = False  # trained (or moved offsets) since the last checkpoint
    dirty_snapshot: bool = False  # trained since the last snapshot
    last_checkpoint_t: float = 0.0
    last_snapshot_t: float = 0.0
    samples_at_snapshot: int = 0  # samples_trained when the last snapshot was written (the sample cadence)

    def start(self, now: float) -> None:
        """A run starts: both time cadences count from ``now``."""
        self.last_checkpoint_t = self.last_snapshot_t = now

    def mark_trained(self) -> None:
        """A training step happened (also a zero-weighted lockstep one: the weights' optimizer state moved)."""
        self.dirty_checkpoint = self.dirty_snapshot = True

    def mark_skipped(self) -> None:
        """Offsets moved past skipped records: only a checkpoint has something new to keep."""
        self.dirty_checkpoint = True

    def checkpointed(self, now: float) -> None:
        self.dirty_checkpoint = False
        self.last_checkpoint_t = now

    def snapshotted(self, now: float, samples_trained: int | None) -> None:
        """A snapshot was published at ``samples_trained``; None: the model is not servable, so only a checkpoint
        was written and the sample cadence keeps counting from the last real snapshot."""
        self.dirty_snapshot = False
        self.last_snapshot_t = now
        if samples_trained is not None:
            self.samples_at_snapshot = samples_trained

    def due(self, cfg: TrainerConfig, now: float, samples_trained: int, idle: bool = False) -> tuple[bool, bool]:
        """(snapshot due, checkpoint due) by this rank's cadence (``idle``: the last poll found no new record)."""
        since_snap = now - self.last_snapshot_t
        snap = self.dirty_snapshot and (
            (cfg.snapshot_every_s > 0 and since_snap >= cfg.snapshot_every_s)
            or (idle and cfg.snapshot_idle_s > 0 and since_snap >= cfg.snapshot_idle_s)
            or (cfg.snapshot_every_samples > 0
                and samples_trained - self.samples_at_snapshot >= cfg.snapshot_every_samples)
        )
        ckpt = (self.dirty_checkpoint and cfg.checkpoint_every_s > 0
                and now - self.last_checkpoint_t >= cfg.checkpoint_every_s)
        return snap, ckpt


@dataclass
class RunStats:
    """Counters and timers of one ``Trainer.run`` call (the trainer's lifetime counters live on the trainer).

    Durations split the loop's wall time: ``data_wait_s`` blocked on the prefetcher, ``compute_s`` from a batch's
    arrival to the end of its training step, ``persist_s`` writing snapshots and checkpoints. The rate window is
    the stretch since the last metrics line.

    Example:
        >>> st = RunStats()
        >>> st.start(now=10.0)
        >>> st.count(samples=4, targets=12)
        >>> st.take_window(now=12.0)                     # (samples/s, impressions/s) since the last line
        (2.0, 6.0)
        >>> st.samples, st.window_samples
        (4, 0)
    """

    t_start: float = 0.0
    last_record_t: float = 0.0  # the last time a record arrived or a step ended (the idle stop counts from it)
    samples: int = 0
    targets: int = 0
    records: int = 0
    data_wait_s: float = 0.0
    compute_s: float = 0.0
    persist_s: float = 0.0
    startup_wait_s: float | None = None  # data wait before this run's first batch (consumer assignment, fetch)
    last_loss: dict[str, float] = field(default_factory=dict)  # {task: loss, "total": loss} of the last step
    window_start: float = 0.0  # also the time of the last metrics line
    window_samples: int = 0
    window_targets: int = 0

    def start(self, now: float) -> None:
        """Zero everything for a new run starting at ``now``."""
        fresh = RunStats(t_start=now, last_record_t=now, window_start=now)
        for f in fields(self):
            setattr(self, f.name, getattr(fresh, f.name))

    def count(self, samples: int, targets: int) -> None:
        self.samples += samples
        self.targets += targets
        self.window_samples += samples
        self.window_targets += targets

    def rates(self, now: float) -> tuple[float, float]:
        """(samples/s, impressions/s) over the current window."""
        dt = max(1e-9, now - self.window_start)
        return self.window_samples / dt, self.window_targets / dt

    def take_window(self, now: float) -> tuple[float, float]:
        """:meth:`rates`, then start a new window at ``now``."""
        sps, ips = self.rates(now)
        self.window_samples = self.window_targets = 0
        self.window_start = now
        return sps, ips


@dataclass(frozen=True)
class RunLimits:
    """When ``Trainer.run`` stops by itself (None = no such limit); a stop request or a broker outage aside.

    Example:
        >>> st = RunStats()
        >>> st.start(now=0.0)
        >>> RunLimits(max_seconds=5.0).reached(st, now=4.0), RunLimits(max_seconds=5.0).reached(st, now=5.0)
        (False, True)
        >>> RunLimits(exit_when_idle_s=1.0).reached(st, now=1.5)    # no record since the start
        True
    """

    max_samples: int | None = None  # samples trained in this run
    max_seconds: float | None = None  # since the run started
    exit_when_idle_s: float | None = None  # since a record last arrived (or a step ended)

    def reached(self, stats: RunStats, now: float) -> bool:
        return ((self.max_samples is not None and stats.samples >= self.max_samples)
                or (self.max_seconds is not None and now - stats.t_start >= self.max_seconds)
                or (self.exit_when_idle_s is not None and now - stats.last_record_t >= self.exit_when_idle_s))


@dataclass
class RunSummary:
    """What :meth:`trainer.loop.Trainer.run` did (also the last ``stop`` line of the metrics log)."""

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
