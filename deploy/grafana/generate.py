"""Generate the Grafana dashboards (deploy/grafana/dashboards/*.json) from the metric names the services export.

Run ``.venv/bin/python deploy/grafana/generate.py`` after changing a panel; the JSON is committed next to this
script and provisioned by deploy/grafana/provisioning/dashboards/streamrec.yml. ``tests/deploy`` checks that the
committed JSON equals this script's output and that every panel query returns data from a live pipeline.

Metric sources: ``streaming/metrics.py`` (``streamrec_stream_*``), ``trainer/metrics.py``
(``streamrec_trainer_*``), ``serving/metrics.py`` (``streamrec_serving_*``).
"""

from __future__ import annotations

import json
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

OUT_DIR = Path(__file__).resolve().parent / "dashboards"
DS = {"type": "prometheus", "uid": "streamrec-prometheus"}


@dataclass
class Q:
    """One PromQL target: expression and legend."""

    expr: str
    legend: str = ""
    instant: bool = False


@dataclass
class Panel:
    """A time series (default), stat or table panel."""

    title: str
    queries: list[Q]
    unit: str = "short"
    kind: str = "timeseries"
    description: str = ""
    w: int = 12
    h: int = 8
    decimals: int | None = None
    extra: dict[str, Any] = field(default_factory=dict)


@dataclass
class Row:
    """A dashboard row; ``collapsed`` rows nest their panels inside the row (Grafana's JSON layout)."""

    title: str
    panels: list[Panel]
    collapsed: bool = False


def _panel_json(p: Panel, pid: int, x: int, y: int) -> dict[str, Any]:
    targets = []
    for i, q in enumerate(p.queries):
        t: dict[str, Any] = {"datasource": DS, "expr": q.expr, "legendFormat": q.legend or "__auto",
                             "refId": chr(ord("A") + i), "range": not q.instant, "instant": q.instant}
        targets.append(t)
    defaults: dict[str, Any] = {"unit": p.unit}
    if p.decimals is not None:
        defaults["decimals"] = p.decimals
    out: dict[str, Any] = {
        "id": pid,
        "type": p.kind,
        "title": p.title,
        "description": p.description,
        "datasource": DS,
        "gridPos": {"h": p.h, "w": p.w, "x": x, "y": y},
        "targets": targets,
        "fieldConfig": {"defaults": defaults, "overrides": []},
        "options": {},
    }
    if p.kind == "timeseries":
        out["options"] = {"legend": {"displayMode": "list", "placement": "bottom", "showLegend": True},
                          "tooltip": {"mode": "multi", "sort": "desc"}}
    elif p.kind == "stat":
        out["options"] = {"reduceOptions": {"calcs": ["lastNotNull"], "fields": "", "values": False},
                          "colorMode": "value", "graphMode": "area", "textMode": "auto"}
    out.update(p.extra)
    return out


def _variable(name: str, query: str, label: str, multi: bool = True) -> dict[str, Any]:
    return {
        "name": name,
        "label": label,
        "type": "query",
        "datasource": DS,
        "query": {"query": query, "refId": f"{name}-var"},
        "definition": query,
        "refresh": 2,  # on time range change
        "includeAll": multi,
        "multi": multi,
        "allValue": ".*" if multi else None,
        "current": {"selected": True, "text": ["All"], "value": ["$__all"]} if multi else {},
        "sort": 1,
        "hide": 0,
        "options": [],
        "regex": "",
    }


