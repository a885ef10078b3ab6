"""Prometheus configuration, alert rules and Grafana dashboards, checked with the real promtool; the dashboard
renderer (``python -m deploy dashboards``) against a real Prometheus that has no streamrec data.

The live part (a real Prometheus scraping a running pipeline, every panel query returning data and every panel
rendered with its lines) is in ``test_pipeline.py``, which shares one running cluster with the end-to-end test.
"""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import yaml
from PIL import Image

from deploy import dashboards
from deploy.dashboards import DashboardError, RenderConfig, walk_panels
from deploy.prometheus_server import prometheus_service
from deploy.supervisor import Supervisor

REPO = Path(__file__).resolve().parents[2]
PROM_DIR = REPO / "deploy" / "prometheus"
GRAFANA_DIR = REPO / "deploy" / "grafana"


def _run(cmd: list[str], cwd: Path = PROM_DIR) -> subprocess.CompletedProcess[str]:
    return subprocess.run(cmd, capture_output=True, text=True, cwd=cwd, timeout=120)


@pytest.mark.parametrize("config", ["prometheus.yml", "prometheus.compose.yml"])
def test_promtool_check_config(promtool: str, config: str) -> None:
    proc = _run([promtool, "check", "config", config])
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "SUCCESS" in proc.stdout


def test_promtool_check_rules(promtool: str) -> None:
    proc = _run([promtool, "check", "rules", "alerts.yml"])
    assert proc.returncode == 0, proc.stdout + proc.stderr
    names = {r["alert"] for g in yaml.safe_load((PROM_DIR / "alerts.yml").read_text())["groups"] for r in g["rules"]}
    # the alerts the issue asks for
    for needed in ("StreamrecWorkerConsumerLagHigh", "StreamrecTrainerConsumerLagHigh", "StreamrecModelStale",
                   "StreamrecServingP99High", "StreamrecServingErrorRate", "StreamrecDeadLetterRateHigh",
                   "StreamrecAUCDrop"):
        assert needed in names


def test_alert_rules_unit_tests(promtool: str) -> None:
    """Each alert fires on a synthetic series that should trigger it, and stays quiet otherwise."""
    proc = _run([promtool, "test", "rules", "alerts.test.yml"])
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_promtool_rejects_a_bad_rule(promtool: str, tmp_path: Path) -> None:
    bad = tmp_path / "bad.yml"
    bad.write_text("groups:\n  - name: x\n    rules:\n      - alert: X\n        expr: rate(foo[5m]\n")
    assert _run([promtool, "check", "rules", str(bad)]).returncode != 0


def test_demo_config_generated_by_the_supervisor_is_valid(promtool: str, tmp_path: Path) -> None:
    svc = prometheus_service(tmp_path, {"stream": "127.0.0.1:9101", "trainer": "127.0.0.1:9102",
                                        "serving": "127.0.0.1:8000"}, port=0)
    assert svc is not None
    proc = _run([promtool, "check", "config", str(tmp_path / "prometheus.yml")])
    assert proc.returncode == 0, proc.stdout + proc.stderr


def _load_generator() -> Any:
    spec = importlib.util.spec_from_file_location("grafana_generate", GRAFANA_DIR / "generate.py")
    assert spec and spec.loader
    mod = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = mod  # dataclasses look their module up there
    spec.loader.exec_module(mod)
    return mod


def test_committed_dashboards_equal_the_generator_output() -> None:
    rendered = _load_generator().render()
    for name, text in rendered.items():
        path = GRAFANA_DIR / "dashboards" / name
        assert path.is_file(), f"{name} missing: run .venv/bin/python deploy/grafana/generate.py"
        assert path.read_text() == text, f"{name} is stale: run .venv/bin/python deploy/grafana/generate.py"


def test_dashboards_are_well_formed() -> None:
    uids = set()
    for path in sorted((GRAFANA_DIR / "dashboards").glob("*.json")):
        d = json.loads(path.read_text())
        assert d["uid"] not in uids
        uids.add(d["uid"])
        panels = list(walk_panels(d["panels"]))
        assert panels, path.name
        ids = [p["id"] for p in panels]
        assert len(ids) == len(set(ids))
        for p in panels:
            assert p["targets"], p["title"]
            assert p["datasource"]["uid"] == "streamrec-prometheus"
            for t in p["targets"]:
                assert t["expr"].strip()
    ds = yaml.safe_load((GRAFANA_DIR / "provisioning" / "datasources" / "prometheus.yml").read_text())
    assert ds["datasources"][0]["uid"] == "streamrec-prometheus"


# ---------------------------------------------------------------------------------------------------------------
# python -m deploy dashboards: the pure parts, then rendering from a real (empty) Prometheus


def green_pixels(png: Path) -> int:
    """Pixels near the first palette color: the first series' line (or a stat's value) is drawn in it."""
    rgb = np.asarray(Image.open(png).convert("RGB")).astype(int)
    return int((np.abs(rgb - (0x73, 0xBF, 0x69)).sum(axis=-1) < 60).sum())


def test_substitute_and_grafana_builtins() -> None:
    values = {**dashboards.grafana_builtins(range_s=900, step_s=4, scrape_s=2), "scenario": ".*", "s": "x"}
    # $__rate_interval = max(interval + scrape, 4 x scrape)
    assert values["__rate_interval"] == "8s" and values["__interval"] == "4s" and values["__range"] == "900s"
    expr = 'rate(m{scenario=~"$scenario",x="${s}"}[$__rate_interval])'
    assert dashboards.substitute(expr, values) == 'rate(m{scenario=~".*",x="x"}[8s])'
    with pytest.raises(DashboardError, match=r"\$task"):
        dashboards.substitute('m{task=~"$task"}', values)
    assert dashboards.parse_duration("1m30s") == 90 and dashboards.parse_duration("15m") == 900
    with pytest.raises(ValueError):
        dashboards.parse_duration("15 minutes")


