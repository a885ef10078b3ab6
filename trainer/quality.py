"""Quality suites: ``python -m trainer.quality --suite main|unified|scaling|ablations|distill`` → docs/results/quality.json.

Every run is the offline progressive evaluation of :mod:`trainer.evaluate` (events → the worker's pure core →
user-level samples → batches → predict-then-train with ``Trainer.train_step``; the same presets as ``python -m
trainer`` and the demo, only the data source differs), repeated over datasets × models/presets × seeds:

=============  =================================================================================================
suite          runs (per dataset and seed)
=============  =================================================================================================
``main``       ``ranker`` per ``--presets`` entry, ``dlrm`` (:func:`dlrm_shape`'s feature spec), ``popularity``,
               ``lr``; datasets movielens-1m and movielens
``unified``    ``ranker`` variant ``unified`` (one model, every scenario's targets) vs variant ``per-scenario``
               (one model per scenario, trained only on that scenario's targets: each sample's targets are
               filtered to the scenario, samples left without targets dropped; histories keep every scenario);
               each scenario's per-scenario record comes from its own model, its ``*`` record from the
               concatenated predictions; dataset movielens-1m (the age-group scenarios; ``movielens-1m:genre``
               is ML-1M with the genre-group scenarios)
``scaling``    ``ranker`` for each preset name in ``model.presets.SCALING``; records carry ``flops_per_target``
               when ``model.presets.flops_per_target(preset, n_history, n_targets)`` exists
``ablations``  ``ranker`` for each ``--presets`` entry (variant ``""``, the baseline) and for each
               ``model.presets.ABLATIONS[variant](preset)``; records carry ``base_preset``
``distill``    a teacher Ranker (first ``--presets`` entry) and students (``dlrm``, ``ranker`` of the second entry,
               else ``laptop``) with/without distillation of its leak-free scores, ablations no aux head / no
               adapter / a teacher stale by N snapshots (``--distill-stale``): :mod:`trainer.distill_eval`;
               records carry ``teacher_preset``
=============  =================================================================================================

Records (one per run × scenario × task; scenario ``*`` = overall)::

    {suite, dataset, preset, model, variant, seed, scenario, task, auc, gauc, n_targets, wall_s, targets_per_s,
     commit, command, limit_targets[, stream_parts][, flops_per_target][, base_preset]}

``stream_parts`` (overall records): ``[{auc, gauc, n_targets}, ...]`` over :data:`STREAM_PARTS` consecutive equal
parts of the run's target stream (stream order), so a table can show where one model gains on another.

``wall_s`` is the model's predict-then-train pass (the shared core and collate are printed, not recorded);
``commit`` is ``git rev-parse --short HEAD`` plus ``-dirty`` when tracked files differ from it. Records are merged
into ``--out`` keyed by (suite, dataset, preset, model, variant, seed, scenario, task): a rerun replaces its own
records and keeps every other; the file is rewritten after every finished run. ``python -m deploy results`` renders
the tables and plots of docs/results.md from it.

Example:
    >>> record_key({"suite": "main", "dataset": "movielens", "preset": "eval-ml100k", "model": "ranker",
    ...             "variant": "", "seed": 0, "scenario": "*", "task": "click"})
    ('main', 'movielens', 'eval-ml100k', 'ranker', '', 0, '*', 'click')
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import os
import subprocess
import sys
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from model import PRESETS, Preset
from model import presets as model_presets
from model.batch import Batch
from model.features import FeatureSpec
from streaming import cli
from streaming.config import CoreConfig
from streaming.datasets import DatasetError
from streaming.datasets.load import DATASETS, add_dataset_args, load_dataset
from streaming.sample import Sample
from streaming.spec import DEFAULT_HISTORY_LEN
from trainer.evaluate import (
    DEFAULT_PRESET,
    EvalConfig,
    Predictions,
    Targets,
    build_batches,
    collect_targets,
    default_core,
    make_samples,
    run_model,
    score,
)

SUITES = ("main", "unified", "scaling", "ablations", "distill")
MAIN_MODELS = ("ranker", "dlrm", "popularity", "lr")
# the distill suite's students: a model kind, alone or as one model per scenario (ExFM's vertical models) trained
# on that scenario's targets only, each with the unified teacher's scores of them
DISTILL_STUDENTS = ("dlrm", "ranker", "dlrm-per-scenario", "ranker-per-scenario")
# the datasets of streaming.datasets.load (not ``log``: no fixed file), and ML-1M with its genre-group scenarios
QUALITY_DATASETS: tuple[str, ...] = (*(d for d in DATASETS if d != "log"), "movielens-1m:genre")
DEFAULT_DATASETS: dict[str, tuple[str, ...]] = {
    "main": ("movielens-1m", "movielens"), "unified": ("movielens-1m",), "scaling": ("movielens-1m",),
    "ablations": ("movielens-1m",), "distill": ("movielens-1m",)}
DEFAULT_OUT = Path("docs/results/quality.json")
KEY = ("suite", "dataset", "preset", "model", "variant", "seed", "scenario", "task")
OVERALL = "*"
EPILOG = """suites (per dataset and seed):
  main       ranker (each --presets entry), dlrm (on the entry with the longest history), popularity, lr;
             datasets movielens-1m, movielens
  unified    ranker on every scenario (variant unified) vs one ranker per scenario trained on that scenario's
             targets only (variant per-scenario; histories keep every scenario); dataset movielens-1m
  scaling    ranker for each preset of model.presets.SCALING (+ flops_per_target); dataset movielens-1m
  ablations  ranker for each --presets entry (variant "") and each model.presets.ABLATIONS variant of it;
             dataset movielens-1m
  distill    teacher ranker (first --presets entry) -> students dlrm and ranker (second entry, else laptop),
             each also one model per scenario (--distill-students): no-distill, distill (aux head + adapter),
             distill-no-aux, distill-no-adapter, distill-staleN (--distill-stale); dataset movielens-1m

