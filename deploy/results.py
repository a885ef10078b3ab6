"""docs/results.md, generated from the committed result JSON under docs/results/: every number beside its command.

Sources: every ``docs/results/<name>/metrics.json`` written by ``python -m trainer.evaluate --out ...``, and
``docs/results/quality.json``, the records of ``python -m trainer.quality`` (``make eval``): per suite and dataset
the main table (model/preset × task: AUC and GAUC as mean ± half range over seeds, wall s, targets/s), GAUC per
scenario, unified vs per-scenario models, the scaling table and plot (``docs/results/quality_scaling.png``, quality
vs FLOPs per target), the ablation differences to the baseline (paired by seed), and the distillation suite (the
teacher, and per student kind each variant with its difference to the student trained without the teacher), each
table under its commands and presets; and ``docs/results/distill_serving_bench.json``, the serving latency of the
distillation student vs its teachers (``python -m benchmarks.bench_distill_serving``). Each
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


def render(reports: list[EvalReport], quality: list[Record] | None = None, plot: str | None = None,
           bench: dict[str, Any] | None = None) -> str:
    """The whole of docs/results.md: every eval report, then the quality suites' sections (when there are
    records; ``plot`` = the scaling plot's link), then distillation (its suite's records and ``bench``, the
    distillation serving benchmark's report, when either exists)."""
    lines = ["# Results", "",
             "<!-- Generated by `python -m deploy results` from docs/results/*/metrics.json and "
             "docs/results/quality.json; do not edit by hand. -->",
             "",
             "Every number here comes from a committed result file under [`results/`](results/) and is reproduced by "
             "the command beside it (run from the repository root; the report lands in the command's `--out`), made "
             "with the preset named beside it. AUC and GAUC are progressive ([glossary](glossary.md#progressive-"
             "validation)), in %. " + ("Of the benchmarks, only the distillation serving latency has a committed "
                                       "result file (below); the others' history is in "
                                       if bench else "Benchmark measurements have no committed result file yet; "
                                       "their history is in ")
             + "[CHANGELOG.md](../CHANGELOG.md). Terms: [glossary](glossary.md).", ""]
    quality = quality or []
    if not reports and not quality and not bench:
        lines += ["No result files are committed.", ""]
    for rep in reports:
        lines += [*render_eval(rep), ""]
    if any(r["suite"] in QUALITY_SUITES for r in quality):
        lines += render_quality(quality, plot)
    distill = [r for r in quality if r["suite"] == DISTILL_SUITE]
    if distill or bench:
        lines += render_distillation(distill, bench)
    return "\n".join(lines).rstrip("\n") + "\n"


def build(results_dir: Path = RESULTS_DIR, root: Path = REPO) -> str:
    """Render docs/results.md from every ``metrics.json`` under ``results_dir`` (sorted by path) and from
    ``results_dir/quality.json`` when it exists (the scaling plot is linked as ``results/quality_scaling.png``;
    :func:`write_scaling_plot` writes it)."""
    reports = [load_eval(p, root) for p in sorted(results_dir.glob("*/metrics.json"))]
    qpath = results_dir / QUALITY_JSON
    quality = load_quality(qpath) if qpath.exists() else []
    plot = f"results/{SCALING_PNG}" if scaling_plottable(quality) else None
    bpath = results_dir / SERVING_BENCH_JSON
    return render(reports, quality, plot, load_serving_bench(bpath) if bpath.exists() else None)


# ---------------------------------------------------------------------------------------------- quality suites
QUALITY_JSON = "quality.json"
SCALING_PNG = "quality_scaling.png"
QUALITY_SUITES = ("main", "unified", "scaling", "ablations")  # rendered under "Quality suites"
DISTILL_SUITE = "distill"  # rendered under "Distillation", with the serving benchmark
SERVING_BENCH_JSON = "distill_serving_bench.json"
_RECORD_KEYS = ("suite", "dataset", "preset", "model", "variant", "seed", "scenario", "task", "auc", "gauc",
                "n_targets")
OVERALL = "*"
Record = dict[str, Any]


