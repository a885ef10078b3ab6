"""docs/results.md, generated from the committed result JSON under docs/results/: every number beside its command.

Sources: every ``docs/results/<name>/metrics.json`` written by ``python -m trainer.evaluate --out ...``. Each
report's command comes from the JSON's ``command`` key when it has one, else from the ``Command:`` line of the
``summary.md`` written beside it; its preset from ``config.preset`` or ``config.ranker.preset``, else a name built
from the model shape in ``config`` (reports written before named presets existed). Metrics may be in either shape
``trainer.evaluate`` has written: ``metrics[model][task] = {overall, scenarios: {name: ...}}``, or the older
``metrics[model][task] = {"all": ..., <scenario>: ...}`` where ``all`` was the overall aggregate.

    python -m deploy results            # rewrite docs/results.md
    python -m deploy results --check    # exit 1 if docs/results.md differs from what the JSON gives

Example:
    >>> split_metrics({"all": {"auc": 0.7}, "drama": {"auc": 0.6}})
    ({'auc': 0.7}, {'drama': {'auc': 0.6}})
    >>> split_metrics({"overall": {"auc": 0.7}, "scenarios": {"all": {"auc": 0.6}}})
    ({'auc': 0.7}, {'all': {'auc': 0.6}})
"""

from __future__ import annotations

import argparse
import json
import math
import re
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
RESULTS_DIR = REPO / "docs" / "results"
RESULTS_MD = REPO / "docs" / "results.md"
_COMMAND_LINE = re.compile(r"^Command: `(?P<cmd>[^`]+)`\s*$", re.MULTILINE)

Scores = dict[str, float]


class ResultsError(ValueError):
    """A result file that cannot be published: unreadable, unknown shape, or no command to reproduce it."""


@dataclass(frozen=True)
class EvalReport:
    """One published ``trainer.evaluate`` report.

    ``overall[model][task]`` and ``scenarios[model][task][scenario]`` are metric dicts (auc, gauc, logloss,
    calibration, count, ...) with AUC/GAUC as fractions.
    """

    path: Path  # metrics.json, relative to the repository
    command: str
    preset: str
    models: tuple[str, ...]
    tasks: tuple[str, ...]
    dataset: dict[str, Any]
    overall: dict[str, dict[str, Scores]]
    scenarios: dict[str, dict[str, dict[str, Scores]]]


def split_metrics(per_task: dict[str, Any]) -> tuple[Scores, dict[str, Scores]]:
    """``(overall, {scenario: scores})`` from one model × task entry, in either shape (see the module docstring)."""
    if "overall" in per_task and isinstance(per_task.get("scenarios"), dict):
        return per_task["overall"], dict(per_task["scenarios"])
    if "all" in per_task:
        return per_task["all"], {k: v for k, v in per_task.items() if k != "all"}
    raise ResultsError(f"metrics entry has neither 'overall'/'scenarios' nor 'all': keys {sorted(per_task)}")


def preset_name(config: dict[str, Any]) -> str:
    """The preset a report was made with: its recorded name, or one built from the model shape in its config."""
    ranker = config.get("ranker") or {}
    for name in (config.get("preset"), ranker.get("preset")):
        if name:
            return str(name)
    dlrm = config.get("dlrm") or {}
    cowatch = f"co-watch {ranker.get('cowatch_dim')}" if ranker.get("cowatch") else "no co-watch"
    return (f"unnamed (from the config): ranker d_model={ranker.get('d_model')}, num_blocks={ranker.get('num_blocks')}, "
            f"target_layers={ranker.get('target_layers')}, heads {ranker.get('q_heads')}:{ranker.get('kv_heads')}, "
            f"{cowatch}; dlrm embed_dim={dlrm.get('embed_dim')}; max_history={config.get('max_history')}, "
            f"batch_samples={config.get('batch_samples')}, seed={config.get('seed')}")


def _command(data: dict[str, Any], path: Path) -> str:
    if data.get("command"):
        return str(data["command"])
    summary = path.with_name("summary.md")
    if summary.exists():
        m = _COMMAND_LINE.search(summary.read_text(encoding="utf-8"))
        if m:
            return m.group("cmd")
    raise ResultsError(f"{path}: no 'command' key and no 'Command:' line in {summary.name}: nothing reproduces it")


def load_eval(path: Path, root: Path = REPO) -> EvalReport:
    """Read one ``metrics.json`` written by ``python -m trainer.evaluate``."""
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as e:
        raise ResultsError(f"{path}: {e}") from e
    config = data.get("config") or {}
    metrics = data.get("metrics")
    if not isinstance(metrics, dict) or not metrics:
        raise ResultsError(f"{path}: no 'metrics'")
    models = tuple(m for m in config.get("models", metrics) if m in metrics)
    tasks = tuple(metrics[models[0]])
    overall: dict[str, dict[str, Scores]] = {}
    scenarios: dict[str, dict[str, dict[str, Scores]]] = {}
    for model in models:
        for task in tasks:
            o, s = split_metrics(metrics[model][task])
            overall.setdefault(model, {})[task] = o
            scenarios.setdefault(model, {})[task] = s
    rel = path.resolve().relative_to(root.resolve()) if path.resolve().is_relative_to(root.resolve()) else path
    return EvalReport(rel, _command(data, path), preset_name(config), models, tasks, data.get("dataset") or {},
                      overall, scenarios)


