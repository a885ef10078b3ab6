"""Hot swap: find new snapshots, load and verify them in the background, swap them in with one reference write.

Two sources feed one loader thread (so loads never overlap):

* the ``snapshots`` topic: the trainer's announcements ``{version, path, created_at, max_event_ts, ...}``; the
  follower starts at the newest announcement of each partition;
* the snapshot directory, polled every ``poll_s`` seconds with :func:`model.snapshot.latest_snapshot` (covers a
  missed announcement, a serving process without Kafka, and the snapshot already there at start).

Verification before a swap: the snapshot loads (:func:`load_snapshot`; a corrupt or incompatible file raises
:class:`SnapshotError`), it is strictly newer than the served one, it was trained from the expected model preset
(when the model names one: ``python -m serving --preset`` or ``--serve NAME=DIR,preset=P``), it was trained on
samples of the streaming worker's sample spec (when serving knows that spec, from ``<samples topic>.spec``: a
snapshot whose recorded ``SnapshotMeta.sample_spec`` differs, or whose feature spec does not fit the worker's
samples, is rejected as ``wrong_sample_spec``; a snapshot that recorded none is checked on its feature spec only),
it scores the same task set as the served model (clients rely on the response's keys), and a smoke request (a
cold-start user, two candidates) gives finite scores for every task. Then ``ModelHolder.current`` is replaced — a
single attribute write. Requests read ``current`` once at their start and keep that object to the end, so in-flight
requests finish on the old model, which is freed when the last of them drops it. A rejected snapshot is logged
with its reason, counted in ``streamrec_serving_swap_failures_total{model,reason}``, remembered (never retried),
and the old model keeps serving.

A process serving several named models has one :class:`ModelHolder` per model (its own loader thread, directory
poller, announcement follower and sample-spec follower): each hot-swaps on its own, and a snapshot rejected for one
never touches another.

Example:
    >>> from prometheus_client import CollectorRegistry
    >>> from serving.metrics import ServingMetrics
    >>> holder = ModelHolder(ServingMetrics(CollectorRegistry()), name="student")
    >>> holder.name, holder.current is None
    ('student', True)
"""

from __future__ import annotations

import json
import logging
import queue
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from model.contract import problems
from model.snapshot import LoadedSnapshot, SnapshotError, latest_snapshot, load_snapshot
from serving.follow import TopicFollower
from serving.metrics import ModelTimes, ServingMetrics
from serving.scoring import ServedModel, UserCacheLRU, build_batch_sample, score_sample
from streaming.spec import SampleSpec
from streaming.user_state import Candidate

log = logging.getLogger(__name__)

SMOKE_CANDIDATES = (
    Candidate(item_id="__smoke_a__", item={}, context={}, dense={}),
    Candidate(item_id="__smoke_b__", item={"category": "smoke"}, context={}, dense={}),
)


class Rejected(Exception):
    """A snapshot that must not be served; ``reason`` is the metric label."""

    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(f"{reason}: {detail}")
        self.reason = reason
        self.detail = detail


def _version_key(v: Any) -> tuple[int, Any]:
    """Order versions numerically when they are numbers, else as strings."""
    try:
        return (0, float(v))
    except (TypeError, ValueError):
        return (1, str(v))


def check_sample_spec(loaded: LoadedSnapshot, worker: SampleSpec) -> None:
    """Raise :class:`Rejected` (``wrong_sample_spec``) unless ``loaded`` was trained on ``worker``'s samples: its
    recorded sample spec (if any) equals ``worker`` and its feature spec fits it (:func:`model.contract.problems`)."""
    recorded = loaded.meta.sample_spec
    if recorded is not None:
        try:
            trained_on = SampleSpec.from_json(recorded)
        except ValueError as e:
            raise Rejected("wrong_sample_spec", f"unreadable recorded sample spec: {e}") from None
        diff = trained_on.differences(worker, "in the snapshot", "in the worker's")
        if diff:
            raise Rejected("wrong_sample_spec", f"trained on other samples: {'; '.join(diff)}")
    found = problems(loaded.spec, worker)
    if found:
        raise Rejected("wrong_sample_spec", f"the model does not fit the worker's samples: {'; '.join(found)}")


