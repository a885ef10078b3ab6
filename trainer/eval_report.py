"""The offline evaluation's report: ``summary.md``, ``metrics.json``, one PNG per metric × task and the headline
table printed to the terminal, all from an :class:`trainer.evaluate.EvalResult` (no computation here).

Example:
    >>> _fmt(0.75678), _fmt(0.5791, pct=False)
    ('75.68', '0.5791')
"""

from __future__ import annotations

import dataclasses
import json
import math
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from trainer.evaluate import EvalResult

METRICS = ("auc", "gauc", "logloss")


def _fmt(x: float, pct: bool = True) -> str:
    if x is None or not math.isfinite(x):
        return "—"
    return f"{100 * x:.2f}" if pct else f"{x:.4f}"


def headline_rows(res: EvalResult) -> list[list[str]]:
    """Rows of the headline table: model, task, AUC, GAUC, log loss (all scenarios)."""
    rows = []
    for task in res.config.core.tasks:
        for model in res.config.models:
            m = res.metrics[model][task]["overall"]
            rows.append([model, task, _fmt(m["auc"]), _fmt(m["gauc"]), _fmt(m["logloss"], False),
                         f"{int(m['count'])}"])
    return rows


def deltas(res: EvalResult, a: str = "ranker", b: str = "dlrm") -> dict[str, dict[str, float]]:
    """``{task: {"auc": pts, "gauc": pts}}`` of model ``a`` over ``b`` on all scenarios (percentage points)."""
    out: dict[str, dict[str, float]] = {}
    if a in res.metrics and b in res.metrics:
        for task in res.config.core.tasks:
            ma, mb = res.metrics[a][task]["overall"], res.metrics[b][task]["overall"]
            out[task] = {k: 100 * (ma[k] - mb[k]) for k in ("auc", "gauc")}
    return out