def load_quality(path: Path) -> list[Record]:
    """The records of ``docs/results/quality.json`` (written by ``python -m trainer.quality``)."""
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as e:
        raise ResultsError(f"{path}: {e}") from e
    if not isinstance(data, list):
        raise ResultsError(f"{path}: expected a list of records")
    for i, r in enumerate(data):
        missing = [k for k in _RECORD_KEYS if not isinstance(r, dict) or k not in r]
        if missing:
            raise ResultsError(f"{path}: record {i} lacks {missing}")
        if not r.get("command"):
            raise ResultsError(f"{path}: record {i} has no 'command': nothing reproduces it")
    return data


def mean_spread(values: list[float | None]) -> tuple[float, float] | None:
    """(mean, half the range) of the values that exist; None when none does.

    Example:
        >>> [round(x, 4) for x in mean_spread([0.70, 0.74, None])]
        [0.72, 0.02]
    """
    xs = [float(v) for v in values if v is not None and math.isfinite(float(v))]
    if not xs:
        return None
    return sum(xs) / len(xs), (max(xs) - min(xs)) / 2


def _pm(values: list[float | None], scale: float = 100.0, sign: bool = False) -> str:
    ms = mean_spread(values)
    if ms is None:
        return "n/a"
    return f"{scale * ms[0]:{'+' if sign else ''}.2f} ± {scale * ms[1]:.2f}"


def _mean(values: list[Any], digits: int) -> str:
    ms = mean_spread(values)
    return "n/a" if ms is None else f"{ms[0]:,.{digits}f}"


def _repro(recs: list[Record], presets: str | None = None) -> str:
    cmds = sorted({str(r["command"]) for r in recs})
    names = presets if presets is not None else ", ".join(sorted({r["preset"] for r in recs if r["preset"]}))
    return "Command: " + "; ".join(f"`{c}`" for c in cmds) + f" · preset: `{names or 'none (no neural model)'}`"


def _runs(recs: list[Record]) -> dict[tuple[str, str, str], list[Record]]:
    """(model, preset, variant) → records, in first-seen order."""
    out: dict[tuple[str, str, str], list[Record]] = {}
    for r in recs:
        out.setdefault((r["model"], r["preset"], r["variant"]), []).append(r)
    return out


def _label(model: str, preset: str, variant: str = "") -> str:
    return " ".join(x for x in (model, f"({preset})" if preset else "", f"[{variant}]" if variant else "") if x)


def _order(recs: list[Record], field: str, first: tuple[str, ...] = ()) -> list[str]:
    seen = list(dict.fromkeys(r[field] for r in recs))
    return [x for x in first if x in seen] + sorted(x for x in seen if x not in first)


_MODEL_ORDER = ("ranker", "dlrm", "lr", "popularity")
_TASK_ORDER = ("click", "conversion")


def _model_key(run: tuple[str, str, str]) -> tuple[int, tuple[str, str, str]]:
    """Sort key of a (model, preset, variant) run: :data:`_MODEL_ORDER` first, then by name."""
    return (_MODEL_ORDER.index(run[0]) if run[0] in _MODEL_ORDER else len(_MODEL_ORDER), run)


def _sorted_runs(recs: list[Record]) -> list[tuple[tuple[str, str, str], list[Record]]]:
    """:func:`_runs` in :func:`_model_key` order."""
    return sorted(_runs(recs).items(), key=lambda kv: _model_key(kv[0]))


def _seeds(recs: list[Record]) -> str:
    return ", ".join(str(s) for s in sorted({r["seed"] for r in recs}))


def render_main(recs: list[Record], dataset: str) -> list[str]:
    """Per dataset: the overall table (model/preset × task) and a GAUC table per task over scenarios."""
    overall = [r for r in recs if r["scenario"] == OVERALL]
    repro = _repro(recs)
    runs = _sorted_runs(overall)
    lines = [f"### main — `{_cell(dataset)}`", "", repro, "",
             "| model | task | AUC % | GAUC % | seeds | targets | wall s | targets/s |",
             "|---|---|---|---|---|---|---|---|"]
    for task in _order(overall, "task", _TASK_ORDER):
        for (model, preset, variant), rs in runs:
            rt = [r for r in rs if r["task"] == task]
            if rt:
                lines.append(f"| {_cell(_label(model, preset, variant))} | {_cell(task)} | "
                             f"{_pm([r['auc'] for r in rt])} | {_pm([r['gauc'] for r in rt])} | {_seeds(rt)} | "
                             f"{rt[0]['n_targets']} | {_mean([r.get('wall_s') for r in rt], 1)} | "
                             f"{_mean([r.get('targets_per_s') for r in rt], 0)} |")
    lines += render_stream_parts(overall, dataset, repro)
    scen = [r for r in recs if r["scenario"] != OVERALL]
    for task in _order(scen, "task", _TASK_ORDER):
        rt = [r for r in scen if r["task"] == task]
        cols = sorted(_runs(rt), key=_model_key)
        lines += ["", f"#### main — `{_cell(dataset)}` — {_cell(task)} GAUC per scenario", "", repro, "",
                  "| scenario | targets | " + " | ".join(f"{_cell(_label(*c))} GAUC %" for c in cols) + " |",
                  "|---|---|" + "---|" * len(cols)]
        for s in _order(rt, "scenario"):
            rs = [r for r in rt if r["scenario"] == s]
            cells = [_cell(s), str(rs[0]["n_targets"])]
            for c in cols:
                cells.append(_pm([r["gauc"] for r in rs if (r["model"], r["preset"], r["variant"]) == c]))
            lines.append("| " + " | ".join(cells) + " |")
    return lines


