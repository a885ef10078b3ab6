"""The documentation stays true: docs/results.md is exactly what the committed result JSON renders to, every
number in it sits under its command and preset, README is a short front door, README and the topic pages carry no
session history, and every relative link resolves."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from deploy import results

REPO = Path(__file__).resolve().parents[2]
README = REPO / "README.md"
HISTORY_PAGES = {"experiments.md"}  # dated history is allowed there (and in CHANGELOG.md)
FORBIDDEN = ("this session", "earlier session", "previous session", "first attempt")
_LINK = re.compile(r"!?\[[^\]]*\]\(([^)\s]+)\)")
_ANCHOR_ID = re.compile(r'<a id="([^"]+)"')


def _current_pages() -> list[Path]:
    return [README, *sorted(p for p in (REPO / "docs").glob("*.md") if p.name not in HISTORY_PAGES)]


def _all_pages() -> list[Path]:
    return [README, REPO / "CHANGELOG.md", *sorted((REPO / "docs").glob("*.md"))]


def _slug(heading: str) -> str:
    """GitHub's heading anchor: lower case, punctuation dropped (word characters, '-' and spaces kept), ' ' -> '-'."""
    text = re.sub(r"[^\w\- ]", "", heading.strip().lower())
    return text.replace(" ", "-")


def _anchors(page: Path) -> set[str]:
    text = page.read_text(encoding="utf-8")
    text = re.sub(r"```.*?```", "", text, flags=re.DOTALL)
    heads = {_slug(m.group(1)) for m in re.finditer(r"^#{1,6} (.+)$", text, flags=re.MULTILINE)}
    return heads | set(_ANCHOR_ID.findall(text))


def test_results_md_is_generated_from_the_committed_json() -> None:
    committed = (REPO / "docs" / "results.md").read_text(encoding="utf-8")
    assert results.build() == committed, "docs/results.md is out of date: run python -m deploy results"


def test_results_check_cli_agrees(tmp_path: Path) -> None:
    ok = subprocess.run([sys.executable, "-m", "deploy", "results", "--check"], cwd=REPO, capture_output=True,
                        text=True, timeout=120)
    assert ok.returncode == 0, ok.stderr
    stale = tmp_path / "results.md"
    doc = (REPO / "docs" / "results.md").read_text(encoding="utf-8")
    number = re.search(r"\| (\d+\.\d+) \|", doc)  # the first number in a table
    assert number, "docs/results.md has no number in a table"
    stale.write_text(doc[:number.start(1)] + str(float(number.group(1)) + 0.01) + doc[number.end(1):])
    bad = subprocess.run([sys.executable, "-m", "deploy", "results", "--check", "--out", str(stale)], cwd=REPO,
                         capture_output=True, text=True, timeout=120)
    assert bad.returncode == 1 and "out of date" in bad.stderr


def test_every_results_table_names_its_command_and_preset() -> None:
    lines = (REPO / "docs" / "results.md").read_text(encoding="utf-8").splitlines()
    tables = [i for i, ln in enumerate(lines) if ln.startswith("|") and (i == 0 or not lines[i - 1].startswith("|"))]
    assert tables, "docs/results.md has no table"
    for i in tables:
        above = lines[i - 2] if i >= 2 else ""
        assert re.match(r"^Command: `python -m \S+ .+` · preset: `[^`]+`$", above), (i + 1, lines[i], above)
    numbers = [ln for ln in lines if re.search(r"\d", ln) and not ln.startswith(("|", "Command:", "#", "Source:"))]
    assert numbers == [], f"numbers outside a table under its command: {numbers}"


def _eval_json(metrics: dict[str, Any], **extra: Any) -> dict[str, Any]:
    return {"config": {"models": ["ranker", "dlrm"], "seed": 0, **extra}, "dataset": {"targets": 3},
            "metrics": metrics, "command": "python -m trainer.evaluate --dataset synthetic --out reports/x"}


