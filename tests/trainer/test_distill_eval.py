"""The ``distill`` quality suite (trainer/distill_eval.py) on a small synthetic stream: every variant runs, records
are the suite's shape, stale teachers come from older snapshots."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from model import Ranker
from model.batch import collate
from model.presets import shaped_spec
from streaming.datasets.synthetic import SyntheticConfig, generate
from tests.trainer.conftest import make_samples
from tests.trainer.test_distill import TINY
from trainer.distill_eval import run_teacher, scores_for, student_variants, teacher_table
from trainer.optim import OptimConfig
from trainer.quality import KEY, QualityConfig, load_records, run_suite


def test_distill_suite_runs_every_variant_on_synthetic_data(tmp_path: Path) -> None:
    events: list[Any] = generate(SyntheticConfig(num_users=40, num_items=100, requests_per_user=6, seed=2))
    out = tmp_path / "q.json"
    cfg = QualityConfig(suite="distill", datasets=("synthetic",), presets=("laptop", "laptop"), seeds=(0,),
                        limit_targets=400, out=out, command="pytest", distill_stale=(1,))
    torch.set_num_threads(1)
    lines: list[str] = []
    recs = run_suite(cfg, log=lines.append, events=lambda _n: events)
    # (2 teacher + 4 students x 5 variants) x 2 tasks x (overall + 3 scenarios)
    assert len(load_records(out)) == len(recs) == 22 * 2 * 4
    overall = {(r["model"], r["variant"]): r for r in recs if r["scenario"] == "*" and r["task"] == "click"}
    variants = [v for v, _ in student_variants((1,))]
    assert set(overall) == {("ranker", "teacher"), ("ranker", "teacher-stale1")} | {
        (m, v) for m in ("dlrm", "ranker", "dlrm-per-scenario", "ranker-per-scenario") for v in variants}
    # a per-scenario student's scenario records come from its scenario models: together they cover every target
    per = [r for r in recs if r["model"] == "ranker-per-scenario" and r["variant"] == "distill"
           and r["task"] == "click" and r["scenario"] != "*"]
    assert len(per) == 3 and sum(r["n_targets"] for r in per) == 400
    assert overall[("ranker-per-scenario", "distill")]["auc"] != overall[("ranker-per-scenario", "no-distill")]["auc"]
    for r in overall.values():
        assert r["n_targets"] == 400 and r["teacher_preset"] == "laptop" and 0.0 <= r["auc"] <= 1.0
        assert set(r) >= set(KEY)
    assert len({tuple(r[k] for k in KEY) for r in recs}) == len(recs)  # no two records share a key
    # distillation changes what the student learns (its scores), the label-only baseline is another run
    assert overall[("dlrm", "distill")]["auc"] != overall[("dlrm", "no-distill")]["auc"]
    assert any("teacher seed 0" in x for x in lines)


def test_stale_teacher_scores_come_from_the_snapshot_n_behind_the_newest() -> None:
    spec = shaped_spec(8, 4, 1024)
    samples = make_samples(30, seed=5)
    batches = [collate(samples[i:i + 3], spec) for i in range(0, 30, 3)]  # 10 batches
    torch.manual_seed(0)
    live, stale, _ = run_teacher(Ranker(spec, TINY), batches, spec, OptimConfig(), 0, stale=(0, 1), snapshot_every=2)
    # snapshot j = the state before batch 2j: with N = 0, batch 2j scores exactly as the live teacher did
    for b in range(0, 10, 2):
        for t in spec.tasks:
            torch.testing.assert_close(stale[0][b][t], live[b][t], rtol=0, atol=1e-6)
    # N = 1: batches 0..3 read snapshot 0 (the initial model); later ones a trained snapshot
    for t in spec.tasks:
        torch.manual_seed(0)
        fresh = Ranker(spec, TINY)
        with torch.no_grad():
            init = torch.sigmoid(fresh(batches[3])[t])
        torch.testing.assert_close(stale[1][3][t], init, rtol=0, atol=1e-6)
    assert not torch.allclose(stale[1][5]["click"], live[5]["click"])


def test_teacher_scores_join_other_batches_of_the_same_targets_by_event_id() -> None:
    spec = shaped_spec(8, 4, 1024)
    samples = make_samples(24, seed=3)
    whole = [collate(samples[i:i + 4], spec) for i in range(0, 24, 4)]
    scores = [{"click": torch.rand(b.num_targets)} for b in whole]
    table = teacher_table(whole, scores)
    # one batch of every sample in reverse order: each target gets the score it had in its own batch
    other = [collate(samples[::-1], spec)]
    joined = scores_for(other, table)[0]["click"].tolist()
    by_id = {e: float(p) for b, s in zip(whole, scores, strict=True)
             for e, p in zip(b.target_event_ids, s["click"], strict=True)}
    assert joined == [by_id[e] for e in other[0].target_event_ids]
    assert sorted(joined) == sorted(float(x) for s in scores for x in s["click"])
