"""trainer.quality: the suites' records (fields, per-scenario models, optional scaling/ablation interfaces) and the
merge/replace behaviour of the records file."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import torch

from model import PRESETS, Preset
from model import presets as model_presets
from streaming.datasets.synthetic import SyntheticConfig, generate
from trainer import quality
from trainer.quality import KEY, STREAM_PARTS, QualityConfig, load_records, run_suite

ROOT = Path(__file__).resolve().parents[2]
FIELDS = {*KEY, "auc", "gauc", "n_targets", "wall_s", "targets_per_s", "commit", "command", "limit_targets"}


@pytest.fixture(scope="module")
def events() -> list[Any]:  # 3 scenarios, ~2.4k impressions
    return generate(SyntheticConfig(num_users=60, num_items=150, requests_per_user=8, seed=4))


def _run(cfg: QualityConfig, events: list[Any]) -> tuple[list[dict[str, Any]], list[str]]:
    torch.set_num_threads(1)
    lines: list[str] = []
    return run_suite(cfg, log=lines.append, events=lambda _name: events), lines


def test_cli_main_suite_writes_records_and_a_rerun_replaces_only_its_own(tmp_path: Path) -> None:
    out = tmp_path / "quality.json"
    foreign = {"suite": "main", "dataset": "movielens", "preset": "", "model": "popularity", "variant": "", "seed": 0,
               "scenario": "*", "task": "click", "auc": 0.1, "gauc": 0.1, "n_targets": 1}
    out.write_text(json.dumps([foreign]))
    cmd = [sys.executable, "-m", "trainer.quality", "--suite", "main", "--datasets", "synthetic", "--models",
           "popularity,lr", "--seeds", "0", "--limit-targets", "3000", "--out", str(out)]
    r = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    assert "lr seed 0: 3000 targets" in r.stdout and "targets/s" in r.stdout
    recs = load_records(out)
    mine = [x for x in recs if x["dataset"] == "synthetic"]
    # 2 models x 2 tasks x (overall + 3 scenarios)
    assert len(mine) == 16 and foreign in recs
    for x in mine:
        assert set(x) >= FIELDS, FIELDS - set(x)
        assert x["suite"] == "main" and x["variant"] == "" and x["seed"] == 0 and x["limit_targets"] == 3000
        assert x["command"].startswith("python -m trainer.quality --suite main") and "--out" not in x["command"]
        assert x["commit"] and x["commit"] != "unknown" and 0 <= x["auc"] <= 1 and x["wall_s"] >= 0
    overall = {(x["model"], x["task"]): x for x in mine if x["scenario"] == "*"}
    assert {k[0] for k in overall} == {"popularity", "lr"}
    assert all(x["n_targets"] == 3000 for x in overall.values())
    # the overall records split the stream into STREAM_PARTS consecutive parts; the per-scenario ones do not
    for x in overall.values():
        assert [p["n_targets"] for p in x["stream_parts"]] == [750] * STREAM_PARTS
        assert all(0 <= p["auc"] <= 1 for p in x["stream_parts"])
    assert not any("stream_parts" in x for x in mine if x["scenario"] != "*")
    assert sum(x["n_targets"] for x in mine if x["model"] == "lr" and x["task"] == "click" and x["scenario"] != "*") == 3000
    # a rerun replaces its own records (a stale value disappears), keeps the foreign one
    stale = [dict(x, auc=0.999) if x["dataset"] == "synthetic" else x for x in recs]
    out.write_text(json.dumps(stale))
    r = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    again = load_records(out)
    assert len(again) == 17 and foreign in again and all(x["auc"] != 0.999 for x in again)


def test_unified_vs_per_scenario(events: list[Any], tmp_path: Path) -> None:
    cfg = QualityConfig(suite="unified", datasets=("synthetic",), presets=("laptop",), seeds=(0,), limit_targets=600,
                        out=tmp_path / "q.json")
    recs, lines = _run(cfg, events)
    assert len(lines) == 3 and "per-scenario" in lines[-1]
    by = {(r["variant"], r["scenario"], r["task"]): r for r in recs}
    scenarios = {"home", "search", "video"}
    for variant in ("unified", "per-scenario"):
        assert {s for v, s, _ in by if v == variant} == {"*", *scenarios}
        assert by[(variant, "*", "click")]["n_targets"] == 600
        assert sum(by[(variant, s, "click")]["n_targets"] for s in scenarios) == 600
    assert all(r["model"] == "ranker" and r["preset"] == "laptop" for r in recs)
    # each scenario's per-scenario record comes from its own model (its own wall time), '*' sums them
    walls = [by[("per-scenario", s, "click")]["wall_s"] for s in scenarios]
    assert by[("per-scenario", "*", "click")]["wall_s"] == pytest.approx(sum(walls), abs=0.01)
    assert by[("per-scenario", "home", "click")]["auc"] != by[("unified", "home", "click")]["auc"]
    assert load_records(cfg.out) == sorted(recs, key=lambda r: tuple(str(r[k]) for k in KEY))


def test_scaling_and_ablations_follow_model_presets(events: list[Any], tmp_path: Path,
                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    out = tmp_path / "q.json"
    monkeypatch.delattr(model_presets, "SCALING", raising=False)
    monkeypatch.delattr(model_presets, "ABLATIONS", raising=False)
    for suite in ("scaling", "ablations"):
        recs, lines = _run(QualityConfig(suite=suite, datasets=("synthetic",), out=out), events)
        assert recs == [] and "nothing to run" in lines[0] and not out.exists()

    def small(p: Preset) -> Preset:
        return p.with_changes(max_history=8)

    calls: list[tuple[str, int, int]] = []

    def flops(p: Preset, n_history: int, n_targets: int) -> float:
        calls.append((p.name, n_history, n_targets))
        return 1000.0 * p.max_history

    monkeypatch.setattr(model_presets, "SCALING", ("laptop",), raising=False)
    monkeypatch.setattr(model_presets, "ABLATIONS", {"short-history": small}, raising=False)
    monkeypatch.setattr(model_presets, "flops_per_target", flops, raising=False)
    recs, _ = _run(QualityConfig(suite="scaling", datasets=("synthetic",), seeds=(0,), limit_targets=300, out=out),
                   events)
    assert {r["preset"] for r in recs} == {"laptop"} and all(r["flops_per_target"] == 32000.0 for r in recs)
    assert calls and calls[0][0] == "laptop" and 0 < calls[0][1] <= 32 + 16 and calls[0][2] >= 1
    recs, _ = _run(QualityConfig(suite="ablations", datasets=("synthetic",), presets=("laptop",), seeds=(0,),
                                 limit_targets=300, out=out), events)
    assert {r["variant"] for r in recs} == {"", "short-history"} and "flops_per_target" not in recs[0]
    assert all(r["base_preset"] == "laptop" for r in recs)
    assert {r["suite"] for r in load_records(out)} == {"scaling", "ablations"}  # merged, both kept


def test_main_suite_gives_dlrm_the_longest_history_of_its_presets() -> None:
    presets = ("eval-ml100k", "eval-ml1m", "small")
    assert PRESETS["eval-ml1m"].max_history > max(PRESETS[p].max_history for p in presets if p != "eval-ml1m")
    runs = quality.plan(QualityConfig(suite="main", datasets=("synthetic",), presets=presets, seeds=(0, 1)))
    dlrm = [r for r in runs if r.model == "dlrm"]
    assert [r.seed for r in dlrm] == [0, 1]
    assert all(r.preset.name == r.preset_label == "eval-ml1m" for r in dlrm)
    assert [r.preset.name for r in runs if r.model == "ranker" and r.seed == 0] == list(presets)
    # a tie keeps the first of the longest
    assert quality.dlrm_shape(("eval-ml100k", "small")).name == "eval-ml100k"


def test_config_is_validated() -> None:
    with pytest.raises(ValueError, match="suite"):
        QualityConfig(suite="nope", datasets=("synthetic",))
    with pytest.raises(ValueError, match="datasets"):
        QualityConfig(suite="main", datasets=("log",))
    with pytest.raises(ValueError, match="datasets"):
        QualityConfig(suite="main", datasets=("movielens:genre",))
    assert QualityConfig(suite="unified", datasets=("movielens-1m:genre",)).datasets == ("movielens-1m:genre",)
    with pytest.raises(ValueError, match="presets"):
        QualityConfig(suite="main", datasets=("synthetic",), presets=("huge",))
    assert set(PRESETS) >= set(QualityConfig(suite="main", datasets=("synthetic",)).presets)


def test_help_lists_the_suites(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as e:
        quality.main(["--help"])
    text = capsys.readouterr().out
    assert e.value.code == 0 and all(s in text for s in quality.SUITES) and "--limit-targets" in text