def _part(rs: list[Record], i: int, metric: str) -> list[float | None]:
    return [r["stream_parts"][i][metric] for r in rs if len(r.get("stream_parts") or ()) > i]


def render_stream_parts(overall: list[Record], dataset: str, repro: str) -> list[str]:
    """Per task: AUC / GAUC of each run over consecutive equal parts of the stream (records' ``stream_parts``),
    and each other model's difference to ``dlrm`` of the same seed."""
    with_parts = [r for r in overall if r.get("stream_parts")]
    lines: list[str] = []
    for task in _order(with_parts, "task", _TASK_ORDER):
        rt = [r for r in with_parts if r["task"] == task]
        runs = _sorted_runs(rt)
        n = max(len(r["stream_parts"]) for r in rt)
        sizes = [p["n_targets"] for p in rt[0]["stream_parts"]]
        lines += ["", f"#### main — `{_cell(dataset)}` — {_cell(task)} over the stream (AUC % / GAUC % on consecutive "
                  "equal parts of the target stream; Δ: minus `dlrm` of the same seed)", "", repro, "",
                  "| model | seeds | " + " | ".join(f"part {i + 1} ({sizes[i] if i < len(sizes) else '?'} targets)"
                                                   for i in range(n)) + " |", "|---|---|" + "---|" * n]
        dlrm = {r["seed"]: r for r in rt if r["model"] == "dlrm"}
        for (model, preset, variant), rs in runs:
            lines.append(f"| {_cell(_label(model, preset, variant))} | {_seeds(rs)} | " + " | ".join(
                f"{_pm(_part(rs, i, 'auc'))} / {_pm(_part(rs, i, 'gauc'))}" for i in range(n)) + " |")
        for (model, preset, variant), rs in runs:
            mine = [r for r in rs if model != "dlrm" and r["seed"] in dlrm]
            if not mine:
                continue
            theirs = [dlrm[r["seed"]] for r in mine]

            def delta(i: int, metric: str, mine: list[Record] = mine, theirs: list[Record] = theirs) -> str:
                return _pm([None if x is None or y is None else x - y for x, y in
                            zip(_part(mine, i, metric), _part(theirs, i, metric), strict=True)], sign=True)

            lines.append(f"| Δ {_cell(_label(model, preset, variant))} − dlrm | {_seeds(mine)} | " + " | ".join(
                f"{delta(i, 'auc')} / {delta(i, 'gauc')}" for i in range(n)) + " |")
    return lines


def render_unified(recs: list[Record], dataset: str) -> list[str]:
    """Per dataset: unified vs per-scenario models, each scenario (and overall) × task."""
    lines = [f"### unified vs per-scenario — `{_cell(dataset)}`", "", _repro(recs), "",
             "| scenario | task | targets | unified AUC % | unified GAUC % | per-scenario AUC % | per-scenario GAUC % "
             "| per-scenario − unified GAUC pt |", "|---|---|---|---|---|---|---|---|"]
    scen = [OVERALL, *(s for s in _order(recs, "scenario") if s != OVERALL)]
    for s in scen:
        for task in _order(recs, "task", _TASK_ORDER):
            u = [r for r in recs if r["scenario"] == s and r["task"] == task and r["variant"] == "unified"]
            p = [r for r in recs if r["scenario"] == s and r["task"] == task and r["variant"] == "per-scenario"]
            if not (u or p):
                continue
            diff = _paired(p, u, "gauc")
            n = (u or p)[0]["n_targets"]
            lines.append(f"| {'all scenarios' if s == OVERALL else _cell(s)} | {_cell(task)} | {n} | "
                         f"{_pm([r['auc'] for r in u])} | {_pm([r['gauc'] for r in u])} | "
                         f"{_pm([r['auc'] for r in p])} | {_pm([r['gauc'] for r in p])} | {diff} |")
    return lines