def _scores(auc: float) -> dict[str, float]:
    return {"auc": auc, "gauc": auc - 0.1, "logloss": 0.5, "calibration": 1.0, "count": 3.0}


def test_old_and_new_metric_shapes_render_the_same(tmp_path: Path) -> None:
    old = {m: {"click": {"all": _scores(a), "drama": _scores(a - 0.05)}} for m, a in (("ranker", 0.7), ("dlrm", 0.6))}
    new = {m: {"click": {"overall": _scores(a), "scenarios": {"drama": _scores(a - 0.05)}}}
           for m, a in (("ranker", 0.7), ("dlrm", 0.6))}
    texts = []
    for name, metrics in (("old", old), ("new", new)):
        d = tmp_path / name / "eval"
        d.mkdir(parents=True)
        (d / "metrics.json").write_text(json.dumps(_eval_json(metrics, preset="laptop")))
        texts.append(results.build(tmp_path / name, tmp_path / name).replace(f"/{name}/", "/"))
    assert texts[0] == texts[1]
    assert "| ranker | click | 70.00 | 60.00 |" in texts[0] and "| click | +10.00 | +10.00 |" in texts[0]
    assert "preset: `laptop`" in texts[0] and "| drama | 3 | 65.00 | 55.00 | 55.00 | 45.00 |" in texts[0]


def test_a_scenario_named_all_in_the_new_shape_is_a_scenario(tmp_path: Path) -> None:
    new = {m: {"click": {"overall": _scores(0.7), "scenarios": {"all": _scores(0.9)}}} for m in ("ranker", "dlrm")}
    (tmp_path / "eval").mkdir()
    (tmp_path / "eval" / "metrics.json").write_text(json.dumps(_eval_json(new)))
    text = results.build(tmp_path, tmp_path)
    assert "| ranker | click | 70.00 |" in text and "| all | 3 | 90.00 |" in text


def test_preset_falls_back_to_the_model_shape_and_command_to_the_summary(tmp_path: Path) -> None:
    data = _eval_json({m: {"click": {"all": _scores(0.7)}} for m in ("ranker", "dlrm")},
                      ranker={"d_model": 16, "num_blocks": 1, "target_layers": 0, "q_heads": 2, "kv_heads": 1})
    del data["command"]
    (tmp_path / "eval").mkdir()
    (tmp_path / "eval" / "metrics.json").write_text(json.dumps(data))
    with pytest.raises(results.ResultsError, match="nothing reproduces it"):
        results.build(tmp_path, tmp_path)
    (tmp_path / "eval" / "summary.md").write_text("# x\n\nCommand: `python -m trainer.evaluate --limit 9`\n")
    text = results.build(tmp_path, tmp_path)
    assert "Command: `python -m trainer.evaluate --limit 9` · preset: `unnamed (from the config): ranker d_model=16" in text


def test_readme_is_a_short_front_door() -> None:
    n = len(README.read_text(encoding="utf-8").splitlines())
    assert n <= 150, f"README.md has {n} lines"
    text = README.read_text(encoding="utf-8")
    for page in sorted((REPO / "docs").glob("*.md")):
        assert f"(docs/{page.name})" in text, f"README does not link docs/{page.name}"


@pytest.mark.parametrize("page", _current_pages(), ids=lambda p: p.relative_to(REPO).as_posix())
def test_no_session_history_outside_experiments_and_changelog(page: Path) -> None:
    text = page.read_text(encoding="utf-8").lower()
    found = [w for w in FORBIDDEN if w in text]
    assert not found, f"{page.relative_to(REPO)} mentions {found}: history belongs in docs/experiments.md or CHANGELOG.md"