Records {suite, dataset, preset, model, variant, seed, scenario ("*" = overall), task, auc, gauc, n_targets,
wall_s, targets_per_s, commit, command, limit_targets} are merged into --out: a rerun replaces the records with
its keys and keeps the rest. python -m deploy results renders docs/results.md from them."""
Batches = list[tuple[list[Sample], Batch]]


@dataclass(frozen=True)
class QualityConfig:
    """One invocation of a suite (built only in :func:`main`).

    Attributes:
        suite: one of :data:`SUITES`.
        datasets: dataset names (``--dataset`` values of ``trainer.evaluate``; not ``log``).
        presets: preset names: the Ranker's of ``main`` (the longest-history one shapes the DLRM's feature spec,
            :func:`dlrm_shape`), the base presets of ``ablations``, the one of ``unified``; ``scaling`` uses
            ``model.presets.SCALING``.
        seeds: torch seeds (model init); the non-neural models run once per seed as well (same numbers).
        models: the models of ``main``.
        limit_targets: only this prefix of each dataset's target stream (None = all).
        batch_samples: samples per step (the evaluation's).
        out: the JSON file records are merged into.
        command: the command line recorded with each record.
        distill_stale: ``distill``: the teacher staleness ablations, in snapshots behind its newest.
        distill_students: ``distill``: which students run (:data:`DISTILL_STUDENTS`).
        distill_weight: ``distill``: w, the distillation loss's weight (``DistillConfig.weight``); other than 1,
            the distilling variants' names end in ``-w<w>`` (``distill-w3``), so their records sit beside w = 1's.
    """

    suite: str
    datasets: tuple[str, ...]
    presets: tuple[str, ...] = (DEFAULT_PRESET,)
    seeds: tuple[int, ...] = (0, 1)
    models: tuple[str, ...] = MAIN_MODELS
    limit_targets: int | None = None
    batch_samples: int = EvalConfig.batch_samples
    out: Path = DEFAULT_OUT
    command: str = ""
    distill_stale: tuple[int, ...] = (2,)
    distill_students: tuple[str, ...] = DISTILL_STUDENTS
    distill_weight: float = 1.0

    def __post_init__(self) -> None:
        if self.suite not in SUITES:
            raise ValueError(f"suite must be one of {SUITES}, got {self.suite!r}")
        bad = [d for d in self.datasets if d not in QUALITY_DATASETS]
        if bad or not self.datasets:
            raise ValueError(f"datasets must be among {list(QUALITY_DATASETS)}, got {self.datasets}")
        unknown = [p for p in self.presets if p not in PRESETS]
        if unknown or not self.presets:
            raise ValueError(f"unknown presets {unknown} (known: {sorted(PRESETS)})")
        if not self.seeds:
            raise ValueError("at least one seed")
        if not self.models or any(m not in MAIN_MODELS for m in self.models):
            raise ValueError(f"models must be a non-empty subset of {MAIN_MODELS}, got {self.models}")
        if not self.distill_students or any(m not in DISTILL_STUDENTS for m in self.distill_students):
            raise ValueError(f"distill_students must be a non-empty subset of {DISTILL_STUDENTS}, "
                             f"got {self.distill_students}")
        if not self.distill_weight > 0:
            raise ValueError(f"distill_weight must be > 0, got {self.distill_weight}")
        if self.limit_targets is not None and self.limit_targets < 1:
            raise ValueError("limit_targets must be >= 1")


@dataclass(frozen=True)
class Run:
    """One model training pass: which model, on which preset (its feature spec), labelled how."""

    model: str
    preset: Preset
    seed: int
    variant: str = ""
    preset_label: str = ""  # the record's preset ('' for models no preset shapes)
    per_scenario: bool = False
    base_preset: str = ""  # ablations: the preset the variant was made from


# ---------------------------------------------------------------------------------------------- records file
def record_key(r: dict[str, Any]) -> tuple[Any, ...]:
    """The identity of a record: a rerun replaces the records with the same key."""
    return tuple(r[k] for k in KEY)


def load_records(path: Path) -> list[dict[str, Any]]:
    """The records of ``path`` ([] when it does not exist)."""
    if not path.exists():
        return []
    data = json.loads(path.read_text(encoding="utf-8"))
    if not isinstance(data, list):
        raise ValueError(f"{path}: expected a JSON list of records")
    return data


def merge_records(old: Iterable[dict[str, Any]], new: Iterable[dict[str, Any]]) -> list[dict[str, Any]]:
    """``old`` with every record whose key is in ``new`` replaced by ``new``'s, sorted by key.

    Example:
        >>> base = {"suite": "main", "dataset": "d", "preset": "p", "model": "m", "variant": "", "scenario": "*",
        ...         "task": "click"}
        >>> old = [{**base, "seed": 0, "auc": 0.5}, {**base, "seed": 1, "auc": 0.6}]
        >>> [(r["seed"], r["auc"]) for r in merge_records(old, [{**base, "seed": 1, "auc": 0.7}])]
        [(0, 0.5), (1, 0.7)]
    """
    merged = {record_key(r): r for r in old}
    merged.update({record_key(r): r for r in new})
    return [merged[k] for k in sorted(merged, key=lambda k: tuple(str(x) for x in k))]


def write_records(path: Path, records: Sequence[dict[str, Any]]) -> None:
    """One record per line (diffable), written atomically (a temp file per process: suites may run side by side,
    each merging into what is on disk just before it writes)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f"{path.name}.{os.getpid()}.tmp")
    body = ",\n".join(json.dumps(r, sort_keys=True, allow_nan=False) for r in records)
    tmp.write_text("[\n" + body + "\n]\n" if records else "[]\n", encoding="utf-8")
    os.replace(tmp, path)