def _paired(a: list[Record], b: list[Record], metric: str) -> str:
    """Mean ± half range over seeds of ``a − b``, paired by seed (points)."""
    bs = {r["seed"]: r[metric] for r in b}
    diffs: list[float | None] = [r[metric] - bs[r["seed"]] for r in a
                                 if r["seed"] in bs and r[metric] is not None and bs[r["seed"]] is not None]
    return _pm(diffs, sign=True)


def _scaling_rows(recs: list[Record]) -> list[tuple[str, str, float | None, list[Record]]]:
    """(preset, task, flops per target, records) sorted by FLOPs (presets without FLOPs last)."""
    overall = [r for r in recs if r["scenario"] == OVERALL]
    rows = []
    for (_, preset, _), rs in _runs(overall).items():
        flops = mean_spread([r.get("flops_per_target") for r in rs])
        for task in _order(rs, "task", _TASK_ORDER):
            rows.append((preset, task, None if flops is None else flops[0], [r for r in rs if r["task"] == task]))
    return sorted(rows, key=lambda x: (x[2] is None, x[2] or 0.0, x[0], _TASK_ORDER.index(x[1])
                                       if x[1] in _TASK_ORDER else len(_TASK_ORDER)))


def render_scaling(recs: list[Record], dataset: str, plot: str | None) -> list[str]:
    """Per dataset: quality and cost per preset, sorted by FLOPs per target; the plot when there is one."""
    lines = [f"### scaling — `{_cell(dataset)}`", "", _repro(recs), "",
             "| preset | task | MFLOPs/target | AUC % | GAUC % | seeds | wall s | targets/s |",
             "|---|---|---|---|---|---|---|---|"]
    for preset, task, flops, rs in _scaling_rows(recs):
        lines.append(f"| {_cell(preset)} | {_cell(task)} | {'n/a' if flops is None else f'{flops / 1e6:,.2f}'} | "
                     f"{_pm([r['auc'] for r in rs])} | {_pm([r['gauc'] for r in rs])} | {_seeds(rs)} | "
                     f"{_mean([r.get('wall_s') for r in rs], 1)} | {_mean([r.get('targets_per_s') for r in rs], 0)} |")
    if plot:
        lines += ["", f"![quality vs FLOPs per target]({plot})"]
    return lines


def render_ablations(recs: list[Record], dataset: str) -> list[str]:
    """Per dataset and base preset: each variant's overall metrics and its difference to the baseline (paired by
    seed)."""
    lines: list[str] = []
    for base in _order(recs, "base_preset") if all("base_preset" in r for r in recs) else [""]:
        rb = [r for r in recs if r.get("base_preset", "") == base and r["scenario"] == OVERALL]
        baseline = [r for r in rb if r["variant"] == ""]
        lines += [f"### ablations — `{_cell(dataset)}`" + (f" — base `{_cell(base)}`" if base else ""), "",
                  _repro(rb), "",
                  "| variant | preset | task | AUC % | GAUC % | Δ AUC pt | Δ GAUC pt | seeds | targets |",
                  "|---|---|---|---|---|---|---|---|---|"]
        variants = ["", *sorted({r["variant"] for r in rb} - {""})]
        for task in _order(rb, "task", _TASK_ORDER):
            bt = [r for r in baseline if r["task"] == task]
            for v in variants:
                rt = [r for r in rb if r["variant"] == v and r["task"] == task]
                if not rt:
                    continue
                d_auc = "—" if v == "" else _paired(rt, bt, "auc")
                d_gauc = "—" if v == "" else _paired(rt, bt, "gauc")
                lines.append(f"| {_cell(v or 'baseline')} | {_cell(rt[0]['preset'])} | {_cell(task)} | "
                             f"{_pm([r['auc'] for r in rt])} | {_pm([r['gauc'] for r in rt])} | {d_auc} | {d_gauc} | "
                             f"{_seeds(rt)} | {rt[0]['n_targets']} |")
        lines.append("")
    return lines[:-1]