@pytest.mark.parametrize("page", _all_pages(), ids=lambda p: p.relative_to(REPO).as_posix())
def test_relative_links_resolve(page: Path) -> None:
    text = re.sub(r"```.*?```", "", page.read_text(encoding="utf-8"), flags=re.DOTALL)
    broken = []
    for target in _LINK.findall(text):
        if re.match(r"^[a-z][a-z0-9+.-]*:", target):  # http:, https:, mailto:
            continue
        path, _, anchor = target.partition("#")
        dest = (page.parent / path).resolve() if path else page
        if not dest.exists():
            broken.append(f"{target} (no such file)")
        elif anchor and dest.suffix == ".md" and anchor not in _anchors(dest):
            broken.append(f"{target} (no such anchor)")
    assert not broken, f"{page.relative_to(REPO)}: {broken}"


def _q(suite: str, model: str, seed: int, auc: float, scenario: str = "*", task: str = "click", preset: str = "p",
       variant: str = "", dataset: str = "movielens-1m", **extra: Any) -> dict[str, Any]:
    return {"suite": suite, "dataset": dataset, "preset": preset, "model": model, "variant": variant, "seed": seed,
            "scenario": scenario, "task": task, "auc": auc, "gauc": auc - 0.1, "n_targets": 100 if scenario == "*" else 40,
            "wall_s": 10.0 + seed, "targets_per_s": 1000.0, "commit": "abc1234",
            "command": f"python -m trainer.quality --suite {suite}", "limit_targets": None, **extra}


def _quality_fixture() -> list[dict[str, Any]]:
    recs = []
    for seed, d in ((0, 0.0), (1, 0.02)):
        recs += [_q("main", "ranker", seed, 0.70 + d), _q("main", "lr", seed, 0.60, preset=""),
                 _q("main", "ranker", seed, 0.65 + d, scenario="age_u25"), _q("main", "lr", seed, 0.55, "age_u25", preset=""),
                 _q("unified", "ranker", seed, 0.70 + d, variant="unified"),
                 _q("unified", "ranker", seed, 0.69 + d, variant="per-scenario"),
                 _q("unified", "ranker", seed, 0.66, "age_u25", variant="unified"),
                 _q("unified", "ranker", seed, 0.62, "age_u25", variant="per-scenario"),
                 _q("scaling", "ranker", seed, 0.70 + d, preset="small", flops_per_target=2e6),
                 _q("scaling", "ranker", seed, 0.72 + d, preset="large", flops_per_target=8e7),
                 _q("ablations", "ranker", seed, 0.70 + d, base_preset="p"),
                 _q("ablations", "ranker", seed, 0.68 + 2 * d, variant="no_cross", base_preset="p")]
    return recs