def test_legend_follows_grafana_legend_format() -> None:
    labels = {"__name__": "m", "task": "click", "scenario": "comedy"}
    assert dashboards.legend("{{scenario}} {{task}}", labels, "expr") == "comedy click"
    assert dashboards.legend("__auto", labels, "expr") == 'm{scenario="comedy", task="click"}'
    assert dashboards.legend("{{status}}", {}, "sum(x) or vector(0)") == "sum(x) or vector(0)"


def test_layout_expands_collapsed_rows() -> None:
    panels = [
        {"type": "row", "collapsed": True, "gridPos": {"h": 1, "w": 24, "x": 0, "y": 0},
         "panels": [{"type": "timeseries", "id": 2, "gridPos": {"h": 8, "w": 12, "x": 12, "y": 1}}]},
        {"type": "row", "collapsed": False, "gridPos": {"h": 1, "w": 24, "x": 0, "y": 1}, "panels": []},
        {"type": "stat", "id": 4, "gridPos": {"h": 4, "w": 6, "x": 0, "y": 2}},
    ]
    placed = [(p.get("id"), x, y, w, h) for p, x, y, w, h in dashboards.layout(panels)]
    assert placed == [(None, 0, 0, 24, 1), (2, 12, 1, 12, 8), (None, 0, 9, 24, 1), (4, 0, 10, 6, 4)]


def test_format_value_by_unit() -> None:
    assert dashboards.format_value(0.25, "percentunit") == "25.0%"
    assert dashboards.format_value(0.0123, "s") == "12 ms"
    assert dashboards.format_value(300, "s") == "5.0 min"
    assert dashboards.format_value(1500, "ops") == "1.5K ops/s"
    assert dashboards.format_value(7, "short") == "7"


@pytest.fixture(scope="module")
def empty_prometheus(prometheus_bins: tuple[str, str], tmp_path_factory: pytest.TempPathFactory) -> Any:
    """A real Prometheus with the project's rules and no scrape targets: every streamrec series is absent."""
    run_dir = Path(tmp_path_factory.mktemp("prom-empty"))
    svc = prometheus_service(run_dir, {}, port=0, binary=prometheus_bins[0])
    assert svc is not None and svc.ready_url
    with Supervisor(run_dir) as sup:
        sup.start(svc)
        sup.wait_ready(svc.name, timeout_s=60)
        yield svc.ready_url.removesuffix("/-/ready")


def test_dashboards_render_without_data(empty_prometheus: str, tmp_path: Path) -> None:
    """Every panel of every dashboard becomes a decodable PNG; panels whose series are absent say "No data"."""
    results = dashboards.render(RenderConfig(out=tmp_path, prometheus=empty_prometheus, range_s=120))
    expected = {(path.stem, p["id"]) for path in (GRAFANA_DIR / "dashboards").glob("*.json")
                for p in walk_panels(json.loads(path.read_text())["panels"])}
    assert {(r.dashboard, r.id) for r in results} == expected
    for r in results:
        assert r.png and r.png.parent == tmp_path / r.dashboard, r.title
        with Image.open(r.png) as img:
            img.load()
            assert img.width >= 200 and img.height >= 100, r.title
        assert not r.errors, (r.title, r.errors)
        # only `... or vector(0)` panels have a series when nothing is scraped
        has_vector0 = any("vector(0)" in t.expr for t in r.targets)
        assert (r.lines > 0) == has_vector0 == r.has_data, r.title
        assert (green_pixels(r.png) > 0) == has_vector0, r.title
    for name in {r.dashboard for r in results}:
        with Image.open(tmp_path / f"{name}.png") as img:
            assert img.width == 24 * dashboards.COL_PX
    index = (tmp_path / "index.html").read_text()
    assert all(r.png and r.png.relative_to(tmp_path).as_posix() in index for r in results)


def test_dashboards_cli_reports_query_errors_and_unreachable_prometheus(
        empty_prometheus: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    dash = {"uid": "x", "title": "x", "templating": {"list": []}, "panels": [
        {"id": 1, "type": "timeseries", "title": "bad", "gridPos": {"h": 8, "w": 12, "x": 0, "y": 0},
         "targets": [{"refId": "A", "expr": "rate(up[", "legendFormat": ""}]},
        {"id": 2, "type": "stat", "title": "up", "gridPos": {"h": 8, "w": 12, "x": 12, "y": 0},
         "targets": [{"refId": "A", "expr": "vector(3)", "legendFormat": ""}]}]}
    (tmp_path / "d").mkdir()
    (tmp_path / "d" / "x.json").write_text(json.dumps(dash))
    out = tmp_path / "png"
    argv = ["--png", str(out), "--prometheus", empty_prometheus, "--range", "2m",
            "--dashboards", str(tmp_path / "d")]
    assert dashboards.main(argv) == 1
    captured = capsys.readouterr()
    assert "query error: x / bad: A: bad_data" in captured.err
    assert "2 panels from 1 dashboards" in captured.out and "1 with data" in captured.out
    assert green_pixels(out / "x" / "02-up.png") > 0  # the stat's value

    assert dashboards.main(["--png", str(out), "--prometheus", "http://127.0.0.1:9", "--dashboards",
                            str(tmp_path / "d")]) == 2
    assert "cannot reach Prometheus at http://127.0.0.1:9" in capsys.readouterr().err