def scaling_plottable(records: list[Record]) -> bool:
    """Whether the scaling suite has records with FLOPs per target (the plot's x axis)."""
    return any(r["suite"] == "scaling" and r.get("flops_per_target") for r in records)


def render_quality(records: list[Record], plot: str | None = None) -> list[str]:
    """The quality-suite sections of docs/results.md (``plot``: the scaling PNG's link, relative to docs/)."""
    lines = ["## Quality suites", "",
             f"Source: [`docs/results/{QUALITY_JSON}`](results/{QUALITY_JSON}), written by `python -m trainer.quality` "
             "(`make eval` runs every suite, then this page's generator). Protocol: the offline progressive "
             "evaluation ([evaluation.md](evaluation.md#offline-evaluation)) with the presets of `python -m trainer`; "
             "each AUC/GAUC cell is the mean over seeds ± half their range; wall s is the model's predict-then-train "
             "pass on the machine that ran it.", ""]
    for suite in QUALITY_SUITES:
        rs = [r for r in records if r["suite"] == suite]
        for dataset in sorted({r["dataset"] for r in rs}):
            rd = [r for r in rs if r["dataset"] == dataset]
            if suite == "main":
                lines += render_main(rd, dataset)
            elif suite == "unified":
                lines += render_unified(rd, dataset)
            elif suite == "scaling":
                lines += render_scaling(rd, dataset, plot)
            else:
                lines += render_ablations(rd, dataset)
            lines.append("")
    return lines


# ---------------------------------------------------------------------------------------------- distillation
_TEACHER_VARIANT = re.compile(r"teacher(?:-stale(\d+))?")
_STUDENT_ORDER = ("no-distill", "distill", "distill-no-aux", "distill-no-adapter")
_STUDENT_BASELINE = "no-distill"


def distill_variant_key(variant: str) -> tuple[int, int, str]:
    """Sort key of a distill-suite variant: the live teacher, stale teachers by N, then the students' variants in
    :data:`_STUDENT_ORDER`, stale-teacher students by N, anything else by name.

    Example:
        >>> sorted(["distill-stale4", "distill", "teacher-stale2", "no-distill", "distill-stale2", "teacher"],
        ...        key=distill_variant_key)
        ['teacher', 'teacher-stale2', 'no-distill', 'distill', 'distill-stale2', 'distill-stale4']
    """
    if m := _TEACHER_VARIANT.fullmatch(variant):
        return (0, int(m.group(1) or 0), variant)
    if variant in _STUDENT_ORDER:
        return (1, _STUDENT_ORDER.index(variant), variant)
    if m := re.fullmatch(r"distill-stale(\d+)", variant):
        return (2, int(m.group(1)), variant)
    return (3, 0, variant)


def _student_kind_key(kind: tuple[str, str]) -> tuple[int, str, str]:
    """dlrm, dlrm-per-scenario, ranker, ranker-per-scenario (per-scenario students: one model per scenario), then
    any other model by name; presets by name within a model."""
    base = kind[0].removesuffix("-per-scenario")
    return (("dlrm", "ranker").index(base) if base in ("dlrm", "ranker") else 2, kind[0], kind[1])


