"""``python -m deploy dashboards --png DIR``: the Grafana dashboards rendered from a live Prometheus, no Grafana.

Reads the generated dashboards (``deploy/grafana/dashboards/*.json``), gives each template variable the value Grafana
would show first (its current value; "All" as the variable's ``allValue``), substitutes Grafana's built-ins
(``$__rate_interval`` from the step and Prometheus' scrape interval, as Grafana computes it), runs every panel
target's PromQL unchanged through Prometheus' HTTP API ``query_range``, and draws each panel with matplotlib:
a time series as one line per series, legends from ``legendFormat``; a stat as its last non-null value over a
sparkline. Writes::

    DIR/<dashboard>/<id>-<title>.png   one image per panel
    DIR/<dashboard>.png                the whole dashboard laid out on Grafana's 24-column grid
    DIR/index.html                     all of it, with each panel's PromQL

Example: ``python -m deploy demo --keep-running`` in one shell, then
``python -m deploy dashboards --png runs/dashboards --prometheus http://127.0.0.1:9090 --range 15m``.
"""

from __future__ import annotations

import argparse
import datetime as dt
import html
import io
import json
import math
import re
import sys
import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

REPO_ROOT = Path(__file__).resolve().parents[1]
DASHBOARDS = REPO_ROOT / "deploy" / "grafana" / "dashboards"
DEFAULT_SCRAPE_S = 15.0  # Grafana's assumption when the data source does not say

# Grafana's dark theme and classic palette, so the images read like the dashboards.
BG, PANEL_BG, GRID, TEXT, MUTED = "#111217", "#181b1f", "#2c3235", "#ccccdc", "#8e8e9b"
PALETTE = ["#73bf69", "#f2cc0c", "#8ab8ff", "#ff780a", "#f2495c", "#5794f2", "#b877d9", "#705da0", "#37872d",
           "#fade2a", "#447ebc", "#c15c17", "#890f02", "#0a437c", "#6d1f62", "#584477"]


class DashboardError(RuntimeError):
    """Prometheus refused a query, or a dashboard cannot be read."""


class PrometheusUnreachable(DashboardError):
    """No Prometheus answers at the URL."""


@dataclass(frozen=True)
class RenderConfig:
    """What to render from where. ``range_s`` ends at ``end`` (default: now); ``step_s`` 0 = range / 240."""

    out: Path
    prometheus: str = "http://127.0.0.1:9090"
    range_s: float = 900.0
    end: float | None = None
    step_s: float = 0.0
    dashboards: Path = DASHBOARDS
    variables: Mapping[str, str] = field(default_factory=dict)
    dpi: int = 100


@dataclass
class Series:
    """One result series of a range query: its labels and (timestamps, values) with NaN for gaps."""

    labels: dict[str, str]
    ts: list[float]
    values: list[float]

    @property
    def finite(self) -> int:
        return sum(1 for v in self.values if math.isfinite(v))


@dataclass
class TargetResult:
    """A panel target after substitution: the PromQL sent, the series back, or Prometheus' error."""

    ref: str
    expr: str
    legend: str
    series: list[Series] = field(default_factory=list)
    error: str | None = None


@dataclass
class PanelResult:
    """A rendered panel: ``lines`` = series drawn with at least one finite point (values shown, for a stat)."""

    dashboard: str
    id: int
    title: str
    kind: str
    targets: list[TargetResult]
    png: Path | None = None
    lines: int = 0

    @property
    def has_data(self) -> bool:
        return any(s.finite for t in self.targets for s in t.series)

    @property
    def errors(self) -> list[str]:
        return [f"{t.ref}: {t.error}" for t in self.targets if t.error]


# ---------------------------------------------------------------------------------------------------------------
# Dashboard JSON: panels, layout, variables


def walk_panels(panels: list[dict[str, Any]]) -> Iterator[dict[str, Any]]:
    """Every non-row panel, including those nested inside collapsed rows, in dashboard order."""
    for p in panels:
        if p.get("type") == "row":
            yield from walk_panels(p.get("panels") or [])
        else:
            yield p


