"""Watching the pipeline through its services' /metrics: :func:`scrape` reads a Prometheus text endpoint into a dict
(the same numbers Prometheus sees), :class:`Progress` is one reading of every service, and :class:`Completion`
follows a finite replay through consumed, trained and served. The demo shows them; the tests and the pipeline
benchmark wait on them.

Example (needs the running services, so not a doctest)::

    p = read_progress("http://127.0.0.1:9101/metrics", "http://127.0.0.1:9102/metrics", "http://127.0.0.1:8000")
    p.trainer_samples  # 12345.0
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import Mapping
from dataclasses import dataclass, field

from prometheus_client.parser import text_string_to_metric_families

from deploy.supervisor import http_get

# One scraped sample: (metric sample name, sorted label pairs) -> value.
MetricKey = tuple[str, tuple[tuple[str, str], ...]]

# Dead-letter reasons the join core emits for events it had accepted (and counted in streamrec_stream_events_total);
# every other reason is a message the parser rejected.
CORE_DEADLETTER_REASONS = frozenset({"late_impression", "orphan_feedback", "late_positive"})


def scrape(url: str, timeout_s: float = 2.0) -> dict[MetricKey, float]:
    """Read a Prometheus text endpoint into ``{(sample_name, labels): value}``; empty when unreachable."""
    status, body = http_get(url, timeout_s)
    if status != 200:
        return {}
    out: dict[MetricKey, float] = {}
    for fam in text_string_to_metric_families(body.decode("utf-8", errors="replace")):
        for s in fam.samples:
            out[(s.name, tuple(sorted(s.labels.items())))] = float(s.value)
    return out


def metric_sum(samples: Mapping[MetricKey, float], name: str, **labels: str) -> float:
    """Sum of every sample called ``name`` whose labels include ``labels``."""
    total = 0.0
    for (n, lbls), v in samples.items():
        if n == name and all(dict(lbls).get(k) == val for k, val in labels.items()):
            total += v
    return total


def metric_by(samples: Mapping[MetricKey, float], name: str, *by: str) -> dict[tuple[str, ...], float]:
    """``name`` summed by the label values ``by`` (e.g. ``metric_by(s, "x_total", "scenario")``)."""
    out: dict[tuple[str, ...], float] = {}
    for (n, lbls), v in samples.items():
        if n == name:
            d = dict(lbls)
            key = tuple(d.get(b, "") for b in by)
            out[key] = out.get(key, 0.0) + v
    return out



@dataclass
class Progress:
    """One reading of every service's /metrics (what the demo shows and the tests wait on)."""

    worker_events_in: float = 0.0
    worker_deadletter: float = 0.0
    worker_samples_out: float = 0.0
    worker_targets_out: float = 0.0
    trainer_samples: float = 0.0
    trainer_impressions: float = 0.0
    trainer_skipped: float = 0.0
    trainer_snapshot_version: float = 0.0
    trainer_last_snapshot_ts: float = 0.0
    trainer_lag: float = float("nan")
    # (scenario, task) -> windowed AUC; scenario None = overall (every scenario name, "all" included, is a scenario)
    auc: dict[tuple[str | None, str], float] = field(default_factory=dict)
    gauc: dict[tuple[str | None, str], float] = field(default_factory=dict)
    # The served model of the trainer's snapshots: the one model, or in distillation mode the model "teacher"
    serving_version: float = 0.0
    serving_samples_trained: float = 0.0  # of the served snapshot (GET /v1/model)
    serving_model_age_s: float = float("nan")
    serving_since_update_s: float = float("nan")
    # Distillation mode (read_progress(..., student_metrics=URL)): the student trainer, the teacher records, and
    # serving's model "student"
    distill: bool = False
    teacher_published: float = 0.0  # teacher records the trainer published
    student_samples: float = 0.0
    student_impressions: float = 0.0
    student_skipped: float = 0.0
    student_snapshot_version: float = 0.0
    student_joined: float = 0.0  # samples the student trained with their teacher record
    student_missing: float = 0.0  # ... on labels only (record late, evicted or absent)
    student_agreement: float = float("nan")  # mean |p_teacher - p_student| of its last batch
    student_auc: dict[str, float] = field(default_factory=dict)  # task -> windowed AUC, every scenario
    student_gauc: dict[str, float] = field(default_factory=dict)
    student_serving_version: float = 0.0
    student_serving_samples_trained: float = 0.0
    student_since_update_s: float = float("nan")
    default_model: str = ""  # the model serving routes scenarios without a route of their own to ("" = unknown)