def dashboard(uid: str, title: str, description: str, rows: list[Row],
              variables: list[dict[str, Any]] | None = None) -> dict[str, Any]:
    """A complete dashboard JSON (schemaVersion 39: Grafana 10/11)."""
    panels: list[dict[str, Any]] = []
    pid, y = 1, 0
    for row in rows:
        row_json: dict[str, Any] = {"id": pid, "type": "row", "title": row.title, "collapsed": row.collapsed,
                                    "gridPos": {"h": 1, "w": 24, "x": 0, "y": y}, "panels": []}
        pid += 1
        y += 1
        panels.append(row_json)
        x, row_h = 0, 0
        for p in row.panels:
            if x + p.w > 24:
                x, y = 0, y + row_h
                row_h = 0
            pj = _panel_json(p, pid, x, y)
            pid += 1
            (row_json["panels"] if row.collapsed else panels).append(pj)
            x += p.w
            row_h = max(row_h, p.h)
        y += row_h
    return {
        "uid": uid,
        "title": title,
        "description": description,
        "tags": ["streamrec"],
        "timezone": "browser",
        "editable": False,
        "graphTooltip": 1,
        "refresh": "5s",
        "schemaVersion": 39,
        "version": 1,
        "time": {"from": "now-30m", "to": "now"},
        "timepicker": {"refresh_intervals": ["5s", "10s", "30s", "1m", "5m"]},
        "templating": {"list": variables or []},
        "annotations": {"list": []},
        "links": [{"type": "dashboards", "tags": ["streamrec"], "asDropdown": False, "title": "streamrec"}],
        "panels": panels,
    }


# ---------------------------------------------------------------------------------------------------------------
# Dashboards


def pipeline() -> dict[str, Any]:
    s = "streamrec_stream_"
    sc = 'scenario=~"$scenario"'
    rows = [
        Row("Events", [
            Panel("Events in by type (events/s)", [
                Q(f"sum by (type) (rate({s}events_total{{{sc}}}[$__rate_interval]))", "{{type}}")], unit="ops",
                description="Input events accepted by the parser (bad input is dead-lettered instead)"),
            Panel("Events in by scenario (events/s)", [
                Q(f"sum by (scenario) (rate({s}events_total{{{sc}}}[$__rate_interval]))", "{{scenario}}")],
                unit="ops"),
            Panel("Samples and targets out (/s)", [
                Q(f"sum(rate({s}samples_total[$__rate_interval]))", "samples"),
                Q(f"sum(rate({s}targets_per_sample_sum[$__rate_interval]))", "targets (labeled impressions)"),
                Q(f"sum(rate({s}user_state_published_total[$__rate_interval]))", "user states")], unit="ops"),
            Panel("Targets per sample (mean)", [
                Q(f"sum(rate({s}targets_per_sample_sum[$__rate_interval])) / "
                  f"sum(rate({s}targets_per_sample_count[$__rate_interval]))", "mean")], decimals=1),
        ]),
        Row("Join", [
            Panel("Released impressions: positives / negatives by task (/s)", [
                Q(f"sum by (task, label) (rate({s}labels_released_total[$__rate_interval]))", "{{task}} {{label}}")],
                unit="ops"),
            Panel("Positive rate by task", [
                Q(f'sum by (task) (rate({s}labels_released_total{{label="positive"}}[$__rate_interval])) / '
                  f"sum by (task) (rate({s}labels_released_total[$__rate_interval]))", "{{task}}")],
                unit="percentunit"),
            Panel("Duplicates, late, orphans, joined feedback (/s)", [
                Q(f"sum(rate({s}duplicates_total[$__rate_interval]))", "duplicates"),
                Q(f"sum by (kind) (rate({s}late_total[$__rate_interval]))", "late {{kind}}"),
                Q(f"sum(rate({s}orphans_total[$__rate_interval]))", "orphans"),
                Q(f"sum(rate({s}joined_feedback_total[$__rate_interval]))", "joined feedback")], unit="ops"),
            Panel("Dead-lettered by reason (total)", [
                Q(f"sum by (reason) ({s}deadletter_total)", "{{reason}}")],
                description="Bad input (parse errors), late impressions, orphan feedback and late-positive "
                            "corrections written to the deadletter topic"),
        ]),
        Row("Lag and latency", [
            Panel("Watermark lag by partition (s)", [
                Q(f"max by (partition) ({s}watermark_lag_seconds)", "partition {{partition}}")], unit="s", w=8,
                description="Wall clock minus the partition's event-time watermark (a historical replay shows "
                            "the age of its data)"),
            Panel("Consumer lag (records)", [
                Q(f"sum by (topic) ({s}consumer_lag_records)", "worker on {{topic}}"),
                Q("sum by (job) (streamrec_trainer_consumer_lag_records)", "{{job}} on samples")], w=8),
            Panel("Batch processing time p50 / p99", [
                Q(f"histogram_quantile(0.5, sum by (le) (rate({s}batch_processing_seconds_bucket[$__rate_interval])))",
                  "p50"),
                Q(f"histogram_quantile(0.99, sum by (le) (rate({s}batch_processing_seconds_bucket[$__rate_interval])))",
                  "p99")], unit="s", w=8),
        ]),
    ]
    variables = [_variable("scenario", f"label_values({s}events_total, scenario)", "Scenario")]
    return dashboard("streamrec-pipeline", "streamrec / pipeline",
                     "Streaming worker: events in, join outcomes, bad input, lag (streaming/metrics.py)", rows,
                     variables)