def git_commit(root: Path | None = None) -> str:
    """``git rev-parse --short HEAD`` + ``-dirty`` if tracked files differ from it; ``unknown`` outside git."""
    cwd = root or Path(__file__).resolve().parents[1]
    try:
        head = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=cwd, capture_output=True, text=True,
                              check=True, timeout=30).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=cwd,
                               capture_output=True, text=True, check=True, timeout=60).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    return head + ("-dirty" if dirty else "")


# ---------------------------------------------------------------------------------------------- the runs
def eval_config(preset: Preset, seed: int, core: CoreConfig, batch_samples: int) -> EvalConfig:
    """The evaluation's config for one preset and seed (every other setting is ``trainer.evaluate``'s default)."""
    return EvalConfig(batch_samples=batch_samples, seed=seed, preset=preset.name, max_history=preset.max_history,
                      max_realtime=preset.max_realtime, max_table_rows=preset.max_table_rows, ranker=preset.ranker,
                      core=core)


def plan(cfg: QualityConfig) -> list[Run]:
    """The runs of one dataset, in order (empty for ``scaling``/``ablations`` when model.presets lacks them)."""
    runs: list[Run] = []
    first = PRESETS[cfg.presets[0]]
    shape = dlrm_shape(cfg.presets)
    if cfg.suite == "scaling":  # preset outer, seed inner: the batches of one feature spec are collated once
        return [Run("ranker", PRESETS[p], seed, preset_label=p) for p in scaling_presets() for seed in cfg.seeds]
    if cfg.suite == "ablations":
        variants = ablations()
        if not variants:
            return []
        for name in cfg.presets:
            base = PRESETS[name]
            runs += [Run("ranker", base, seed, "", base.name, base_preset=base.name) for seed in cfg.seeds]
            for variant, fn in variants.items():
                p = fn(base)
                runs += [Run("ranker", p, seed, variant, p.name, base_preset=base.name) for seed in cfg.seeds]
        return runs
    for seed in cfg.seeds:
        if cfg.suite == "main":
            for m in cfg.models:
                if m == "ranker":
                    runs += [Run("ranker", PRESETS[p], seed, preset_label=p) for p in cfg.presets]
                else:
                    runs.append(Run(m, shape, seed, preset_label=shape.name if m == "dlrm" else ""))
        else:
            runs += [Run("ranker", first, seed, "unified", first.name),
                     Run("ranker", first, seed, "per-scenario", first.name, per_scenario=True)]
    return runs


