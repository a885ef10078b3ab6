"""Offline evaluation: progressive protocol, determinism, report files, CLI, popularity baseline."""

from __future__ import annotations

import dataclasses
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from model import DLRMBaseline, DLRMConfig, RankerConfig
from model.features import FeatureSpec
from streaming.core import run_offline
from streaming.datasets.synthetic import SyntheticConfig, generate
from trainer.baselines import PopularityBaseline
from trainer.eval_report import write_report
from trainer.evaluate import EvalConfig, build_batches, evaluate, run_neural, score
from trainer.optim import OptimConfig

ROOT = Path(__file__).resolve().parents[2]
TINY_RANKER = RankerConfig(d_model=16, num_blocks=1, target_layers=1, q_heads=2, kv_heads=1, head_dim=8,
                           num_experts=2, expert_dim=16)
TINY = EvalConfig(batch_samples=8, points=4, preset="", max_history=32, ranker=TINY_RANKER, dlrm=DLRMConfig(embed_dim=8),
                  seed=3)


@pytest.fixture(scope="module")
def events():  # ~1.2k impressions, 3 scenarios
    return generate(SyntheticConfig(num_users=40, num_items=120, requests_per_user=6, seed=5))


@pytest.mark.slow
def test_evaluate_is_deterministic_and_writes_the_report(events, tmp_path: Path) -> None:
    torch.set_num_threads(1)
    a = evaluate(events, TINY)
    b = evaluate(events, TINY)
    assert a.metrics == b.metrics  # same seed -> bit-identical numbers
    assert a.dataset["targets"] == a.dataset["impression"] == 40 * 6 * 5
    for model in ("ranker", "dlrm", "popularity"):
        for task in ("click", "conversion"):
            assert set(a.metrics[model][task]["scenarios"]) == {"home", "search", "video"}
            m = a.metrics[model][task]["overall"]
            assert m["count"] == 1200 and 0.0 < m["auc"] < 1.0 and m["logloss"] > 0
            assert sum(v["count"] for v in a.metrics[model][task]["scenarios"].values()) == 1200
            assert len(a.timeline[model][task]["overall"]["auc"]) == 4
    c = evaluate(events, dataclasses.replace(TINY, seed=4))
    assert c.metrics["ranker"] != a.metrics["ranker"]  # the seed matters (model init)
    assert c.metrics["popularity"] == a.metrics["popularity"]
    files = write_report(a, tmp_path, "synthetic", "pytest")
    names = {f.name for f in files}
    assert {"summary.md", "metrics.json", "auc_click.png", "gauc_conversion.png", "logloss_click.png"} <= names
    for f in files:
        assert f.stat().st_size > 0
    assert all(f.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" for f in files if f.suffix == ".png")
    md = (tmp_path / "summary.md").read_text()
    assert "| ranker | click |" in md and "| dlrm | click |" in md and "| popularity | click |" in md
    assert "Ranker − DLRM" in md
    mj = json.loads((tmp_path / "metrics.json").read_text())
    assert mj["metrics"]["ranker"]["click"]["overall"]["auc"] == pytest.approx(
        a.metrics["ranker"]["click"]["overall"]["auc"])


def test_predictions_are_made_before_learning(events) -> None:
    """Flipping the labels of the last batch changes no prediction; flipping the first batch's changes later ones."""
    torch.set_num_threads(1)
    spec = FeatureSpec(max_history=16)
    samples = run_offline(events[:1500])
    batches = build_batches(samples, spec, 8)
    assert len(batches) >= 3

    def preds(flip: int | None) -> np.ndarray:
        bs = list(batches)
        if flip is not None:
            group, b = bs[flip]
            bs[flip] = (group, dataclasses.replace(b, labels={t: 1.0 - y for t, y in b.labels.items()}))
        torch.manual_seed(0)
        return run_neural(DLRMBaseline(spec, DLRMConfig(embed_dim=8)), bs, spec, OptimConfig(), 0).probs["click"]

    base = preds(None)
    assert np.array_equal(base, preds(len(batches) - 1))
    flipped_first = preds(0)
    n0 = batches[0][1].num_targets
    assert np.array_equal(base[:n0], flipped_first[:n0])
    assert not np.allclose(base[n0:], flipped_first[n0:])


def test_popularity_baseline_is_progressive() -> None:
    pop = PopularityBaseline(("click",), smoothing=2.0)
    first = pop.predict(["a", "b"])["click"].tolist()
    assert first == [0.5, 0.5]  # prior (0+1)/(0+2), nothing counted yet
    pop.update(["a", "a", "a", "b"], {"click": [1, 1, 1, 0]})
    prior = (3 + 1) / (4 + 2)
    got = pop.predict(["a", "b", "new"])["click"].tolist()
    assert got == pytest.approx([(3 + 2 * prior) / (3 + 2), (0 + 2 * prior) / (1 + 2), prior])


def test_score_matches_hand_computed_metrics() -> None:
    p = np.array([0.9, 0.1, 0.8, 0.3, 0.6, 0.7])
    y = np.array([1.0, 0.0, 0.0, 1.0, 1.0, 0.0])
    u = np.array([1, 1, 2, 2, 3, 3])
    r = score(p, y, u)
    # pairs (pos, neg): 9 total; correctly ordered: 0.9>all 3 negs, 0.6>0.1, 0.3>0.1 -> 5/9
    assert r["auc"] == pytest.approx(5 / 9)
    assert r["gauc"] == pytest.approx((1.0 + 1.0 * 0 + 0.0) / 3)  # user 1: 1, user 2: 0, user 3: 0
    assert r["logloss"] == pytest.approx(float(-np.mean(y * np.log(p) + (1 - y) * np.log(1 - p))))


@pytest.mark.slow
def test_cli_synthetic_report(tmp_path: Path) -> None:
    out = tmp_path / "eval"
    r = subprocess.run([sys.executable, "-m", "trainer.evaluate", "--dataset", "synthetic", "--syn-users", "30",
                        "--syn-requests", "4", "--out", str(out), "--preset", "laptop", "--d-model", "16",
                        "--target-layers", "1", "--mf-dim", "4", "--dlrm-dim", "8", "--threads", "1", "--points", "3",
                        "--rank-loss-weight", "0.1"],
                       cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-2000:]
    assert "ranker" in r.stdout and "popularity" in r.stdout and "ranker − dlrm (click)" in r.stdout
    assert (out / "summary.md").is_file() and (out / "auc_click.png").is_file()
    cfg = json.loads((out / "metrics.json").read_text())["config"]  # the numbers name their preset and overrides
    assert cfg["preset"] == cfg["ranker"]["preset"] == "laptop"
    assert (cfg["ranker"]["d_model"], cfg["ranker"]["target_layers"], cfg["ranker"]["num_blocks"],
            cfg["ranker"]["mf_dim"]) == (16, 1, 1, 4)
    assert (cfg["max_history"], cfg["max_realtime"], cfg["max_table_rows"]) == (32, 16, 32768)
    assert cfg["optim"]["rank_loss_weight"] == 0.1
    assert "Ranker preset: `laptop`" in (out / "summary.md").read_text()
    bad = subprocess.run([sys.executable, "-m", "trainer.evaluate", "--dataset", "log", "--path",
                          str(tmp_path / "missing.csv"), "--user-col", "u", "--item-col", "i", "--ts-col", "t",
                          "--label", "click=c", "--out", str(out)], cwd=ROOT, capture_output=True, text=True,
                         timeout=300)
    assert bad.returncode == 2 and "missing.csv: no such file" in bad.stderr


def test_a_scenario_named_all_keeps_its_own_row_next_to_the_overall(tmp_path: Path) -> None:
    """Scenario names are open strings: a scenario literally called ``all`` is reported as a scenario (metrics,
    timeline, metrics.json, summary.md) and the overall numbers cover every target once."""
    from trainer.evaluate import EvalResult, Predictions, Targets, compute_metrics

    scen = np.array(["all", "all", "all", "all", "home", "home", "home", "home"], dtype=object)
    y = np.array([1.0, 0.0, 1.0, 0.0, 1.0, 0.0, 0.0, 1.0])
    p = np.array([0.9, 0.1, 0.8, 0.2, 0.3, 0.6, 0.7, 0.4])  # "all" ranks perfectly, "home" inverted
    tg = Targets({"click": y, "conversion": y}, scen, np.array([1, 1, 2, 2, 3, 3, 4, 4]),
                 np.arange(8, dtype=np.float64), [f"i{i}" for i in range(8)])
    metrics, timeline, ends = compute_metrics({"popularity": Predictions({"click": p, "conversion": p}, 0.0)}, tg,
                                              points=2)
    m = metrics["popularity"]["click"]
    assert m["overall"]["count"] == 8
    assert m["overall"]["auc"] == pytest.approx(score(p, y, tg.users)["auc"])
    assert set(m["scenarios"]) == {"all", "home"}
    assert m["scenarios"]["all"]["count"] == 4 and m["scenarios"]["all"]["auc"] == 1.0
    assert m["scenarios"]["home"]["auc"] == 0.0
    assert len(timeline["popularity"]["click"]["scenarios"]["all"]["auc"]) == 2
    assert timeline["popularity"]["click"]["overall"]["count"] == [4.0, 4.0]

    cfg = dataclasses.replace(EvalConfig(), models=("popularity",))
    res = EvalResult(cfg, {"events": 16, "impression": 8, "feedback": 8, "samples": 4, "targets": 8, "users": 4,
                           "targets_per_scenario": {"all": 4, "home": 4},
                           "label_rate": {"click": 0.5, "conversion": 0.5}},
                     metrics, timeline, ends, {"core": 0.0})
    write_report(res, tmp_path, "synthetic", "pytest")
    mj = json.loads((tmp_path / "metrics.json").read_text())
    assert mj["metrics"]["popularity"]["click"]["scenarios"]["all"]["auc"] == 1.0
    assert mj["metrics"]["popularity"]["click"]["overall"]["count"] == 8
    md = (tmp_path / "summary.md").read_text()
    per_scenario = md.split("## Per scenario", 1)[1].split("### conversion", 1)[0]
    rows = [line for line in per_scenario.splitlines() if line.startswith("| ")]
    assert [r.split(" | ")[0] for r in rows[1:]] == ["| all", "| home"]  # header, then one row per scenario
    assert rows[1].split(" | ")[1:3] == ["4", "100.00"]  # the scenario "all": 4 targets, AUC 100