def layout(panels: list[dict[str, Any]]) -> list[tuple[dict[str, Any], int, int, int, int]]:
    """(panel, x, y, w, h) on the 24-column grid with every row expanded (a collapsed row's panels follow it)."""
    out: list[tuple[dict[str, Any], int, int, int, int]] = []
    shift = 0
    for p in sorted(panels, key=lambda p: (p["gridPos"]["y"], p["gridPos"]["x"])):
        g = p["gridPos"]
        y = g["y"] + shift
        out.append((p, g["x"], y, g["w"], g["h"]))
        kids = (p.get("panels") or []) if p.get("type") == "row" and p.get("collapsed") else []
        if kids:
            y0 = min(k["gridPos"]["y"] for k in kids)
            for k in kids:
                kg = k["gridPos"]
                out.append((k, kg["x"], y + g["h"] + kg["y"] - y0, kg["w"], kg["h"]))
            shift += max(k["gridPos"]["y"] - y0 + k["gridPos"]["h"] for k in kids)
    return out


def variable_values(client: httpx.Client, dash: dict[str, Any],
                    overrides: Mapping[str, str] | None = None) -> dict[str, str]:
    """The value Grafana substitutes for each template variable when the dashboard opens.

    A current single value is used as is; "All" (``$__all``) becomes the variable's ``allValue`` (a regex, for
    ``=~`` matchers); several selected values become ``(a|b)``. A variable with no current value takes the first
    value Prometheus knows for its ``label_values(metric, label)``, or ``.*`` when Prometheus knows none (an
    equality matcher then returns nothing: the panel shows "No data", as in Grafana).
    """
    out: dict[str, str] = {}
    for var in dash.get("templating", {}).get("list", []):
        name = var["name"]
        if overrides and name in overrides:
            out[name] = overrides[name]
            continue
        cur = var.get("current", {}).get("value")
        values = [cur] if isinstance(cur, str) else list(cur or [])
        if values and "$__all" not in values:
            out[name] = values[0] if len(values) == 1 else "(" + "|".join(re.escape(v) for v in values) + ")"
        elif values and var.get("allValue"):
            out[name] = var["allValue"]
        else:
            known = label_values(client, var.get("definition", ""))
            out[name] = known[0] if known else ".*"
    return out


def label_values(client: httpx.Client, definition: str) -> list[str]:
    """Values of ``label_values(metric, label)`` (or ``label_values(label)``) from Prometheus, sorted."""
    m = re.fullmatch(r"\s*label_values\((?:\s*([^,()]+?)\s*,)?\s*(\w+)\s*\)\s*", definition)
    if not m:
        raise DashboardError(f"unsupported variable query {definition!r} (only label_values(...) is)")
    params = {"match[]": m.group(1)} if m.group(1) else {}
    return sorted(_api(client, f"/api/v1/label/{m.group(2)}/values", params))


def grafana_builtins(range_s: float, step_s: float, scrape_s: float) -> dict[str, str]:
    """Grafana's built-in variables for a query over ``range_s`` seconds at ``step_s`` resolution.

    ``$__rate_interval`` = max(``$__interval`` + scrape interval, 4 × scrape interval), Grafana's formula.
    """
    rate = max(step_s + scrape_s, 4 * scrape_s)
    return {"__rate_interval": _duration(rate), "__interval": _duration(step_s), "__range": _duration(range_s),
            "__range_s": str(int(range_s)), "__range_ms": str(int(range_s * 1000)),
            "__interval_ms": str(int(step_s * 1000))}


def substitute(expr: str, values: Mapping[str, str]) -> str:
    """``expr`` with every ``$name`` / ``${name}`` replaced from ``values`` (longest names first)."""
    for name in sorted(values, key=len, reverse=True):
        expr = expr.replace(f"${{{name}}}", values[name]).replace(f"${name}", values[name])
    if m := re.search(r"\$\{?\w+", expr):
        raise DashboardError(f"no value for {m.group(0)} in {expr}")
    return expr


def legend(fmt: str, labels: Mapping[str, str], expr: str) -> str:
    """Grafana's legend for one series: ``{{label}}`` templates, or (``__auto``, or nothing left) its labels."""
    if fmt and fmt != "__auto":
        text = re.sub(r"\{\{\s*(\w+)\s*\}\}", lambda m: labels.get(m.group(1), ""), fmt).strip()
        if text:
            return text
    name = labels.get("__name__", "")
    rest = ", ".join(f'{k}="{v}"' for k, v in sorted(labels.items()) if k != "__name__")
    return (name + ("{" + rest + "}" if rest else "")) or expr