@dataclass
class Completion:
    """Tracks the stages of a finite replay from the services' metrics (used by the demo, tests and the bench)."""

    replayed: int | None = None  # events the replay produced (known once it exited)
    consumed_at: float | None = None  # wall time the worker had read them all
    samples_stable_since: float | None = None
    last_samples_out: float = -1.0
    trained_at: float | None = None  # wall time the trainer had trained every sample written
    served_version: float | None = None  # the served version whose snapshot holds every trained sample

    def update(self, p: Progress, now: float, settle_s: float) -> bool:
        """Advance with a new reading taken at time ``now`` (seconds); True when the whole replay is served."""
        if self.replayed is None:
            return False
        if self.consumed_at is None and p.worker_events_in >= self.replayed:
            self.consumed_at = now
        if self.consumed_at is None:
            return False
        # The worker releases its last impressions once the end-of-stream markers move the watermark: wait until
        # the samples count stops moving for settle_s.
        if p.worker_samples_out != self.last_samples_out:
            self.last_samples_out, self.samples_stable_since = p.worker_samples_out, now
            self.trained_at = None
            return False
        assert self.samples_stable_since is not None
        if now - self.samples_stable_since < settle_s:
            return False
        student_trained = not p.distill or p.student_samples + p.student_skipped >= p.worker_samples_out
        if p.worker_samples_out > 0 and p.trainer_samples + p.trainer_skipped >= p.worker_samples_out \
                and student_trained:
            if self.trained_at is None:
                self.trained_at = now
            # served = the model in serving was trained on every sample the trainer has trained (in distillation
            # mode: the teacher's and the student's)
            student_served = not p.distill or (
                p.student_serving_samples_trained >= p.student_samples
                and p.student_serving_version >= p.student_snapshot_version > 0)
            if p.serving_samples_trained >= p.trainer_samples and p.serving_version >= p.trainer_snapshot_version > 0 \
                    and student_served:
                self.served_version = p.student_serving_version if p.distill else p.serving_version
                return True
        return False


def _windowed_quality(t: Mapping[MetricKey, float], auc: dict[tuple[str | None, str], float],
                      gauc: dict[tuple[str | None, str], float]) -> None:
    """Fill ``auc``/``gauc`` ((scenario or None = overall, task) -> value) from a trainer's windowed series."""
    for (name, lbls), val in t.items():
        d = dict(lbls)
        if d.get("window") == "window" and name in ("streamrec_trainer_auc", "streamrec_trainer_gauc"):
            scen = None if d.get("scope") == "overall" else d.get("scenario", "")
            (auc if name.endswith("_auc") and not name.endswith("gauc") else gauc)[(scen, d.get("task", ""))] = val


def _served_models(body: bytes) -> tuple[dict[str, float], str]:
    """``{model name: samples_trained}`` and the default model from serving's /v1/model body: its ``models`` (a
    list of {name, samples_trained, ...} or a {name: {...}} mapping) and ``routes`` ({"*": default, ...}); a
    single-model body gives ``{"": samples_trained}``."""
    try:
        info = json.loads(body)
    except ValueError:
        return {}, ""
    out: dict[str, float] = {}
    models = info.get("models") if isinstance(info, dict) else None
    entries = list(models.items()) if isinstance(models, dict) else [
        (m.get("name", ""), m) for m in models or () if isinstance(m, dict)]
    for name, m in entries:
        with contextlib.suppress(ValueError, KeyError, TypeError):
            out[str(name)] = float(m["samples_trained"])
    if not out and isinstance(info, dict):
        with contextlib.suppress(ValueError, KeyError, TypeError):
            out[""] = float(info["samples_trained"])
    routes = info.get("routes") if isinstance(info, dict) else None
    default = str(routes.get("*", "")) if isinstance(routes, dict) else ""
    return out, default