def render_distill(recs: list[Record], dataset: str) -> list[str]:
    """Per dataset and teacher preset: the teacher's rows (live and stale), then per student kind (model, preset;
    ``<model>-per-scenario``: one model per scenario, its overall record scores them together) each variant's
    overall AUC/GAUC and its difference to the same student without distillation (paired by seed)."""
    lines: list[str] = []
    overall = [r for r in recs if r["scenario"] == OVERALL]
    for tp in _order(overall, "teacher_preset") if all("teacher_preset" in r for r in overall) else [""]:
        ro = [r for r in overall if r.get("teacher_preset", "") == tp]
        teacher = [r for r in ro if _TEACHER_VARIANT.fullmatch(r["variant"])]
        students = [r for r in ro if not _TEACHER_VARIANT.fullmatch(r["variant"])]
        names = f"teacher {tp or 'unnamed'}; students " + ", ".join(sorted({r["preset"] for r in students}))
        lines += [f"### distillation — `{_cell(dataset)}`" + (f" — teacher `{_cell(tp)}`" if tp else ""), ""]
        if teacher:
            lines += [_repro(ro, names), "",
                      "| teacher | preset | task | AUC % | GAUC % | seeds | targets |", "|---|---|---|---|---|---|---|"]
            for task in _order(teacher, "task", _TASK_ORDER):
                for v in sorted({r["variant"] for r in teacher}, key=distill_variant_key):
                    rt = [r for r in teacher if r["variant"] == v and r["task"] == task]
                    if rt:
                        lines.append(f"| {_cell(v)} | {_cell(rt[0]['preset'])} | {_cell(task)} | "
                                     f"{_pm([r['auc'] for r in rt])} | {_pm([r['gauc'] for r in rt])} | "
                                     f"{_seeds(rt)} | {rt[0]['n_targets']} |")
            lines.append("")
        kinds = sorted({(r["model"], r["preset"]) for r in students}, key=_student_kind_key)
        for model, preset in kinds:
            rk = [r for r in students if (r["model"], r["preset"]) == (model, preset)]
            lines += [f"#### distillation — `{_cell(dataset)}` — student {_cell(_label(model, preset))}", "",
                      _repro(rk, names), "",
                      f"| variant | task | AUC % | GAUC % | Δ AUC pt vs {_STUDENT_BASELINE} | "
                      f"Δ GAUC pt vs {_STUDENT_BASELINE} | seeds | targets |", "|---|---|---|---|---|---|---|---|"]
            for task in _order(rk, "task", _TASK_ORDER):
                base = [r for r in rk if r["variant"] == _STUDENT_BASELINE and r["task"] == task]
                for v in sorted({r["variant"] for r in rk}, key=distill_variant_key):
                    rt = [r for r in rk if r["variant"] == v and r["task"] == task]
                    if not rt:
                        continue
                    same = v == _STUDENT_BASELINE or not base
                    lines.append(f"| {_cell(v)} | {_cell(task)} | {_pm([r['auc'] for r in rt])} | "
                                 f"{_pm([r['gauc'] for r in rt])} | {'—' if same else _paired(rt, base, 'auc')} | "
                                 f"{'—' if same else _paired(rt, base, 'gauc')} | {_seeds(rt)} | {rt[0]['n_targets']} |")
            lines.append("")
    return lines[:-1] if lines and lines[-1] == "" else lines


def load_serving_bench(path: Path) -> dict[str, Any]:
    """The report of ``python -m benchmarks.bench_distill_serving`` (``docs/results/distill_serving_bench.json``)."""
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as e:
        raise ResultsError(f"{path}: {e}") from e
    if not isinstance(data, dict) or not data.get("command"):
        raise ResultsError(f"{path}: no 'command': nothing reproduces it")
    models = data.get("models")
    student = (data.get("workload") or {}).get("student")
    if not isinstance(models, dict) or f"student:{student}" not in models:
        raise ResultsError(f"{path}: no 'models' entry for the workload's student {student!r}")
    for label, m in models.items():
        if "cold" not in m or not all(k in m["cold"] for k in ("p50_ms", "p95_ms", "p99_ms")):
            raise ResultsError(f"{path}: model {label} lacks cold p50/p95/p99")
    return data


def render_serving_bench(bench: dict[str, Any]) -> list[str]:
    """The serving latency table: every model and path (cold = user encoded per request, warm = from the LRU), and
    each row's p50 / p99 over the Ranker student's on the same path (how many times slower than the student)."""
    w, models = bench["workload"], bench["models"]
    student = models[f"student:{w['student']}"]
    presets = ", ".join(dict.fromkeys(m["preset"] for m in models.values()))
    load = bench.get("load_average_before_after") or []
    busy = (f", load average {load[0]:.1f} before and {load[3]:.1f} after (other jobs running: the ratios carry "
            f"over, the absolute times do not)") if len(load) >= 4 else ""
    lines = ["### distillation — serving latency, students vs teachers", "",
             f"Source: [`docs/results/{SERVING_BENCH_JSON}`](results/{SERVING_BENCH_JSON}) "
             f"([benchmarks.md](benchmarks.md)): one user with {w['history']} history events, {w['candidates']} "
             f"candidates, {w.get('pinned_cores', 1)} pinned core, torch threads {w['torch_threads']}, "
             f"{w.get('iters', 'n/a')} requests per model and path, models interleaved; "
             f"{' '.join(str(bench.get('machine', 'machine not recorded')).split())}, "
             f"torch {bench.get('torch', 'n/a')}, {bench.get('date', 'undated')}{busy}. The DLRM student is timed on "
             "serving's steps in the benchmark's process (serving loads Ranker snapshots only).", "",
             f"Command: `{bench['command'].strip()}` · preset: `{presets}`", "",
             "| model | preset | path | p50 ms | p95 ms | p99 ms | p50 ÷ student | p99 ÷ student |",
             "|---|---|---|---|---|---|---|---|"]
    for m in models.values():
        for path in ("cold", "warm"):
            if path not in m:
                continue
            r, ref = m[path], student.get(path) or student["cold"]
            role = str(m.get("role", "")).split("-")[0]  # student, teacher ("student-dlrm": the DLRM student)
            lines.append(f"| {_cell(role)} {_cell(m.get('kind', ''))} | {_cell(m['preset'])} | {path} | "
                         f"{r['p50_ms']:.2f} | {r['p95_ms']:.2f} | {r['p99_ms']:.2f} | "
                         f"{r['p50_ms'] / ref['p50_ms']:.2f} | {r['p99_ms'] / ref['p99_ms']:.2f} |")
    return lines