def verify(loaded: LoadedSnapshot, path: str, current: ServedModel | None, preset: str | None = None,
           sample_spec: SampleSpec | None = None) -> ServedModel:
    """Check ``loaded`` may replace ``current`` (and comes from model preset ``preset`` unless None, and fits the
    worker's ``sample_spec`` unless None); raise :class:`Rejected` otherwise."""
    meta = loaded.meta
    if current is not None and _version_key(meta.version) <= _version_key(current.meta.version):
        raise Rejected("stale", f"version {meta.version} is not newer than the served {current.meta.version}")
    if preset is not None and loaded.config.preset != preset:
        raise Rejected("wrong_preset", f"trained from model preset {loaded.config.preset or '(none recorded)'!r}, "
                                       f"this model serves preset {preset!r} (python -m serving --preset, or "
                                       "--serve NAME=DIR,preset=P)")
    if sample_spec is not None:
        check_sample_spec(loaded, sample_spec)
    model = loaded.model.eval()
    try:
        sample = build_batch_sample(None, "__smoke__", "__smoke__", SMOKE_CANDIDATES, {}, time.time())
        probs = score_sample(model, loaded.spec, sample)
    except Exception as e:  # any failure to score a trivial request means this snapshot cannot serve
        raise Rejected("smoke_error", f"{type(e).__name__}: {e}") from None
    tasks = tuple(sorted(probs))
    if not tasks:
        raise Rejected("incompatible", "model returned no task scores")
    if current is not None and not set(current.tasks) <= set(tasks):
        raise Rejected("incompatible", f"tasks {tasks} do not cover the served model's {current.tasks}")
    for task, p in probs.items():
        if p.shape != (len(SMOKE_CANDIDATES),):
            raise Rejected("incompatible", f"{task} scores have shape {tuple(p.shape)} for {len(SMOKE_CANDIDATES)} "
                                           "candidates")
        if not bool(p.isfinite().all()):
            raise Rejected("nonfinite_score", f"smoke {task} scores are not finite: {p.tolist()}")
    return ServedModel(model=model, spec=loaded.spec, meta=meta, path=path, loaded_at=time.time(), tasks=tasks)