def dlrm_shape(presets: Sequence[str]) -> Preset:
    """The preset whose feature spec the main suite's DLRM gets: the one with the longest history (the first of
    those on a tie), so DLRM reads as much of each user's history as the longest-reading Ranker it is compared with.

    Example:
        >>> dlrm_shape(("eval-ml100k", "eval-ml1m")).name
        'eval-ml1m'
    """
    return max((PRESETS[p] for p in presets), key=lambda p: p.max_history)


def scaling_presets() -> tuple[str, ...]:
    """``model.presets.SCALING`` (() when the module has none)."""
    return tuple(getattr(model_presets, "SCALING", ()))


def ablations() -> dict[str, Callable[[Preset], Preset]]:
    """``model.presets.ABLATIONS`` ({} when the module has none)."""
    return dict(getattr(model_presets, "ABLATIONS", {}))


def filter_scenario(samples: Sequence[Sample], scenario: str) -> list[Sample]:
    """Each sample's targets of ``scenario`` only (history and real-time behaviors untouched); samples left without
    targets are dropped. The targets keep their order, so they are the full stream's targets of that scenario in
    the full stream's order."""
    out = []
    for s in samples:
        keep = [t for t in s.targets if t.scenario == scenario]
        if keep:
            out.append(s if len(keep) == len(s.targets) else dataclasses.replace(s, targets=keep))
    return out


def context_sizes(samples: Sequence[Sample], preset: Preset) -> tuple[int, int]:
    """(mean context tokens per sample, H capped at the preset's L plus R capped at its R; mean targets per
    sample): the arguments of ``model.presets.flops_per_target`` (which prices every context token as an H token;
    attention is quadratic, so a mean sample slightly underprices long histories)."""
    if not samples:
        return 0, 0
    ctx = sum(min(len(s.history), preset.max_history) + min(len(s.realtime), preset.max_realtime) for s in samples)
    return round(ctx / len(samples)), round(sum(len(s.targets) for s in samples) / len(samples))