def students(expr: str) -> str:
    """``expr`` per Prometheus job, kept for the trainers that are distillation students (they join teacher records,
    or count them missing); else one series ``job="no student"`` at 0, so the panel says why it is flat."""
    t = "streamrec_trainer_"
    role = f"sum by (job) ({t}teacher_records_joined_total + {t}teacher_records_missing_total) > 0"
    return f'max by (job) ({expr}) and on (job) ({role}) or on () label_replace(vector(0), "job", "no student", "", "")'


def training() -> dict[str, Any]:
    t = "streamrec_trainer_"
    # Quality series: scope="overall" (every target once; no scenario label) or scope="scenario" (one per scenario
    # name; scenario names are open strings, so "all" is a scenario like any other).
    # Every trainer is its own Prometheus job (distillation: the teacher is job trainer, each student its own job):
    # the rows above Distillation show the trainers picked by $job, each series named by its job.
    j = 'job=~"$job"'
    overall = f'{j},scope="overall",task=~"$task",window="$window"'
    sel = f'{j},scope="scenario",scenario=~"$scenario",task=~"$task",window="$window"'

    def quality(name: str) -> list[Q]:
        return [Q(f"{t}{name}{{{overall}}}", "{{job}} · overall · {{task}}"),
                Q(f"{t}{name}{{{sel}}}", "{{job}} · scenario {{scenario}} · {{task}}")]

    rows = [
        Row("Throughput", [
            Panel("Samples and impressions trained (/s)", [
                Q(f"sum by (job) (rate({t}samples_total{{{j}}}[$__rate_interval]))", "{{job}} samples/s"),
                Q(f"sum by (job) (rate({t}impressions_total{{{j}}}[$__rate_interval]))", "{{job}} impressions/s")],
                unit="ops"),
            Panel("Loss", [
                Q(f"{t}loss{{{j}}}", "{{job}} total"),
                Q(f"{t}task_loss{{{j}}}", "{{job}} {{task}}")]),
            Panel("Time waiting for data vs computing", [
                Q(f"rate({t}data_wait_seconds_total{{{j}}}[$__rate_interval])", "{{job}} data wait"),
                Q(f"rate({t}compute_seconds_total{{{j}}}[$__rate_interval])", "{{job}} compute")], unit="percentunit"),
            Panel("Skipped records by reason (/s)", [
                Q(f"sum by (job, reason) (rate({t}skipped_total{{{j}}}[$__rate_interval])) or vector(0)",
                  "{{job}} {{reason}}")], unit="ops"),
        ]),
        Row("Progressive validation (scored before training)", [
            Panel("AUC overall and per scenario × task", quality("auc"), decimals=3),
            Panel("GAUC overall and per scenario × task", quality("gauc"), decimals=3),
            Panel("Log loss overall and per scenario × task", quality("logloss"), decimals=3),
            Panel("Calibration (predicted / observed)", quality("calibration"), decimals=2),
        ]),
        Row("Snapshots", [
            Panel("Snapshot version", [Q(f"{t}snapshot_version{{{j}}}", "{{job}}")], kind="stat", w=6, h=5),
            Panel("Seconds since last snapshot", [Q(f"{t}seconds_since_last_snapshot{{{j}}}", "{{job}}")], kind="stat",
                  unit="s", w=6, h=5),
            Panel("Snapshot cadence (snapshots/min)", [
                Q(f"rate({t}snapshots_total{{{j}}}[$__rate_interval]) * 60", "{{job}} snapshots/min")], w=12, h=5),
            Panel("Event-time lag of the trained model (s)", [
                Q(f"{t}max_event_ts_lag_seconds{{{j}}}", "{{job}}: wall clock − max event ts")], unit="s",
                description="Wall clock minus the largest event time trained on: the age of the data in event time "
                            "(a replayed historical log shows its age in years; serving's data freshness is the "
                            "wall-clock measure)"),
            Panel("Consumer lag on samples (records)", [Q(f"{t}consumer_lag_records{{{j}}}", "{{job}}")]),
        ]),
        Row("Distillation (teacher → students, one Prometheus job per model)", [
            Panel("Teacher–student disagreement |p_t − p_s|", [
                Q(students(f"{t}teacher_agreement"), "{{job}}")], w=8, decimals=3,
                description="Per student trainer (python -m trainer --distill-from): mean absolute difference of "
                            "the teacher's and the student's probabilities over the last batch's joined targets, "
                            "the student scored before its step (lower = closer). \"no student\" = 0: no trainer "
                            "joins teacher records"),
            Panel("Teacher staleness (s)", [
                Q(students(f"{t}teacher_staleness_seconds"), "{{job}}")], unit="s", w=8,
                description="Per student: its wall clock minus the snapshot time of the newest teacher version in "
                            "its last batch with teacher records (0 before the teacher's first snapshot)"),
            Panel("Teacher versions behind", [
                Q(students(f"{t}teacher_versions_behind"), "{{job}}")], w=8, decimals=0,
                description="Per student: newest teacher snapshot version seen minus the oldest version in its "
                            "last batch's teacher records"),
            Panel("Teacher records by model (/s)", [
                Q(f"sum by (job) (rate({t}teacher_records_published_total[$__rate_interval]))", "{{job}} published"),
                Q(f"sum by (job) (rate({t}teacher_records_joined_total[$__rate_interval]))", "{{job}} joined"),
                Q(f"sum by (job) (rate({t}teacher_records_missing_total[$__rate_interval]))", "{{job}} missing"),
                Q(f"sum by (job) (rate({t}teacher_records_invalid_total[$__rate_interval]))", "{{job}} invalid")],
                unit="ops",
                description="The teacher publishes one record per trained sample; a student trains each sample "
                            "with its record (joined) or on labels only (missing: late, evicted or absent); "
                            "invalid = undecodable records dropped"),
            Panel("Share of student samples trained with their teacher record", [
                Q(students(f"sum by (job) (rate({t}teacher_records_joined_total[$__rate_interval])) / "
                           f"sum by (job) (rate({t}teacher_records_joined_total[$__rate_interval]) + "
                           f"rate({t}teacher_records_missing_total[$__rate_interval]))"), "{{job}}")],
                unit="percentunit", decimals=3),
            Panel("Progressive AUC by model (overall)", [
                Q(f"max by (job, task) ({t}auc{{{overall}}})", "{{job}} · {{task}}")], decimals=3,
                description="Each trainer's progressive AUC (scored before training), one series per Prometheus "
                            "job: the teacher is job trainer, students their own jobs"),
            Panel("Progressive GAUC by model (overall)", [
                Q(f"max by (job, task) ({t}gauc{{{overall}}})", "{{job}} · {{task}}")], decimals=3,
                description="Each trainer's progressive GAUC (per-user AUC, impression-weighted), one series per job"),
        ]),
    ]
    variables = [
        _variable("job", f"label_values({t}samples_total, job)", "Trainer (job)"),
        _variable("scenario", f"label_values({t}auc, scenario)", "Scenario"),
        _variable("task", f"label_values({t}auc, task)", "Task"),
        {**_variable("window", f"label_values({t}auc, window)", "Window", multi=False),
         "current": {"selected": True, "text": "window", "value": "window"}},
    ]
    return dashboard("streamrec-training", "streamrec / training",
                     "Continual trainer: throughput, loss, progressive AUC/GAUC, snapshots, distillation (trainer/metrics.py)",
                     rows, variables)