class ModelHolder:
    """One named model's served reference and the background machinery that replaces it.

    ``current`` is the :class:`ServedModel` to use (None until the first snapshot verifies). Call :meth:`offer` with a
    snapshot path (and the announced version, if any) to have it loaded, verified and swapped in by the loader thread.
    ``user_cache`` holds this model's per-user encodings (one cache per model: two models never evict each other's).
    """

    def __init__(self, metrics: ServingMetrics,
                 load: Callable[[Path], LoadedSnapshot] = load_snapshot, preset: str | None = None,
                 sample_spec: SampleSpec | None = None, name: str = "default") -> None:
        self.name = name
        self.metrics = metrics
        self.current: ServedModel | None = None
        self.user_cache = UserCacheLRU()
        self._load = load
        self.preset = preset  # serve only snapshots of this model preset (None: any)
        # the streaming worker's sample spec (None: unknown); updated by on_sample_spec
        self.sample_spec = sample_spec
        self._queue: queue.Queue[tuple[str, Any] | None] = queue.Queue()
        self._tried: dict[str, str] = {}  # path → outcome ("served", "stale" or a rejection reason); bounded below
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []
        self._follower: TopicFollower | None = None
        self._spec_follower: TopicFollower | None = None
        self._snapshot_dir: Path | None = None
        self.model_metrics = metrics.model(name, self._times)

    def _times(self) -> ModelTimes | None:
        cur = self.current
        return None if cur is None else cur.times()

    # -- sources ---------------------------------------------------------------------------------------------
    def offer(self, path: str | Path, version: Any = None) -> None:
        """Queue a snapshot for loading (non-blocking); duplicates and already-tried paths are skipped.

        An announced path that does not exist here but whose name exists in the local snapshot directory is read
        from there (trainer and serving may mount the same volume at different paths, e.g. in docker-compose).
        """
        p = Path(path)
        if self._snapshot_dir is not None and not p.exists() and (self._snapshot_dir / p.name).exists():
            p = self._snapshot_dir / p.name
        self._queue.put((str(p), version))

    def on_announcement(self, rec: Any) -> None:
        """Handle one ``snapshots`` topic record: JSON with at least ``path`` (and ``version``)."""
        try:
            ann = json.loads(rec.value)
            path = ann["path"]
            if not isinstance(path, str) or not path:
                raise ValueError("path must be a non-empty string")
        except Exception as e:  # a bad announcement is counted and ignored
            self.model_metrics.announcement("invalid")
            log.warning("model %s: ignoring an invalid snapshot announcement at offset %s: %s: %s", self.name,
                        getattr(rec, "offset", "?"), type(e).__name__, e)
            return
        self.model_metrics.announcement("valid")
        self.offer(path, ann.get("version"))

    def on_sample_spec(self, rec: Any) -> None:
        """Handle one ``<samples>.spec`` topic record: the worker's current :class:`SampleSpec`, checked against every
        snapshot loaded from now on."""
        try:
            spec = SampleSpec.from_json(rec.value)
        except (ValueError, TypeError) as e:
            log.warning("ignoring an unreadable sample spec at offset %s: %s", getattr(rec, "offset", "?"), e)
            return
        if spec != self.sample_spec:
            log.info("worker sample spec %s: history_len %d, max_targets %d, tasks %s", spec.fingerprint(),
                     spec.history_len, spec.max_targets, list(spec.tasks))
        self.sample_spec = spec

    def poll_dir(self, snapshot_dir: Path) -> None:
        """Offer the newest snapshot in ``snapshot_dir`` (if any) for loading."""
        try:
            latest = latest_snapshot(snapshot_dir)
        except (OSError, SnapshotError) as e:
            log.debug("model %s: no snapshot in %s yet: %s", self.name, snapshot_dir, e)
            return
        if latest is not None:
            self.offer(latest)

    # -- the loader ------------------------------------------------------------------------------------------
    def _should_try(self, path: str, version: Any) -> bool:
        cur = self.current
        if path in self._tried or (cur is not None and path == cur.path):
            return False
        return not (version is not None and cur is not None
                    and _version_key(version) <= _version_key(cur.meta.version))

    def load_one(self, path: str, version: Any = None) -> bool:
        """Load, verify and (if it passes) swap in ``path`` now, on the calling thread; True when swapped."""
        if not self._should_try(path, version):
            return False
        t0 = time.perf_counter()
        try:
            try:
                loaded = self._load(Path(path))
            except SnapshotError as e:
                raise Rejected("load_error", str(e)) from None
            except FileNotFoundError as e:
                raise Rejected("missing", str(e)) from None
            except Exception as e:  # a loader that fails in any other way still must not take the service down
                raise Rejected("load_error", f"{type(e).__name__}: {e}") from None
            served = verify(loaded, path, self.current, self.preset, self.sample_spec)
        except Rejected as e:
            self._remember(path, e.reason)
            if e.reason == "stale":
                log.info("model %s: snapshot %s skipped: %s", self.name, path, e.detail)
                return False
            self.model_metrics.swap_failure(e.reason)
            log.error("model %s: snapshot %s rejected (%s): %s; still serving version %s", self.name, path, e.reason,
                      e.detail, None if self.current is None else self.current.meta.version)
            return False
        self.swap(served)
        self._remember(path, "served")
        self.model_metrics.load_latency.observe(time.perf_counter() - t0)
        return True

    def swap(self, served: ServedModel) -> None:
        """Make ``served`` the model for new requests (one reference write) and publish its metrics."""
        old = self.current
        self.current = served
        m = self.model_metrics
        m.swaps.inc()
        m.loaded.set(1)
        v = _version_key(served.meta.version)
        m.version.set(v[1] if v[0] == 0 else 0)
        log.info("model %s: serving snapshot version %s from %s (max_event_ts=%s, previous %s)", self.name,
                 served.meta.version, served.path, served.meta.max_event_ts, None if old is None else old.meta.version)

    def _remember(self, path: str, outcome: str) -> None:
        if len(self._tried) > 10_000:
            self._tried.clear()
        self._tried[path] = outcome

    def _loader(self) -> None:
        while True:
            item = self._queue.get()
            if item is None:
                return
            try:
                self.load_one(*item)
            except Exception:  # never let the loader thread die
                log.exception("model %s: snapshot loader failed on %s", self.name, item[0])

    def _poller(self, snapshot_dir: Path, every_s: float) -> None:
        while not self._stop.is_set():
            self.poll_dir(snapshot_dir)
            self._stop.wait(every_s)

    # -- lifecycle -------------------------------------------------------------------------------------------
    def start(self, snapshot_dir: Path, poll_s: float, bootstrap: str | None, topic: str | None,
              sample_spec_topic: str | None = None) -> None:
        """Start the loader, the directory poller (``poll_s > 0``; else one initial scan), the follower of the
        announcement ``topic`` (unless None) and (``sample_spec_topic``) the follower of the worker's sample spec."""
        self._snapshot_dir = Path(snapshot_dir)
        self._threads.append(threading.Thread(target=self._loader, name=f"snapshot-loader-{self.name}", daemon=True))
        if poll_s > 0:
            self._threads.append(threading.Thread(target=self._poller, args=(snapshot_dir, poll_s),
                                                  name=f"snapshot-poller-{self.name}", daemon=True))
        else:
            self.poll_dir(snapshot_dir)
        for t in self._threads:
            t.start()
        if bootstrap is not None and sample_spec_topic:
            self._spec_follower = TopicFollower(bootstrap, sample_spec_topic, self.on_sample_spec, start="beginning")
            self._spec_follower.start()
        if bootstrap is not None and topic:
            self._follower = TopicFollower(
                bootstrap, topic, self.on_announcement, start="last",
                on_error=lambda r: self.model_metrics.announcement(f"error_{r}"))
            self._follower.start()

    def stop(self) -> None:
        self._stop.set()
        self._queue.put(None)
        for f in (self._follower, self._spec_follower):
            if f is not None:
                f.stop()
        for t in self._threads:
            t.join(5.0)

