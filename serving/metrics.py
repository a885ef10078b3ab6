"""Prometheus metrics of the serving worker (``streamrec_serving_*``), all created on a caller's registry.

The series of a served model carry its name in the label ``model`` (version, loaded, model age, data freshness,
since last update, swaps, swap failures, snapshot loads, announcements); request, scoring and user-state series are
the process's. With one model configured that label is ``model="default"``.

Example:
    >>> from prometheus_client import CollectorRegistry
    >>> reg = CollectorRegistry()
    >>> m = ServingMetrics(reg)
    >>> student = m.model("student", lambda: None)
    >>> student.swap_failure("load_error")
    >>> reg.get_sample_value("streamrec_serving_swap_failures_total", {"model": "student", "reason": "load_error"})
    1.0
    >>> reg.get_sample_value("streamrec_serving_model_loaded", {"model": "student"})
    0.0
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from typing import NamedTuple

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

# Latency buckets in seconds: sub-millisecond health checks up to multi-second overloads.
LATENCY_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.0075, 0.01, 0.015, 0.02, 0.03, 0.05, 0.075, 0.1, 0.25,
                   0.5, 1.0, 2.5, 5.0, 10.0)
CANDIDATE_BUCKETS = (1, 2, 5, 10, 20, 50, 100, 200, 300, 500, 1000, 2000)


class ModelTimes(NamedTuple):
    """Wall-clock times (epoch s) of the served model, from which its age and its data freshness are derived.

    Event time (a snapshot's ``max_event_ts``) is deliberately absent: for a replayed historical log it is decades
    old however fresh the model is.

    Example:
        >>> t = ModelTimes(loaded_at=100.0, created_at=98.0, max_produce_ts=95.5)
        >>> t.model_age(now=130.0), t.since_update(now=130.0), t.data_freshness()
        (32.0, 30.0, 4.5)
    """

    loaded_at: float  # serving swapped the model in
    created_at: float  # the trainer wrote the snapshot
    max_produce_ts: float | None  # the newest samples record it was trained on was produced (None: unknown)

    def model_age(self, now: float) -> float:
        """Seconds since the trainer wrote the snapshot."""
        return max(0.0, now - self.created_at)

    def since_update(self, now: float) -> float:
        """Seconds since this model was swapped in."""
        return max(0.0, now - self.loaded_at)

    def data_freshness(self) -> float:
        """Seconds from the newest trained samples record being produced to this model serving (NaN: unknown).

        Fixed once the model serves; the producer's and serving's clocks are compared, so skew clamps at 0.
        """
        return math.nan if self.max_produce_ts is None else max(0.0, self.loaded_at - self.max_produce_ts)


class ServingMetrics:
    """Every metric the serving worker exports; ``registry`` is where they live (tests pass a private one).

    Per-model series are reached through :meth:`model` (one :class:`ModelMetrics` per served model).
    """

    def __init__(self, registry: CollectorRegistry) -> None:
        self.requests = Counter(
            "streamrec_serving_requests_total", "HTTP requests by endpoint and status code",
            ["endpoint", "status"], registry=registry)
        self.request_latency = Histogram(
            "streamrec_serving_request_duration_seconds", "HTTP request latency by endpoint and status code",
            ["endpoint", "status"], buckets=LATENCY_BUCKETS, registry=registry)
        self.scoring_latency = Histogram(
            "streamrec_serving_scoring_duration_seconds",
            "Time to build, collate and score one request on the scoring thread", buckets=LATENCY_BUCKETS,
            registry=registry)
        self.candidates = Histogram(
            "streamrec_serving_candidates_per_request", "Candidates in each accepted /v1/score request",
            buckets=CANDIDATE_BUCKETS, registry=registry)
        self.cold_starts = Counter(
            "streamrec_serving_cold_start_requests_total", "Scored requests for users without a known state",
            registry=registry)
        self.bad_requests = Counter(
            "streamrec_serving_bad_requests_total", "Requests rejected with a 4xx, by reason", ["reason"],
            registry=registry)
        self.model_version = Gauge(
            "streamrec_serving_model_version", "Version of the model's snapshot being served (0 = none)", ["model"],
            registry=registry)
        self.model_loaded = Gauge(
            "streamrec_serving_model_loaded",
            "1 once the model has a snapshot loaded (/readyz answers 200 when every routed model has)", ["model"],
            registry=registry)
        self.since_update = Gauge(
            "streamrec_serving_since_last_update_seconds", "Seconds since the served model was last swapped in",
            ["model"], registry=registry)
        self.model_age = Gauge(
            "streamrec_serving_model_age_seconds",
            "Now minus the served snapshot's created_at (wall clock since the trainer wrote it)", ["model"],
            registry=registry)
        self.data_freshness = Gauge(
            "streamrec_serving_data_freshness_seconds",
            "Wall seconds from the newest samples record the served model was trained on being produced to the "
            "model starting to serve (NaN when the snapshot does not record it)", ["model"], registry=registry)
        self.swaps = Counter(
            "streamrec_serving_swaps_total", "Snapshots verified and swapped in", ["model"], registry=registry)
        self.swap_failures = Counter(
            "streamrec_serving_swap_failures_total", "Snapshots rejected (old model kept serving), by reason",
            ["model", "reason"], registry=registry)
        self.snapshot_load_latency = Histogram(
            "streamrec_serving_snapshot_load_duration_seconds", "Time to load and verify a snapshot", ["model"],
            buckets=(0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0), registry=registry)
        self.user_states = Gauge(
            "streamrec_serving_user_states", "Users in the local user-state replica", registry=registry)
        self.user_state_updates = Counter(
            "streamrec_serving_user_state_updates_total", "user_state records applied to the replica (incl. deletes)",
            registry=registry)
        self.user_state_errors = Counter(
            "streamrec_serving_user_state_errors_total", "user_state records or consumer errors, by reason",
            ["reason"], registry=registry)
        self.announcements = Counter(
            "streamrec_serving_snapshot_announcements_total", "Messages read from the model's snapshots topic, by outcome",
            ["model", "outcome"], registry=registry)

    def model(self, name: str, times: Callable[[], ModelTimes | None]) -> ModelMetrics:
        """The series of model ``name`` (created now: version 0, not loaded, no swaps); its time gauges read
        ``times()`` at scrape time (None: no snapshot loaded yet, NaN)."""
        return ModelMetrics(self, name, times)


class ModelMetrics:
    """The ``model=NAME`` series of one served model (from :meth:`ServingMetrics.model`).

    Model-time gauges (age, data freshness, since last update) are computed at scrape time from ``times()``, so they
    never go stale between requests.
    """

    def __init__(self, metrics: ServingMetrics, name: str, times: Callable[[], ModelTimes | None]) -> None:
        self.name = name
        self._metrics = metrics
        self._times = times
        self.version = metrics.model_version.labels(model=name)
        self.loaded = metrics.model_loaded.labels(model=name)
        self.swaps = metrics.swaps.labels(model=name)
        self.load_latency = metrics.snapshot_load_latency.labels(model=name)
        self.version.set(0)
        self.loaded.set(0)
        metrics.since_update.labels(model=name).set_function(lambda: self._read(lambda t: t.since_update(time.time())))
        metrics.model_age.labels(model=name).set_function(lambda: self._read(lambda t: t.model_age(time.time())))
        metrics.data_freshness.labels(model=name).set_function(lambda: self._read(ModelTimes.data_freshness))

    def swap_failure(self, reason: str) -> None:
        """Count one rejected snapshot of this model."""
        self._metrics.swap_failures.labels(model=self.name, reason=reason).inc()

    def announcement(self, outcome: str) -> None:
        """Count one record of this model's snapshots topic (``valid``, ``invalid``, ``error_<reason>``)."""
        self._metrics.announcements.labels(model=self.name, outcome=outcome).inc()

    def _read(self, fn: Callable[[ModelTimes], float]) -> float:
        times = self._times()
        return math.nan if times is None else fn(times)