def _finite(x: float) -> float | None:
    return round(float(x), 6) if math.isfinite(x) else None


STREAM_PARTS = 4  # the overall records' ``stream_parts``: AUC/GAUC over this many consecutive parts of the stream


def stream_parts(p: np.ndarray, y: np.ndarray, users: np.ndarray, parts: int = STREAM_PARTS) -> list[dict[str, Any]]:
    """AUC/GAUC over ``parts`` consecutive, equally long parts of a run's targets (stream order): how a model's
    quality moves as it sees more of the stream.

    >>> [r["n_targets"] for r in stream_parts(np.zeros(10), np.array([0, 1] * 5), np.zeros(10), parts=3)]
    [4, 3, 3]
    """
    out = []
    for idx in np.array_split(np.arange(len(y)), parts):
        sc = score(p[idx], y[idx], users[idx])
        out.append({"auc": _finite(sc["auc"]), "gauc": _finite(sc["gauc"]), "n_targets": len(idx)})
    return out


def records_of(preds: Predictions, tg: Targets, scenarios: Sequence[str] | None, base: dict[str, Any],
               wall_s: float) -> list[dict[str, Any]]:
    """One record per task × (overall + each scenario) of one run's predictions; the overall ones carry
    ``stream_parts`` (:func:`stream_parts`)."""
    out = []
    masks: list[tuple[str, np.ndarray]] = [(OVERALL, np.ones(len(tg.ts), dtype=bool))]
    names = sorted(set(tg.scenarios.tolist())) if scenarios is None else list(scenarios)
    masks += [(s, tg.scenarios == s) for s in names]
    for task, p in preds.probs.items():
        y = tg.labels[task]
        for scen, m in masks:
            sc = score(p[m], y[m], tg.users[m])
            n = len(tg.ts)
            rec = {**base, "scenario": scen, "task": task, "auc": _finite(sc["auc"]), "gauc": _finite(sc["gauc"]),
                   "n_targets": int(m.sum()), "wall_s": round(wall_s, 3),
                   "targets_per_s": round(n / wall_s, 1) if wall_s > 0 else None}
            if scen == OVERALL:
                rec["stream_parts"] = stream_parts(p, y, tg.users)
            out.append(rec)
    return out


class _Prepared:
    """Samples of one dataset and their batches for one feature spec at a time (shared by consecutive runs of
    that spec, with its per-scenario subsets; asking for another spec frees the previous one's batches, which
    are the bulk of the memory on MovieLens-1M)."""

    def __init__(self, samples: list[Sample], batch_samples: int) -> None:
        self.samples = samples
        self.batch_samples = batch_samples
        self._cache: dict[tuple[Any, ...], tuple[Batches, Targets]] = {}

    def batches(self, spec: FeatureSpec, scenario: str | None = None) -> tuple[Batches, Targets]:
        key = (spec.max_history, spec.max_realtime, tuple(sorted((n, t.num_embeddings) for n, t in spec.tables.items())),
               scenario)
        if key not in self._cache:
            for k in [k for k in self._cache if k[:3] != key[:3]]:
                del self._cache[k]
            samples = self.samples if scenario is None else filter_scenario(self.samples, scenario)
            b = build_batches(samples, spec, self.batch_samples)
            self._cache[key] = (b, collect_targets(b, spec.tasks))
        return self._cache[key]