def parse_duration(text: str) -> float:
    """Seconds in a Prometheus duration (``90s``, ``1m30s``, ``15m``, ``2h``, ``1d``)."""
    units = {"ms": 0.001, "s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800, "y": 31536000}
    parts = re.findall(r"(\d+(?:\.\d+)?)(ms|[smhdwy])", text.strip())
    if not parts or "".join(n + u for n, u in parts) != text.strip():
        raise ValueError(f"not a duration: {text!r} (e.g. 15m, 1h, 90s)")
    return sum(float(n) * units[u] for n, u in parts)


def _duration(seconds: float) -> str:
    return f"{int(seconds * 1000)}ms" if seconds < 1 else f"{round(seconds)}s"


# ---------------------------------------------------------------------------------------------------------------
# Prometheus


def _api(client: httpx.Client, path: str, params: Mapping[str, Any]) -> Any:
    try:
        r = client.get(path, params=params)
    except httpx.HTTPError as e:
        raise PrometheusUnreachable(f"cannot reach Prometheus at {client.base_url}: {e}") from e
    try:
        body = r.json()
    except ValueError as e:
        raise PrometheusUnreachable(f"{client.base_url}{path} answered {r.status_code}, not Prometheus JSON") from e
    if body.get("status") != "success":
        raise DashboardError(f"{body.get('errorType')}: {body.get('error')}")
    return body["data"]


def scrape_interval(client: httpx.Client) -> float:
    """Prometheus' global scrape interval in seconds (from ``/api/v1/status/config``)."""
    config = _api(client, "/api/v1/status/config", {}).get("yaml", "")
    m = re.search(r"^\s+scrape_interval:\s*(\S+)", config, re.MULTILINE)
    return parse_duration(m.group(1)) if m else DEFAULT_SCRAPE_S


def query_range(client: httpx.Client, expr: str, start: float, end: float, step_s: float) -> list[Series]:
    """Every series of ``expr`` over [start, end] at ``step_s``, aligned on one time axis (NaN where missing)."""
    data = _api(client, "/api/v1/query_range", {"query": expr, "start": start, "end": end, "step": step_s})
    out = []
    for res in data["result"]:
        pts = {float(t): float(v) for t, v in res["values"]}
        grid = sorted(pts)
        out.append(Series(dict(res["metric"]), grid, [pts[t] for t in grid]))
    return out


def query_panel(client: httpx.Client, panel: dict[str, Any], values: Mapping[str, str], start: float, end: float,
                step_s: float) -> list[TargetResult]:
    """Each target of ``panel``, substituted and run; a PromQL error is kept on its target, not raised."""
    out = []
    for t in panel.get("targets", []):
        res = TargetResult(t.get("refId", "?"), substitute(t["expr"], values), t.get("legendFormat", ""))
        try:
            res.series = query_range(client, res.expr, start, end, step_s)
        except PrometheusUnreachable:
            raise
        except DashboardError as e:
            res.error = str(e)
        out.append(res)
    return out


# ---------------------------------------------------------------------------------------------------------------
# Drawing


def format_value(v: float, unit: str, decimals: int | None = None) -> str:
    """``v`` as Grafana shows it for the panel's unit (``s``, ``ops``, ``reqps``, ``percentunit``, ``short``)."""
    if not math.isfinite(v):
        return "–"
    if unit == "percentunit":
        return f"{100 * v:.{1 if decimals is None else decimals}f}%"
    if unit == "s":
        a = abs(v)
        if a and a < 1:
            return f"{1000 * v:.{0 if decimals is None else decimals}f} ms"
        if a >= 365 * 86400:
            return f"{v / (365 * 86400):.1f} y"
        if a >= 2 * 86400:
            return f"{v / 86400:.1f} d"
        if a >= 3600:
            return f"{v / 3600:.1f} h"
        if a >= 120:
            return f"{v / 60:.1f} min"
        return f"{v:.{2 if decimals is None else decimals}f} s"
    suffix = {"ops": " ops/s", "reqps": " req/s"}.get(unit, "")
    a = abs(v)
    for scale, s in ((1e9, "G"), (1e6, "M"), (1e3, "K")):
        if a >= scale:
            return f"{v / scale:.{1 if decimals is None else decimals}f}{s}{suffix}"
    if decimals is None:
        decimals = 0 if float(v).is_integer() else (2 if a >= 1 else 3)
    return f"{v:.{decimals}f}{suffix}"


def _style(ax: Any, title: str) -> None:
    ax.set_facecolor(PANEL_BG)
    for s in ax.spines.values():
        s.set_visible(False)
    ax.tick_params(colors=MUTED, labelsize=7, length=0)
    ax.set_title(title, color=TEXT, fontsize=9, loc="left", fontweight="bold")


def _message(ax: Any, text: str, color: str = MUTED) -> None:
    ax.set_xticks([])
    ax.set_yticks([])
    ax.text(0.5, 0.5, text, color=color, fontsize=9, ha="center", va="center", wrap=True, transform=ax.transAxes)


def draw_panel(ax: Any, panel: dict[str, Any], targets: list[TargetResult],
               span: tuple[float, float] | None = None) -> int:
    """Draw one panel into ``ax`` over ``span`` (unix seconds; default: the data's); returns the series drawn
    (values shown, for a stat)."""
    import matplotlib.dates as mdates
    from matplotlib.ticker import FuncFormatter

    _style(ax, panel.get("title", ""))
    unit = panel.get("fieldConfig", {}).get("defaults", {}).get("unit", "short")
    decimals = panel.get("fieldConfig", {}).get("defaults", {}).get("decimals")
    errors = [f"{t.ref}: {t.error}" for t in targets if t.error]
    drawn = [(legend(t.legend, s.labels, t.expr), s) for t in targets for s in t.series if s.finite]
    if not drawn:
        _message(ax, "\n".join(errors)[:300] if errors else "No data", PALETTE[4] if errors else MUTED)
        return 0
    if panel.get("type") == "stat":
        return _draw_stat(ax, panel, drawn, unit, decimals)
    for i, (name, s) in enumerate(drawn):
        times = [dt.datetime.fromtimestamp(t) for t in s.ts]
        ax.plot(times, s.values, color=PALETTE[i % len(PALETTE)], linewidth=1.2, label=name)
    ax.grid(True, color=GRID, linewidth=0.6)
    if span:
        ax.set_xlim(dt.datetime.fromtimestamp(span[0]), dt.datetime.fromtimestamp(span[1]))
    ax.xaxis.set_major_formatter(mdates.DateFormatter("%H:%M:%S"))
    ax.xaxis.set_major_locator(mdates.AutoDateLocator(minticks=3, maxticks=8))
    ax.yaxis.set_major_formatter(FuncFormatter(lambda v, _pos: format_value(v, unit)))
    shown = drawn[:12]
    leg = ax.legend([h for h in ax.get_lines()[:len(shown)]], [n for n, _ in shown], loc="upper left",
                    bbox_to_anchor=(0, -0.12), ncol=min(3, len(shown)), fontsize=7, frameon=False,
                    labelcolor=TEXT, handlelength=1.2, borderaxespad=0)
    if len(drawn) > len(shown):
        leg.set_title(f"(+{len(drawn) - len(shown)} more series)", prop={"size": 7})
        leg.get_title().set_color(MUTED)
    if errors:
        ax.text(1, 1, "; ".join(errors)[:120], color=PALETTE[4], fontsize=6, ha="right", va="bottom",
                transform=ax.transAxes)
    return len(drawn)


def _draw_stat(ax: Any, panel: dict[str, Any], drawn: list[tuple[str, Series]], unit: str,
               decimals: int | None) -> int:
    """Grafana's stat panel: the last non-null value of each series, large, over its sparkline (first series)."""
    ax.set_xticks([])
    ax.set_yticks([])
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1)
    if panel.get("options", {}).get("graphMode", "area") != "none":
        _, first = drawn[0]
        pts = [(t, v) for t, v in zip(first.ts, first.values, strict=True) if math.isfinite(v)]
        t0, t1 = pts[0][0], pts[-1][0]
        lo, hi = min(v for _, v in pts), max(v for _, v in pts)
        xs = [(t - t0) / ((t1 - t0) or 1) for t, _ in pts]
        ys = [0.05 + 0.3 * ((v - lo) / ((hi - lo) or 1)) for _, v in pts]
        ax.fill_between(xs, ys, 0, color=PALETTE[0], alpha=0.15, linewidth=0)
        ax.plot(xs, ys, color=PALETTE[0], linewidth=1)
    n = len(drawn)
    for i, (name, s) in enumerate(drawn):
        last = next(v for v in reversed(s.values) if math.isfinite(v))
        x = (i + 0.5) / n
        ax.text(x, 0.6, format_value(last, unit, decimals), color=PALETTE[0], fontsize=22 if n == 1 else 14,
                ha="center", va="center", fontweight="bold", transform=ax.transAxes)
        if n > 1:
            ax.text(x, 0.85, name, color=TEXT, fontsize=7, ha="center", transform=ax.transAxes)
    return n