def read_progress(worker_metrics: str, trainer_metrics: str, serving_url: str,
                  student_metrics: str | None = None) -> Progress:
    """Scrape the worker's and the trainer's /metrics URLs and serving's /metrics and /v1/model into a
    :class:`Progress` (a service that does not answer leaves its fields at their defaults; lag and ages NaN).

    With ``student_metrics`` (distillation mode) the student trainer's too; serving's models are then "teacher"
    (the trainer's snapshots: ``serving_*``) and "student" (``student_serving_*``)."""
    w, t = scrape(worker_metrics), scrape(trainer_metrics)
    v = scrape(f"{serving_url}/metrics")
    model = {"model": "teacher"} if student_metrics is not None else {}
    p = Progress(
        worker_events_in=metric_sum(w, "streamrec_stream_events_total") + sum(
            v for (r,), v in metric_by(w, "streamrec_stream_deadletter_total", "reason").items()
            if r not in CORE_DEADLETTER_REASONS),
        worker_deadletter=metric_sum(w, "streamrec_stream_deadletter_total"),
        worker_samples_out=metric_sum(w, "streamrec_stream_samples_total"),
        worker_targets_out=metric_sum(w, "streamrec_stream_targets_per_sample_sum"),
        trainer_samples=metric_sum(t, "streamrec_trainer_samples_total"),
        trainer_impressions=metric_sum(t, "streamrec_trainer_impressions_total"),
        trainer_skipped=metric_sum(t, "streamrec_trainer_skipped_total"),
        trainer_snapshot_version=metric_sum(t, "streamrec_trainer_snapshot_version"),
        trainer_last_snapshot_ts=metric_sum(t, "streamrec_trainer_last_snapshot_timestamp_seconds"),
        trainer_lag=metric_sum(t, "streamrec_trainer_consumer_lag_records") if t else float("nan"),
        serving_version=metric_sum(v, "streamrec_serving_model_version", **model),
        serving_model_age_s=metric_sum(v, "streamrec_serving_model_age_seconds", **model) if v else float("nan"),
        serving_since_update_s=(metric_sum(v, "streamrec_serving_since_last_update_seconds", **model) if v
                                else float("nan")),
    )
    status, body = http_get(f"{serving_url}/v1/model")
    served: dict[str, float] = {}
    if status == 200:
        served, p.default_model = _served_models(body)
    _windowed_quality(t, p.auc, p.gauc)
    if student_metrics is None:
        p.serving_samples_trained = sum(served.values())  # the one model
        return p
    s = scrape(student_metrics)
    p.distill = True
    p.serving_samples_trained = served.get("teacher", 0.0)
    p.teacher_published = metric_sum(t, "streamrec_trainer_teacher_records_published_total")
    p.student_samples = metric_sum(s, "streamrec_trainer_samples_total")
    p.student_impressions = metric_sum(s, "streamrec_trainer_impressions_total")
    p.student_skipped = metric_sum(s, "streamrec_trainer_skipped_total")
    p.student_snapshot_version = metric_sum(s, "streamrec_trainer_snapshot_version")
    p.student_joined = metric_sum(s, "streamrec_trainer_teacher_records_joined_total")
    p.student_missing = metric_sum(s, "streamrec_trainer_teacher_records_missing_total")
    p.student_agreement = metric_sum(s, "streamrec_trainer_teacher_agreement") if s else float("nan")
    auc: dict[tuple[str | None, str], float] = {}
    gauc: dict[tuple[str | None, str], float] = {}
    _windowed_quality(s, auc, gauc)
    p.student_auc = {task: val for (scen, task), val in auc.items() if scen is None}
    p.student_gauc = {task: val for (scen, task), val in gauc.items() if scen is None}
    p.student_serving_version = metric_sum(v, "streamrec_serving_model_version", model="student")
    p.student_serving_samples_trained = served.get("student", 0.0)
    if v:
        p.student_since_update_s = metric_sum(v, "streamrec_serving_since_last_update_seconds", model="student")
    return p