def run_one(run: Run, prep: _Prepared, core: CoreConfig, cfg: QualityConfig, dataset: str, commit: str,
            progress: bool = False) -> list[dict[str, Any]]:
    """The records of one run."""
    ec = eval_config(run.preset, run.seed, core, cfg.batch_samples)
    spec = ec.feature_spec()
    batches, tg = prep.batches(spec)
    base: dict[str, Any] = {"suite": cfg.suite, "dataset": dataset, "preset": run.preset_label, "model": run.model,
                            "variant": run.variant, "seed": run.seed, "commit": commit, "command": cfg.command,
                            "limit_targets": cfg.limit_targets}
    if run.base_preset:
        base["base_preset"] = run.base_preset
    if cfg.suite == "scaling":
        fn = getattr(model_presets, "flops_per_target", None)
        if callable(fn):
            base["flops_per_target"] = float(fn(run.preset, *context_sizes(prep.samples, run.preset)))
    scenarios = sorted(set(tg.scenarios.tolist()))
    if not run.per_scenario:
        pr = run_model(run.model, batches, spec, ec, progress)
        return records_of(pr, tg, scenarios, base, pr.seconds)
    # one model per scenario, its targets only; '*' = the scenario models' predictions put back in stream order
    out: list[dict[str, Any]] = []
    combined = {t: np.zeros(len(tg.ts)) for t in spec.tasks}
    total = 0.0
    for s in scenarios:
        sb, stg = prep.batches(spec, scenario=s)
        pr = run_model(run.model, sb, spec, ec, progress)
        total += pr.seconds
        mask = tg.scenarios == s
        for t in spec.tasks:
            combined[t][mask] = pr.probs[t]
        out += [r for r in records_of(pr, stg, [s], base, pr.seconds) if r["scenario"] == s]
    return records_of(Predictions(combined, total), tg, [], base, total) + out


def load_events(dataset: str) -> list[Any]:
    """The dataset's events with the default flags of ``python -m trainer.evaluate --dataset NAME``;
    ``movielens-1m:genre`` is ML-1M with ``--ml1m-scenarios genre`` (genre-group scenarios)."""
    p = argparse.ArgumentParser()
    add_dataset_args(p)
    name, _, scenarios = dataset.partition(":")
    return load_dataset(p.parse_args(["--dataset", name, *(["--ml1m-scenarios", scenarios] if scenarios else [])]))


def run_suite(cfg: QualityConfig, progress: bool = False, log: Callable[[str], None] = print,
              events: Callable[[str], Sequence[Any]] = load_events) -> list[dict[str, Any]]:
    """Run every dataset × run of the suite; merges into ``cfg.out`` after each run; returns the new records."""
    runs = plan(cfg) if cfg.suite != "distill" else [Run("distill", PRESETS[cfg.presets[0]], 0)]
    if not runs:
        log(f"[{cfg.suite}] nothing to run: model.presets defines no "
            f"{'SCALING' if cfg.suite == 'scaling' else 'ABLATIONS'}")
        return []
    commit = git_commit()
    new: list[dict[str, Any]] = []
    for dataset in cfg.datasets:
        t0 = time.perf_counter()
        evs = events(dataset)
        core = default_core(dataset, history_len=max(DEFAULT_HISTORY_LEN, *(r.preset.max_history for r in runs)))
        samples = make_samples(evs, core, cfg.limit_targets)
        del evs
        prep = _Prepared(samples, cfg.batch_samples)
        n = sum(len(s.targets) for s in samples)
        if cfg.suite == "distill":
            from trainer.distill_eval import run_distill

            log(f"[distill] {dataset}: {len(samples)} samples, {n} targets")
            new += run_distill(prep, core, cfg, dataset, commit, progress,
                               lambda recs: write_records(cfg.out, merge_records(load_records(cfg.out), recs)), log)
            continue
        log(f"[{cfg.suite}] {dataset}: {len(samples)} samples, {n} targets "
            f"(load + core {time.perf_counter() - t0:.1f} s); {len(runs)} runs")
        for i, run in enumerate(runs, 1):
            t1 = time.perf_counter()
            recs = run_one(run, prep, core, cfg, dataset, commit, progress)
            new += recs
            write_records(cfg.out, merge_records(load_records(cfg.out), recs))
            head = {r["task"]: r for r in recs if r["scenario"] == OVERALL}
            label = "/".join(x for x in (run.model, run.preset_label, run.variant) if x)
            metrics = "; ".join(f"{t} AUC {_pct(r['auc'])} GAUC {_pct(r['gauc'])}" for t, r in head.items())
            first = next(iter(head.values()))
            log(f"[{cfg.suite}] {dataset} {i}/{len(runs)} {label} seed {run.seed}: {first['n_targets']} targets, "
                f"model {first['wall_s']:.1f} s ({first['targets_per_s'] or 0:.0f} targets/s), "
                f"run {time.perf_counter() - t1:.1f} s; {metrics}")
    return new