def serving() -> dict[str, Any]:
    v = "streamrec_serving_"
    rows = [
        Row("Traffic", [
            Panel("Requests by endpoint (/s)", [
                Q(f"sum by (endpoint) (rate({v}requests_total[$__rate_interval]))", "{{endpoint}}")], unit="reqps"),
            Panel("Latency p50 / p99 of /v1/score", [
                Q(f'histogram_quantile(0.5, sum by (le) (rate({v}request_duration_seconds_bucket{{endpoint="$endpoint"}}'
                  f"[$__rate_interval])))", "p50"),
                Q(f'histogram_quantile(0.99, sum by (le) (rate({v}request_duration_seconds_bucket{{endpoint="$endpoint"}}'
                  f"[$__rate_interval])))", "p99")], unit="s"),
            Panel("Errors (non-2xx /s) by status", [
                Q(f'sum by (status) (rate({v}requests_total{{status!~"2.."}}[$__rate_interval])) or vector(0)',
                  "{{status}}")], unit="reqps"),
            Panel("Candidates per request (mean)", [
                Q(f"sum(rate({v}candidates_per_request_sum[$__rate_interval])) / "
                  f"sum(rate({v}candidates_per_request_count[$__rate_interval]))", "mean")], decimals=0),
        ]),
        Row("Model", [
            Panel("Model version served", [Q(f"{v}model_version", "{{model}}")], kind="stat", w=6, h=5,
                  description="One value per served model (label model: 'default' with one model; with "
                              "--serve, e.g. student and teacher)"),
            Panel("Data freshness (newest sample produced → served)", [
                Q(f"{v}data_freshness_seconds", "{{model}}")], kind="stat", unit="s", w=6, h=5,
                description="Wall seconds from the newest samples record the served model was trained on being "
                            "produced to that model starting to serve (fixed per served model)"),
            Panel("Model age (now − snapshot written)", [Q(f"{v}model_age_seconds", "{{model}}")],
                  kind="stat", unit="s", w=6, h=5,
                  description="Wall seconds since the trainer wrote the served snapshot (grows until the next swap)"),
            Panel("Swaps and rejected snapshots", [
                Q(f"increase({v}swaps_total[$__rate_interval])", "{{model}} swapped"),
                Q(f"sum by (model) (increase({v}swap_failures_total[$__rate_interval])) or vector(0)",
                  "{{model}} rejected")], w=6, h=5),
            Panel("Model age and data freshness over time", [
                Q(f"{v}model_age_seconds", "{{model}} model age"),
                Q(f"{v}data_freshness_seconds", "{{model}} data freshness"),
                Q(f"{v}since_last_update_seconds", "{{model}} since update"),
                Q("streamrec_trainer_seconds_since_last_snapshot", "trainer job {{job}}: since snapshot")], unit="s",
                  w=24),
        ]),
        Row("User state", [
            Panel("Users in the serving replica", [Q(f"{v}user_states", "users")]),
            Panel("User-state updates (/s) and cold starts (/s)", [
                Q(f"rate({v}user_state_updates_total[$__rate_interval])", "updates"),
                Q(f"rate({v}cold_start_requests_total[$__rate_interval])", "cold starts")], unit="ops"),
        ], collapsed=True),
    ]
    variables = [
        {**_variable("endpoint", f"label_values({v}request_duration_seconds_bucket, endpoint)", "Endpoint", multi=False),
         "current": {"selected": True, "text": "/v1/score", "value": "/v1/score"}},
    ]
    return dashboard("streamrec-serving", "streamrec / serving",
                     "Serving worker: traffic, latency, errors, model version and freshness (serving/metrics.py)",
                     rows, variables)


DASHBOARDS = {"pipeline": pipeline, "training": training, "serving": serving}


def render() -> dict[str, str]:
    """{file name: JSON text} of every dashboard."""
    return {f"{name}.json": json.dumps(fn(), indent=2, ensure_ascii=False) + "\n" for name, fn in DASHBOARDS.items()}


def main() -> int:
    OUT_DIR.mkdir(parents=True, exist_ok=True)
    for name, text in render().items():
        (OUT_DIR / name).write_text(text)
        print(f"wrote {OUT_DIR / name}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