def render_distillation(records: list[Record], bench: dict[str, Any] | None) -> list[str]:
    """The distillation section: the ``distill`` suite's tables per dataset, then the serving benchmark."""
    lines = ["## Distillation (teacher → students)", ""]
    if records:
        lines += [f"Source: [`docs/results/{QUALITY_JSON}`](results/{QUALITY_JSON}), suite `{DISTILL_SUITE}` of "
                  "`python -m trainer.quality` ([trainer.md](trainer.md#distillation)): a teacher Ranker and students "
                  "on the same batches, each student trained on labels only (`no-distill`), with the teacher's "
                  "leak-free scores through the aux head and the adapter (`distill`), without the aux head, without "
                  "the adapter, and from a teacher stale by N snapshots (`distill-staleN`; the `teacher-staleN` rows "
                  "are those stale scores' own quality). AUC/GAUC over every target, mean over seeds ± half their "
                  "range; Δ = variant − `no-distill` of the same student, paired by seed, in points.", ""]
        for dataset in sorted({r["dataset"] for r in records}):
            lines += [*render_distill([r for r in records if r["dataset"] == dataset], dataset), ""]
    if bench:
        lines += [*render_serving_bench(bench), ""]
    return lines


def write_scaling_plot(records: list[Record], path: Path) -> Path | None:
    """AUC and GAUC (overall) vs FLOPs per target, a line per dataset × task, error bars = half range over seeds."""
    rs = [r for r in records if r["suite"] == "scaling" and r.get("flops_per_target") and r["scenario"] == OVERALL]
    if not rs:
        return None
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(10, 3.8), squeeze=False)
    for ax, metric in zip(axes.flat, ("auc", "gauc"), strict=True):
        for dataset in sorted({r["dataset"] for r in rs}):
            rows = [x for x in _scaling_rows([r for r in rs if r["dataset"] == dataset]) if x[2] is not None]
            for task in _order([r for r in rs if r["dataset"] == dataset], "task", _TASK_ORDER):
                pts = [(x[2], mean_spread([r[metric] for r in x[3]]), x[0]) for x in rows if x[1] == task]
                pts = [p for p in pts if p[1] is not None]
                if not pts:
                    continue
                xs = [p[0] for p in pts]
                ys = [100 * p[1][0] for p in pts]  # type: ignore[index]
                es = [100 * p[1][1] for p in pts]  # type: ignore[index]
                ax.errorbar(xs, ys, yerr=es, marker="o", capsize=3, label=f"{dataset} {task}")
                for x, y, p in zip(xs, ys, pts, strict=True):
                    ax.annotate(p[2], (x, y), fontsize=6, xytext=(3, 3), textcoords="offset points")
        ax.set_xscale("log")
        ax.set_xlabel("FLOPs per target")
        ax.set_ylabel(f"{metric.upper()} %")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    fig.suptitle("progressive quality vs model cost (scaling suite)", fontsize=10)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=90, metadata={"Software": None})
    plt.close(fig)
    return path


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
    qpath = ns.results_dir / QUALITY_JSON
    if qpath.exists():
        png = write_scaling_plot(load_quality(qpath), ns.results_dir / SCALING_PNG)
        if png is not None:
            print(f"wrote {png}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