def write_plots(res: EvalResult, out: Path) -> list[Path]:
    """One PNG per (metric, task): a panel per scenario, a line per model, x = end of each time slice."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.dates as mdates
    import matplotlib.pyplot as plt

    files = []
    x = [datetime.fromtimestamp(t, UTC) for t in res.slice_end_ts]
    first = res.config.models[0]
    for task in res.config.core.tasks:
        # panel 0 is the overall aggregate; every other panel is one scenario, titled "scenario: <name>"
        scenarios: list[str | None] = [None, *res.timeline[first][task]["scenarios"]]
        for metric in METRICS:
            cols = min(3, len(scenarios))
            rows = math.ceil(len(scenarios) / cols)
            fig, axes = plt.subplots(rows, cols, figsize=(4.2 * cols, 3.0 * rows), squeeze=False, sharex=True)
            for ax, s in zip(axes.flat, scenarios, strict=False):
                for model in res.config.models:
                    tl = res.timeline[model][task]
                    ax.plot(x, (tl["overall"] if s is None else tl["scenarios"][s])[metric], marker=".", label=model)
                m0 = res.metrics[first][task]
                n = int((m0["overall"] if s is None else m0["scenarios"][s])["count"])
                ax.set_title("all scenarios" if s is None else f"scenario: {s}", fontsize=9)
                ax.set_title(f"{n} targets", fontsize=7, loc="right")
                ax.grid(alpha=0.3)
                ax.xaxis.set_major_formatter(mdates.DateFormatter("%m-%d"))
                ax.tick_params(labelsize=7)
            for ax in list(axes.flat)[len(scenarios):]:
                ax.axis("off")
            axes.flat[0].legend(fontsize=7)
            fig.suptitle(f"progressive {metric.upper() if metric != 'logloss' else 'log loss'} — task {task} "
                         f"(per time slice of equal target count)", fontsize=10)
            fig.tight_layout()
            path = out / f"{metric}_{task}.png"
            fig.savefig(path, dpi=90)
            plt.close(fig)
            files.append(path)
    return files


def write_summary(res: EvalResult, out: Path, title: str, command: str) -> Path:
    """``summary.md``: dataset, headline table, deltas, per-scenario tables, timings, plots."""
    d = res.dataset
    lines = [f"# Offline progressive evaluation — {title}", "",
             f"Command: `{command}`", "",
             f"Ranker preset: `{res.config.preset or '(hand-built)'}` (model/presets.py; the effective "
             "configuration is at the end)", "",
             "Protocol: events → `streaming.core.run_offline` (the worker's pure core) → user-level samples in "
             "emission order → batches of "
             f"{res.config.batch_samples} samples; every model scores a batch *before* learning from it "
             "(progressive validation, one pass). Neural models train with `trainer.loop.Trainer.train_step`. "
             f"Seed {res.config.seed}.", "",
             "## Data", "",
             f"- events: {d['events']} ({d['impression']} impressions, {d['feedback']} feedback)",
             f"- samples: {d['samples']} user-level samples, {d['targets']} targets, {d['users']} users",
             "- targets per scenario: " + ", ".join(f"{k} {v}" for k, v in d["targets_per_scenario"].items()),
             "- label rate: " + ", ".join(f"{k} {v:.3f}" for k, v in d["label_rate"].items()), "",
             "## Headline (all scenarios, whole run)", "",
             "| model | task | AUC | GAUC | log loss | targets |", "|---|---|---|---|---|---|"]
    lines += ["| " + " | ".join(r) + " |" for r in headline_rows(res)]
    dl = deltas(res)
    if dl:
        lines += ["", "Ranker − DLRM (percentage points): " + "; ".join(
            f"{t}: AUC {v['auc']:+.2f}, GAUC {v['gauc']:+.2f}" for t, v in dl.items())]
    lines += ["", "## Per scenario", ""]
    for task in res.config.core.tasks:
        scen = list(res.metrics[res.config.models[0]][task]["scenarios"])
        lines += [f"### {task}", "", "| scenario | targets | " + " | ".join(
            f"{m} AUC | {m} GAUC | {m} LL" for m in res.config.models) + " |",
            "|---|---|" + "---|" * (3 * len(res.config.models))]
        for s in scen:  # scenarios only: the overall numbers are the headline table's
            cells = [_md_cell(s), str(int(res.metrics[res.config.models[0]][task]["scenarios"][s]["count"]))]
            for m in res.config.models:
                r = res.metrics[m][task]["scenarios"][s]
                cells += [_fmt(r["auc"]), _fmt(r["gauc"]), _fmt(r["logloss"], False)]
            lines.append("| " + " | ".join(cells) + " |")
        lines.append("")
    lines += ["## Time (seconds, this machine)", "",
              ", ".join(f"{k} {v:.1f}" for k, v in res.seconds.items()), "", "## Plots", ""]
    lines += [f"![{p.stem}]({p.name})" for p in res.files]
    lines += ["", "## Configuration", "", "```json", json.dumps(_jsonable(res.config), indent=1),
              "```", ""]
    path = out / "summary.md"
    path.write_text("\n".join(lines))
    return path


def _md_cell(text: str) -> str:
    """A scenario name as a Markdown table cell (``|`` and line breaks would end the cell or the row)."""
    return text.replace("\\", "\\\\").replace("|", "\\|").replace("\n", " ")


def _jsonable(x: Any) -> Any:
    if dataclasses.is_dataclass(x) and not isinstance(x, type):
        return {f.name: _jsonable(getattr(x, f.name)) for f in dataclasses.fields(x)}
    if isinstance(x, dict):
        return {str(k): _jsonable(v) for k, v in x.items()}
    if isinstance(x, list | tuple):
        return [_jsonable(v) for v in x]
    if isinstance(x, float) and not math.isfinite(x):
        return None
    if isinstance(x, str | int | float | bool) or x is None:
        return x
    if hasattr(x, "items"):
        return {str(k): _jsonable(v) for k, v in x.items()}
    return str(x)


def write_report(res: EvalResult, out: Path, title: str, command: str) -> list[Path]:
    """Plots, ``metrics.json`` and ``summary.md`` under ``out``; returns the written files."""
    out.mkdir(parents=True, exist_ok=True)
    res.files = write_plots(res, out)
    mj = out / "metrics.json"
    mj.write_text(json.dumps(_jsonable({"dataset": res.dataset, "metrics": res.metrics, "timeline": res.timeline,
                                        "slice_end_ts": res.slice_end_ts, "seconds": res.seconds,
                                        "config": res.config}), indent=1, sort_keys=True))
    return [*res.files, mj, write_summary(res, out, title, command)]


def print_headline(res: EvalResult) -> None:
    from rich.console import Console
    from rich.table import Table

    table = Table(title="progressive validation, all scenarios (AUC/GAUC in %)")
    for col in ("model", "task", "AUC", "GAUC", "log loss", "targets"):
        table.add_column(col, justify="left" if col in ("model", "task") else "right")
    for row in headline_rows(res):
        table.add_row(*row)
    console = Console(width=100)
    console.print(table)
    for task, v in deltas(res).items():
        console.print(f"ranker − dlrm ({task}): AUC {v['auc']:+.2f} pt, GAUC {v['gauc']:+.2f} pt")


# ---------------------------------------------------------------------------------------------- CLI