def _pct(x: float | None) -> str:
    return "n/a" if x is None or (isinstance(x, float) and math.isnan(x)) else f"{100 * x:.2f}"


def _num(x: float | None, digits: int) -> str:
    return "n/a" if x is None or (isinstance(x, float) and math.isnan(x)) else f"{x:.{digits}f}"


def _cell(text: str) -> str:
    return text.replace("|", "\\|")


def render_eval(rep: EvalReport) -> list[str]:
    """The markdown section of one report; links are relative to docs/ (where results.md lives)."""
    where = rep.path.parent
    rel = Path("results") / where.relative_to("docs/results") if where.parts[:2] == ("docs", "results") else where
    repro = f"Command: `{rep.command}` · preset: `{rep.preset}`"
    d = rep.dataset
    lines = [f"## Offline progressive evaluation — `{rel.as_posix()}`", "",
             f"Source: [`{rep.path.as_posix()}`]({(rel / rep.path.name).as_posix()}) (full report: "
             f"[`summary.md`]({(rel / 'summary.md').as_posix()})). Protocol: [evaluation.md](evaluation.md).", ""]
    if d:
        lines += [repro, "", "| data | value |", "|---|---|"]
        for key in ("events", "impression", "feedback", "samples", "targets", "users"):
            if key in d:
                lines.append(f"| {key} | {d[key]} |")
        for task, rate in sorted((d.get("label_rate") or {}).items()):
            lines.append(f"| label rate {_cell(task)} | {rate:.4f} |")
        lines.append("")
    lines += [repro, "", "| model | task | AUC % | GAUC % | log loss | calibration | targets |",
              "|---|---|---|---|---|---|---|"]
    for task in rep.tasks:
        for model in rep.models:
            m = rep.overall[model][task]
            lines.append(f"| {_cell(model)} | {_cell(task)} | {_pct(m.get('auc'))} | {_pct(m.get('gauc'))} | "
                         f"{_num(m.get('logloss'), 4)} | {_num(m.get('calibration'), 3)} | {int(m.get('count', 0))} |")
    if "ranker" in rep.models and "dlrm" in rep.models:
        lines += ["", repro, "", "| Ranker − DLRM (pt) | AUC | GAUC |", "|---|---|---|"]
        for task in rep.tasks:
            a, b = rep.overall["ranker"][task], rep.overall["dlrm"][task]
            lines.append(f"| {_cell(task)} | {100 * (a['auc'] - b['auc']):+.2f} | {100 * (a['gauc'] - b['gauc']):+.2f} |")
    for task in rep.tasks:
        names = list(rep.scenarios[rep.models[0]][task])
        if not names:
            continue
        lines += ["", f"### {_cell(task)} per scenario", "", repro, "",
                  "| scenario | targets | " + " | ".join(f"{_cell(m)} AUC % | {_cell(m)} GAUC %" for m in rep.models)
                  + " |", "|---|---|" + "---|---|" * len(rep.models)]
        for s in names:
            first = rep.scenarios[rep.models[0]][task][s]
            cells = [_cell(s), str(int(first.get("count", 0)))]
            for model in rep.models:
                m = rep.scenarios[model][task].get(s, {})
                cells += [_pct(m.get("auc")), _pct(m.get("gauc"))]
            lines.append("| " + " | ".join(cells) + " |")
    return lines


def render(reports: list[EvalReport]) -> str:
    """The whole of docs/results.md."""
    lines = ["# Results", "",
             "<!-- Generated by `python -m deploy results` from docs/results/*/metrics.json; do not edit by hand. -->",
             "",
             "Every number here comes from a committed result file under [`results/`](results/) and is reproduced by "
             "the command beside it (run from the repository root; the report lands in the command's `--out`), made "
             "with the preset named beside it. AUC and GAUC are progressive ([glossary](glossary.md#progressive-"
             "validation)), in %. Benchmark measurements have no committed result file yet; their history is in "
             "[CHANGELOG.md](../CHANGELOG.md). Terms: [glossary](glossary.md).", ""]
    if not reports:
        lines += ["No result files are committed.", ""]
    for rep in reports:
        lines += [*render_eval(rep), ""]
    return "\n".join(lines).rstrip("\n") + "\n"


def build(results_dir: Path = RESULTS_DIR, root: Path = REPO) -> str:
    """Render docs/results.md from every ``metrics.json`` under ``results_dir`` (sorted by path)."""
    reports = [load_eval(p, root) for p in sorted(results_dir.glob("*/metrics.json"))]
    return render(reports)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m deploy results",
                                description="Write docs/results.md from the committed result JSON under docs/results/ "
                                            "(every number beside its command and preset).")
    p.add_argument("--results-dir", type=Path, default=RESULTS_DIR, help="directory of <name>/metrics.json reports")
    p.add_argument("--out", type=Path, default=RESULTS_MD, help="the markdown file to write")
    p.add_argument("--check", action="store_true", help="write nothing; exit 1 if --out differs from the JSON's rendering")
    ns = p.parse_args(argv)
    try:
        text = build(ns.results_dir)
    except ResultsError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    if ns.check:
        current = ns.out.read_text(encoding="utf-8") if ns.out.exists() else ""
        if current != text:
            print(f"{ns.out} is out of date: run python -m deploy results", file=sys.stderr)
            return 1
        print(f"{ns.out} is up to date")
        return 0
    ns.out.write_text(text, encoding="utf-8")
    print(f"wrote {ns.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
