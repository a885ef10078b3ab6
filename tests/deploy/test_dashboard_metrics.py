"""The committed dashboards and alert rules query metrics the services really export, with the right meaning:
serving's freshness panel and the stale-model alert use wall-clock quantities (not event time), and the training
quality panels keep the overall aggregate (scope="overall") apart from the open-keyed scenarios."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import yaml
from prometheus_client import CollectorRegistry

from serving.metrics import ServingMetrics
from trainer.metrics import TrainerMetrics

REPO = Path(__file__).resolve().parents[2]
DASHBOARDS = REPO / "deploy" / "grafana" / "dashboards"
ALERTS = REPO / "deploy" / "prometheus" / "alerts.yml"
NAME = re.compile(r"streamrec_(?:serving|trainer)_\w+")


def panels(name: str) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = []

    def walk(ps: list[dict[str, Any]]) -> None:
        for p in ps:
            if p.get("type") == "row":
                walk(p.get("panels") or [])
            else:
                out.append(p)

    walk(json.loads((DASHBOARDS / f"{name}.json").read_text())["panels"])
    return out


def exprs(*names: str) -> list[str]:
    return [t["expr"] for n in names for p in panels(n) for t in p["targets"]]


def exported() -> set[str]:
    """Every sample name the trainer's and serving's metric classes can export."""
    reg = CollectorRegistry()
    TrainerMetrics(reg)
    ServingMetrics(reg)
    names: set[str] = set()
    for fam in reg.collect():
        names |= {fam.name, *(fam.name + s for s in ("_total", "_bucket", "_sum", "_count"))}
    return names


def alert(name: str) -> dict[str, Any]:
    rules = [r for g in yaml.safe_load(ALERTS.read_text())["groups"] for r in g["rules"]]
    return next(r for r in rules if r["alert"] == name)


def test_every_trainer_and_serving_metric_in_dashboards_and_alerts_is_exported() -> None:
    known = exported()
    used = {n for e in [*exprs("training", "serving", "pipeline"), ALERTS.read_text()] for n in NAME.findall(e)}
    assert used and not used - known, sorted(used - known)


def test_serving_freshness_panel_uses_data_freshness_and_model_age_is_wall_clock() -> None:
    serving = panels("serving")
    fresh = [p for p in serving if "freshness" in p["title"].lower() and p["type"] == "stat"]
    assert len(fresh) == 1
    assert [t["expr"] for t in fresh[0]["targets"]] == ["streamrec_serving_data_freshness_seconds"]
    age = [p for p in serving if p["title"].lower().startswith("model age") and p["type"] == "stat"]
    assert [t["expr"] for t in age[0]["targets"]] == ["streamrec_serving_model_age_seconds"]
    assert not any("event" in e or "model_freshness" in e for e in exprs("serving"))


def test_stale_model_alert_uses_model_age() -> None:
    expr = alert("StreamrecModelStale")["expr"]
    assert "streamrec_serving_model_age_seconds" in expr
    assert "since_last_update" not in expr and "event" not in expr


def test_training_quality_queries_keep_overall_apart_from_scenarios() -> None:
    quality = [e for e in exprs("training") if re.match(r"streamrec_trainer_(auc|gauc|logloss|calibration)\{", e)]
    assert len(quality) == 8  # four panels, each an overall and a per-scenario query
    for e in quality:
        assert ('scope="overall"' in e) != ('scope="scenario"' in e), e
        assert ("scenario=~" in e) == ('scope="scenario"' in e), e
    assert "scope" in alert("StreamrecAUCDrop")["annotations"]["summary"]


def row_panels(name: str, title_prefix: str) -> list[dict[str, Any]]:
    """The panels of the dashboard row whose title starts with ``title_prefix`` (expanded or collapsed)."""
    top = json.loads((DASHBOARDS / f"{name}.json").read_text())["panels"]
    rows = [i for i, p in enumerate(top) if p["type"] == "row" and p["title"].startswith(title_prefix)]
    assert len(rows) == 1, [p["title"] for p in top if p["type"] == "row"]
    row = top[rows[0]]
    if row.get("collapsed"):
        return list(row["panels"])
    nxt = next((i for i in range(rows[0] + 1, len(top)) if top[i]["type"] == "row"), len(top))
    return top[rows[0] + 1:nxt]


def test_training_distillation_row_shows_agreement_staleness_joins_and_each_models_quality() -> None:
    """Issue 17's observability: every distillation metric on the training dashboard, from the trainer's exports,
    per Prometheus job (the teacher trainer and each student trainer are separate jobs)."""
    distill = row_panels("training", "Distillation")
    targets = [t for p in distill for t in p["targets"]]
    used = {n for t in targets for n in NAME.findall(t["expr"])}
    t = "streamrec_trainer_"
    wanted = {t + n for n in ("teacher_agreement", "teacher_staleness_seconds", "teacher_versions_behind",
                              "teacher_records_published_total", "teacher_records_joined_total",
                              "teacher_records_missing_total", "teacher_records_invalid_total", "auc", "gauc")}
    assert wanted <= used, sorted(wanted - used)
    assert used <= exported(), sorted(used - exported())
    for tgt in targets:  # one series per model: grouped by job and named by it
        assert "by (job" in tgt["expr"], tgt["expr"]
        assert "{{job}}" in tgt["legendFormat"], tgt
    quality = [tgt["expr"] for tgt in targets if re.search(r"streamrec_trainer_g?auc\{", tgt["expr"])]
    assert len(quality) == 2 and all('scope="overall"' in e and "scenario=~" not in e for e in quality), quality
    # The student-only gauges are kept for trainers that join teacher records (a teacher exports them at 0).
    for name in ("teacher_agreement", "teacher_staleness_seconds", "teacher_versions_behind"):
        expr = next(tgt["expr"] for tgt in targets if t + name in tgt["expr"])
        assert f"and on (job) (sum by (job) ({t}teacher_records_joined_total" in expr, expr


def test_training_panels_tell_the_trainers_apart() -> None:
    """With a teacher and students running, every trainer series above the Distillation row is picked by $job and
    named by its job (not two identical legends), and serving's model panels name the served model."""
    dash = json.loads((DASHBOARDS / "training.json").read_text())
    assert "job" in [v["name"] for v in dash["templating"]["list"]]
    distill = {p["id"] for p in row_panels("training", "Distillation")}
    targets = [t for p in panels("training") if p["id"] not in distill for t in p["targets"]]
    assert len(targets) >= 15
    for t in targets:
        assert 'job=~"$job"' in t["expr"] and "{{job}}" in t["legendFormat"], t
    model = [t for p in panels("serving") for t in p["targets"] if "streamrec_serving_model_" in t["expr"]]
    assert model and all("{{model}}" in t["legendFormat"] for t in model), model