# ---------------------------------------------------------------------------------------------------------------
# Rendering


def _slug(text: str) -> str:
    return re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-")[:60] or "panel"


COL_PX, ROW_PX, GAP_PX, TITLE_PX = 56, 34, 6, 44  # one grid unit (24 columns across), the gap between panels


def _text_png(text: str, w_px: int, h_px: int, size: float, dpi: int) -> Any:
    """A PIL image of ``text`` (left-aligned, Grafana's colors) of exactly w_px × h_px."""
    from matplotlib.figure import Figure
    from PIL import Image

    fig = Figure(figsize=(w_px / dpi, h_px / dpi), facecolor=BG)
    fig.text(0.005, 0.5, text, color=TEXT, fontsize=size, fontweight="bold", va="center")
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=dpi, facecolor=BG)
    return Image.open(buf).convert("RGB")


def render(cfg: RenderConfig) -> list[PanelResult]:
    """Render every dashboard under ``cfg.dashboards`` into ``cfg.out``; returns one result per panel.

    Each panel is drawn at its grid size (``w`` × ``COL_PX``, ``h`` × ``ROW_PX`` pixels at ``cfg.dpi``) and the
    dashboard image is those same PNGs pasted at their grid positions under the row titles.
    """
    from matplotlib.figure import Figure
    from PIL import Image

    paths = sorted(cfg.dashboards.glob("*.json"))
    if not paths:
        raise DashboardError(f"no dashboards in {cfg.dashboards}")
    end = time.time() if cfg.end is None else cfg.end
    start = end - cfg.range_s
    step = cfg.step_s or max(1.0, round(cfg.range_s / 240))
    results: list[PanelResult] = []
    with httpx.Client(base_url=cfg.prometheus.rstrip("/"), timeout=30) as client:
        builtins = grafana_builtins(cfg.range_s, step, scrape_interval(client))
        for path in paths:
            dash = json.loads(path.read_text())
            name = path.stem
            values = {**builtins, **variable_values(client, dash, cfg.variables)}
            (cfg.out / name).mkdir(parents=True, exist_ok=True)
            placed = layout(dash["panels"])
            rows = max(y + h for _, _, y, _, h in placed)
            grid = Image.new("RGB", (24 * COL_PX, TITLE_PX + rows * ROW_PX), BG)
            title = f"{dash.get('title', name)}    {_span(start, end)}, from {cfg.prometheus}"
            grid.paste(_text_png(title, 24 * COL_PX, TITLE_PX, 13, cfg.dpi), (0, 0))
            for panel, x, y, w, h in placed:
                w_px, h_px = w * COL_PX - GAP_PX, h * ROW_PX - GAP_PX
                at = (x * COL_PX + GAP_PX // 2, TITLE_PX + y * ROW_PX + GAP_PX // 2)
                if panel.get("type") == "row":
                    grid.paste(_text_png(panel.get("title", ""), w_px, h_px, 11, cfg.dpi), at)
                    continue
                res = PanelResult(name, int(panel.get("id", 0)), panel.get("title", ""), panel.get("type", ""),
                                  query_panel(client, panel, values, start, end, step))
                fig = Figure(figsize=(w_px / cfg.dpi, h_px / cfg.dpi), facecolor=PANEL_BG, layout="constrained")
                res.lines = draw_panel(fig.add_subplot(), panel, res.targets, (start, end))
                res.png = cfg.out / name / f"{res.id:02d}-{_slug(res.title)}.png"
                fig.savefig(res.png, dpi=cfg.dpi, facecolor=PANEL_BG)
                with Image.open(res.png) as img:
                    grid.paste(img.convert("RGB"), at)
                results.append(res)
            grid.quantize(colors=256).save(cfg.out / f"{name}.png", optimize=True)  # flat colors: ~3x smaller
    write_index(cfg, results, start, end)
    return results


def _span(start: float, end: float) -> str:
    fmt = "%Y-%m-%d %H:%M:%S"
    return f"{dt.datetime.fromtimestamp(start).strftime(fmt)} – {dt.datetime.fromtimestamp(end).strftime('%H:%M:%S')}"


def write_index(cfg: RenderConfig, results: list[PanelResult], start: float, end: float) -> Path:
    """``cfg.out/index.html``: each dashboard's grid image, then each panel with its PromQL."""
    parts = [f"<!doctype html><meta charset='utf-8'><title>streamrec dashboards</title>"
             f"<body style='background:{BG};color:{TEXT};font-family:sans-serif'>"
             f"<h1>streamrec dashboards</h1><p>{html.escape(_span(start, end))} from {html.escape(cfg.prometheus)}"
             f" (<code>python -m deploy dashboards</code>)</p>"]
    for name in dict.fromkeys(r.dashboard for r in results):
        parts.append(f"<h2>{html.escape(name)}</h2><img src='{name}.png' style='max-width:100%'>")
        for r in (r for r in results if r.dashboard == name):
            rel = r.png.relative_to(cfg.out).as_posix() if r.png else ""
            queries = "<br>".join(html.escape(t.expr) + (f" <b>{html.escape(t.error)}</b>" if t.error else "")
                                  for t in r.targets)
            parts.append(f"<h3>{html.escape(r.title)}</h3><img src='{rel}'><p><code>{queries}</code></p>")
    path = cfg.out / "index.html"
    path.write_text("\n".join(parts) + "\n")
    return path


DESCRIPTION = """\
Render every panel of the Grafana dashboards (deploy/grafana/dashboards/*.json) from a live Prometheus, with the
same PromQL, into PNGs - no Grafana needed. Writes DIR/<dashboard>/<id>-<title>.png per panel, DIR/<dashboard>.png
(the whole dashboard) and DIR/index.html (everything, with each panel's query).

example: python -m deploy demo --keep-running    (in another shell; it prints its Prometheus URL)
         python -m deploy dashboards --png runs/dashboards --prometheus http://127.0.0.1:9090
"""


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m deploy dashboards", description=DESCRIPTION,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--png", type=Path, required=True, metavar="DIR", help="output directory (created)")
    p.add_argument("--prometheus", default="http://127.0.0.1:9090", metavar="URL",
                   help="Prometheus base URL (default: %(default)s)")
    p.add_argument("--range", default="15m", metavar="DURATION",
                   help="time range ending now, e.g. 15m, 1h, 90s (default: %(default)s)")
    p.add_argument("--step", default="", metavar="DURATION", help="query resolution (default: range / 240, >= 1s)")
    p.add_argument("--var", action="append", default=[], metavar="NAME=VALUE",
                   help="a template variable's value (repeatable), e.g. --var scenario=comedy "
                        "(default: what Grafana shows first: All, or the variable's current value)")
    p.add_argument("--dashboards", type=Path, default=DASHBOARDS, metavar="DIR",
                   help="dashboard JSON directory (default: deploy/grafana/dashboards)")
    args = p.parse_args(argv)
    try:
        range_s = parse_duration(args.range)
        step_s = parse_duration(args.step) if args.step else 0.0
    except ValueError as e:
        p.error(str(e))
    if any("=" not in v for v in args.var):
        p.error("--var takes NAME=VALUE")
    cfg = RenderConfig(out=args.png, prometheus=args.prometheus, range_s=range_s, step_s=step_s,
                       dashboards=args.dashboards, variables=dict(v.split("=", 1) for v in args.var))
    try:
        results = render(cfg)
    except DashboardError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    empty = [r for r in results if not r.has_data and not r.errors]
    broken = [r for r in results if r.errors]
    print(f"{len(results)} panels from {len({r.dashboard for r in results})} dashboards -> {cfg.out}/index.html "
          f"({len(results) - len(empty) - len(broken)} with data, {len(empty)} no data, {len(broken)} query errors)")
    for r in broken:
        print(f"  query error: {r.dashboard} / {r.title}: {'; '.join(r.errors)}", file=sys.stderr)
    return 1 if broken else 0


if __name__ == "__main__":
    sys.exit(main())