def test_quality_tables_render_from_a_synthetic_records_file(tmp_path: Path) -> None:
    (tmp_path / "quality.json").write_text(json.dumps(_quality_fixture()))
    text = results.build(tmp_path, tmp_path)
    lines = text.splitlines()
    # main: mean ± half range over the seeds, wall s and targets/s, per model/preset
    assert "| ranker (p) | click | 71.00 ± 1.00 | 61.00 ± 1.00 | 0, 1 | 100 | 10.5 | 1,000 |" in lines
    assert "| lr | click | 60.00 ± 0.00 | 50.00 ± 0.00 | 0, 1 | 100 | 10.5 | 1,000 |" in lines
    assert "| age_u25 | 40 | 56.00 ± 1.00 | 45.00 ± 0.00 |" in lines  # per-scenario GAUC, ranker then lr
    # unified vs per-scenario: the difference is paired by seed
    assert "| all scenarios | click | 100 | 71.00 ± 1.00 | 61.00 ± 1.00 | 70.00 ± 1.00 | 60.00 ± 1.00 | -1.00 ± 0.00 |" in lines
    assert "| age_u25 | click | 40 | 66.00 ± 0.00 | 56.00 ± 0.00 | 62.00 ± 0.00 | 52.00 ± 0.00 | -4.00 ± 0.00 |" in lines
    # scaling: sorted by FLOPs, the plot linked under the table
    small = lines.index("| small | click | 2.00 | 71.00 ± 1.00 | 61.00 ± 1.00 | 0, 1 | 10.5 | 1,000 |")
    assert lines[small + 1] == "| large | click | 80.00 | 73.00 ± 1.00 | 63.00 ± 1.00 | 0, 1 | 10.5 | 1,000 |"
    assert "![quality vs FLOPs per target](results/quality_scaling.png)" in lines
    # ablations: variant − baseline per seed (-2 then 0 points) -> -1.00 ± 1.00
    assert "| baseline | p | click | 71.00 ± 1.00 | 61.00 ± 1.00 | — | — | 0, 1 | 100 |" in lines
    assert "| no_cross | p | click | 70.00 ± 2.00 | 60.00 ± 2.00 | -1.00 ± 1.00 | -1.00 ± 1.00 | 0, 1 | 100 |" in lines
    # every table sits under its command and preset, no number outside a table (the rule docs/results.md follows)
    starts = [i for i, ln in enumerate(lines) if ln.startswith("|") and not lines[i - 1].startswith("|")]
    assert len(starts) == 5
    for i in starts:
        assert re.match(r"^Command: `python -m trainer\.quality --suite \w+` · preset: `[^`]+`$", lines[i - 2]), lines[i]
    stray = [ln for ln in lines if re.search(r"\d", ln) and not ln.startswith(("|", "Command:", "#", "Source:"))]
    assert stray == []
    assert results.main(["--results-dir", str(tmp_path), "--out", str(tmp_path / "results.md")]) == 0
    assert (tmp_path / "results.md").read_text() == text
    assert (tmp_path / "quality_scaling.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_a_quality_record_without_its_command_is_refused(tmp_path: Path) -> None:
    recs = _quality_fixture()
    recs[3]["command"] = ""
    (tmp_path / "quality.json").write_text(json.dumps(recs))
    with pytest.raises(results.ResultsError, match="nothing reproduces it"):
        results.build(tmp_path, tmp_path)


def _distill_fixture() -> list[dict[str, Any]]:
    """Teacher eval-ml100k (live, 2 snapshots stale) and students dlrm, ranker and ranker-per-scenario of preset
    laptop, 2 seeds, 2 tasks."""
    recs = []
    for seed in (0, 1):
        for task, t in (("click", 0.0), ("conversion", -0.1)):
            kw = {"dataset": "movielens", "task": task, "teacher_preset": "eval-ml100k"}
            recs += [_q("distill", "ranker", seed, 0.80 + t, preset="eval-ml100k", variant="teacher", **kw),
                     _q("distill", "ranker", seed, 0.78 + t, preset="eval-ml100k", variant="teacher-stale2", **kw)]
            for model, m in (("ranker-per-scenario", 0.03), ("dlrm", 0.0), ("ranker", 0.01)):
                base = 0.70 + 0.02 * seed + t + m
                for variant, d in (("distill-stale2", 0.004), ("no-distill", 0.0), ("distill", 0.01 - 0.01 * seed),
                                   ("distill-no-aux", 0.002), ("distill-no-adapter", 0.006)):
                    recs.append(_q("distill", model, seed, base + d, preset="laptop", variant=variant, **kw))
            recs.append(_q("distill", "dlrm", seed, 0.5, scenario="age_u25", preset="laptop", variant="distill", **kw))
    return recs


def _serving_bench() -> dict[str, Any]:
    def lat(p50: float) -> dict[str, float]:
        return {"p50_ms": p50, "p95_ms": 1.5 * p50, "p99_ms": 2 * p50, "mean_ms": p50, "min_ms": p50 / 2, "n": 100}

    models = {"student:laptop": {"role": "student", "preset": "laptop", "kind": "ranker", "cold": lat(10.0),
                                 "warm": lat(8.0)},
              "teacher:base": {"role": "teacher", "preset": "base", "kind": "ranker", "cold": lat(25.0),
                               "warm": lat(12.0)},
              "student-dlrm:laptop": {"role": "student-dlrm", "preset": "laptop", "kind": "dlrm", "cold": lat(5.0)}}
    return {"command": "python -m benchmarks.bench_distill_serving --out docs/results/distill_serving_bench.json",
            "date": "2026-01-02", "machine": "x86_64  (2 cores, shared), no GPU", "torch": "2.0",
            "load_average_before_after": [3.0, 2.0, 1.0, 4.0, 3.0, 2.0],
            "workload": {"history": 256, "candidates": 200, "torch_threads": 1, "pinned_cores": 1, "iters": 100,
                         "student": "laptop", "teachers": ["base"]}, "models": models}


def test_distillation_section_renders_teacher_students_deltas_and_the_serving_bench(tmp_path: Path) -> None:
    (tmp_path / "quality.json").write_text(json.dumps(_quality_fixture() + _distill_fixture()))
    (tmp_path / results.SERVING_BENCH_JSON).write_text(json.dumps(_serving_bench()))
    text = results.build(tmp_path, tmp_path)
    lines = text.splitlines()
    assert "Of the benchmarks, only the distillation serving latency has a committed result file" in text
    d = lines.index("## Distillation (teacher → students)")
    assert d > lines.index("## Quality suites") and "### distillation — `movielens` — teacher `eval-ml100k`" in lines
    # the teacher: live then stale, per task
    t0 = lines.index("| teacher | eval-ml100k | click | 80.00 ± 0.00 | 70.00 ± 0.00 | 0, 1 | 100 |")
    assert lines[t0 + 1] == "| teacher-stale2 | eval-ml100k | click | 78.00 ± 0.00 | 68.00 ± 0.00 | 0, 1 | 100 |"
    # per student kind, dlrm first; variants in order; Δ vs no-distill paired by seed (+1 then 0 points)
    dlrm = lines.index("#### distillation — `movielens` — student dlrm (laptop)")
    ranker = lines.index("#### distillation — `movielens` — student ranker (laptop)")
    per_scenario = lines.index("#### distillation — `movielens` — student ranker-per-scenario (laptop)")
    assert d < dlrm < ranker < per_scenario
    rows = lines[dlrm + 6:dlrm + 11]
    assert rows == ["| no-distill | click | 71.00 ± 1.00 | 61.00 ± 1.00 | — | — | 0, 1 | 100 |",
                    "| distill | click | 71.50 ± 0.50 | 61.50 ± 0.50 | +0.50 ± 0.50 | +0.50 ± 0.50 | 0, 1 | 100 |",
                    "| distill-no-aux | click | 71.20 ± 1.00 | 61.20 ± 1.00 | +0.20 ± 0.00 | +0.20 ± 0.00 | 0, 1 | 100 |",
                    "| distill-no-adapter | click | 71.60 ± 1.00 | 61.60 ± 1.00 | +0.60 ± 0.00 | +0.60 ± 0.00 | 0, 1 | 100 |",
                    "| distill-stale2 | click | 71.40 ± 1.00 | 61.40 ± 1.00 | +0.40 ± 0.00 | +0.40 ± 0.00 | 0, 1 | 100 |"]
    assert "| no-distill | conversion | 61.00 ± 1.00 | 51.00 ± 1.00 | — | — | 0, 1 | 100 |" in lines[dlrm:ranker]
    assert "| distill | click | 72.50 ± 0.50 | 62.50 ± 0.50 | +0.50 ± 0.50 | +0.50 ± 0.50 | 0, 1 | 100 |" in lines[ranker:]
    assert "| distill | click | 74.50 ± 0.50 | 64.50 ± 0.50 | +0.50 ± 0.50 | +0.50 ± 0.50 | 0, 1 | 100 |" in lines[per_scenario:]
    assert not any("50.00 ± 0.00" in ln for ln in lines[d:])  # the per-scenario record (AUC 0.5) is left out
    # the serving bench: each row over the Ranker student on the same path
    assert "| teacher ranker | base | cold | 25.00 | 37.50 | 50.00 | 2.50 | 2.50 |" in lines
    assert "| teacher ranker | base | warm | 12.00 | 18.00 | 24.00 | 1.50 | 1.50 |" in lines
    assert "| student dlrm | laptop | cold | 5.00 | 7.50 | 10.00 | 0.50 | 0.50 |" in lines
    src = next(ln for ln in lines if ln.startswith("Source: [`docs/results/distill_serving_bench.json`]"))
    assert "256 history events, 200 candidates" in src and "x86_64 (2 cores, shared)" in src and "load average 3.0" in src
    # the page's rules hold: every table under its command and preset, no number outside a table or source line
    starts = [i for i, ln in enumerate(lines) if ln.startswith("|") and not lines[i - 1].startswith("|")]
    assert len(starts) == 5 + 4 + 1
    for i in starts:
        assert re.match(r"^Command: `python -m \S+ .+` · preset: `[^`]+`$", lines[i - 2]), lines[i]
    assert "preset: `teacher eval-ml100k; students laptop`" in text
    stray = [ln for ln in lines if re.search(r"\d", ln) and not ln.startswith(("|", "Command:", "#", "Source:"))]
    assert stray == []


def test_distillation_alone_and_a_bad_serving_bench(tmp_path: Path) -> None:
    (tmp_path / "quality.json").write_text(json.dumps(_distill_fixture()))
    text = results.build(tmp_path, tmp_path)
    assert "## Quality suites" not in text and "## Distillation (teacher → students)" in text
    assert "Benchmark measurements have no committed result file yet" in text and "serving latency" not in text
    bench = _serving_bench()
    del bench["command"]
    (tmp_path / results.SERVING_BENCH_JSON).write_text(json.dumps(bench))
    with pytest.raises(results.ResultsError, match="nothing reproduces it"):
        results.build(tmp_path, tmp_path)


def test_main_renders_each_run_over_the_stream_parts_and_its_gap_to_dlrm(tmp_path: Path) -> None:
    def parts(*aucs: float) -> list[dict[str, Any]]:
        return [{"auc": a, "gauc": a - 0.1, "n_targets": 50} for a in aucs]

    recs = []
    for seed, d in ((0, 0.0), (1, 0.02)):
        recs += [_q("main", "ranker", seed, 0.70 + d, stream_parts=parts(0.66 + d, 0.74)),
                 _q("main", "dlrm", seed, 0.70, stream_parts=parts(0.64, 0.76)),
                 _q("main", "ranker", seed, 0.65, scenario="age_u25")]
    (tmp_path / "quality.json").write_text(json.dumps(recs))
    lines = results.build(tmp_path, tmp_path).splitlines()
    head = lines.index("| model | seeds | part 1 (50 targets) | part 2 (50 targets) |")
    assert lines[head - 2].startswith("Command: `python -m trainer.quality --suite main`")
    assert lines[head + 2] == "| ranker (p) | 0, 1 | 67.00 ± 1.00 / 57.00 ± 1.00 | 74.00 ± 0.00 / 64.00 ± 0.00 |"
    assert lines[head + 3] == "| dlrm (p) | 0, 1 | 64.00 ± 0.00 / 54.00 ± 0.00 | 76.00 ± 0.00 / 66.00 ± 0.00 |"
    # paired by seed: ranker − dlrm = +2, +4 in part 1 and -2, -2 in part 2
    assert lines[head + 4] == "| Δ ranker (p) − dlrm | 0, 1 | +3.00 ± 1.00 / +3.00 ± 1.00 | -2.00 ± 0.00 / -2.00 ± 0.00 |"