def _pct(x: float | None) -> str:
    return "n/a" if x is None else f"{100 * x:.2f}"


# ---------------------------------------------------------------------------------------------- CLI
def _csv(text: str) -> tuple[str, ...]:
    return tuple(x.strip() for x in text.split(",") if x.strip())


def recorded_command(args: Sequence[str]) -> str:
    """The command recorded with each record: the arguments minus ``--out`` (the records live in that file) and
    ``--progress``.

    >>> recorded_command(["--suite", "main", "--out", "/tmp/x.json", "--seeds", "0", "--out=/tmp/y", "--progress"])
    'python -m trainer.quality --suite main --seeds 0'
    """
    kept: list[str] = []
    skip = False
    for a in args:
        if skip:
            skip = False
        elif a == "--out":
            skip = True
        elif not a.startswith("--out=") and a != "--progress":
            kept.append(a)
    return " ".join(["python -m trainer.quality", *kept])


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m trainer.quality", description=__doc__.split("\n\n")[0].replace("``", ""),
                                formatter_class=cli.HelpFormatter,
                                epilog=EPILOG)
    p.add_argument("--suite", choices=SUITES, required=True, help="which suite to run")
    p.add_argument("--datasets", help="comma-separated datasets (default per suite: "
                   + "; ".join(f"{k} {','.join(v)}" for k, v in DEFAULT_DATASETS.items()) + ")")
    # QualityConfig's fields with a default (streaming/cli.py: type and default from the dataclass); --suite
    # (required), --datasets (default per suite) and the recorded command are by hand.
    cli.add_config_args(p, QualityConfig, exclude=("suite", "datasets", "command"), help={
        "presets": f"comma-separated preset names (model/presets.py: {', '.join(sorted(PRESETS))}): the Rankers "
                   "of main, the base presets of ablations, the one of unified",
        "seeds": "comma-separated torch seeds", "models": "the models of main",
        "limit_targets": "only the first N targets of each dataset's stream ('' = all)",
        "batch_samples": "samples per training step", "out": "records JSON to merge into",
        "distill_stale": "distill suite: comma-separated teacher staleness ablations, in snapshots",
        "distill_students": "distill suite: comma-separated students (NAME-per-scenario: one model per scenario "
                            "on its targets only, ExFM's vertical models)",
        "distill_weight": "distill suite: the distillation loss weight w (not 1: variants named distill-w<w>...)"})
    p.add_argument("--threads", type=int, default=1, help="torch CPU threads")
    p.add_argument("--progress", action="store_true", help="progress bars on stderr")
    return p


def main(argv: list[str] | None = None) -> int:
    p = _parser()
    ns = p.parse_args(argv)
    args = sys.argv[1:] if argv is None else argv
    try:
        cfg = cli.config_from_args(
            QualityConfig, ns, suite=ns.suite, datasets=_csv(ns.datasets) if ns.datasets else DEFAULT_DATASETS[ns.suite],
            command=recorded_command(args))
    except ValueError as e:
        p.error(str(e))
    torch.set_num_threads(max(1, ns.threads))
    t0 = time.perf_counter()
    try:
        new = run_suite(cfg, progress=ns.progress, log=lambda s: print(s, flush=True))
    except DatasetError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(f"[{cfg.suite}] {len(new)} records merged into {cfg.out} in {time.perf_counter() - t0:.1f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
