"""Offline evaluation without Kafka: ``python -m trainer.evaluate --dataset movielens --out reports/eval``.

Pipeline (all in-process, deterministic for a seed)::

    events  = adapter(dataset)                             # streaming.datasets: event-time order
    samples = streaming.core.run_offline(events, core)      # the same pure join/aggregation core as the worker
    batches = [collate(samples[i:i+B], spec) ...]           # emission order, the same batches for every model
    for each model:                                         # Ranker (MTFM-style), DLRM, popularity, LR
        for batch in batches:                               # progressive validation: predict, then train
            probs = model(batch) (before the update) ; learn(batch)

The neural models are trained by :meth:`trainer.loop.Trainer.train_step` — the continual trainer's own step
(row-wise Adagrad on embeddings, AdamW on dense, multi-task BCE; one pass, as in streaming). The popularity
baseline (:class:`trainer.baselines.PopularityBaseline`) predicts a smoothed per-item rate and counts each batch
after scoring it; the online logistic regression (``lr``, :class:`trainer.baselines.LogisticRegressionBaseline`,
not run by default) scores a batch, then takes one Adagrad step on it.

The pieces are reusable (``trainer.quality`` runs its suites with them): :func:`default_core` (the core settings
per dataset), :func:`make_samples` (the core's samples, optionally only a prefix of ``limit_targets`` targets),
:func:`build_batches`, :func:`collect_targets`, :func:`run_model` (one model's progressive predictions) and
:func:`score`.

Metrics (per model × task, overall and per scenario), computed exactly from the stored progressive
predictions with :func:`trainer.progressive.exact_auc` / :func:`trainer.progressive.grouped_auc`:
AUC, GAUC (per-user AUC weighted by the user's impressions, users with both labels only) and log loss, over the
whole run and over ``points`` consecutive time slices (equal target counts, by target ts).

Writes ``<out>/summary.md``, ``<out>/metrics.json`` and ``<out>/<metric>_<task>.png`` (one panel per scenario, one
line per model) and prints the headline table (:mod:`trainer.eval_report`).

Example:
    >>> EvalConfig().models
    ('ranker', 'dlrm', 'popularity')
"""

from __future__ import annotations

import argparse
import dataclasses
import math
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Generic, TypedDict, TypeVar

import numpy as np
import torch
from prometheus_client import CollectorRegistry

from model import PRESETS, DLRMBaseline, DLRMConfig, Ranker, RankerConfig
from model.batch import Batch, collate
from model.features import FeatureSpec
from model.presets import MOVIELENS_PRIORS, shaped_spec
from streaming import cli
from streaming.config import CoreConfig, CrossSpec
from streaming.core import StreamCore, run_offline
from streaming.datasets import DatasetError, summarize
from streaming.datasets.load import add_dataset_args, load_dataset
from streaming.events import Event
from streaming.sample import Sample
from streaming.spec import DEFAULT_HISTORY_LEN
from trainer.baselines import LogisticRegressionBaseline, LRConfig, PopularityBaseline
from trainer.eval_report import METRICS, print_headline, write_report
from trainer.loop import Trainer, TrainerConfig
from trainer.optim import OptimConfig
from trainer.progressive import exact_auc, grouped_auc, user_hash

MODELS = ("ranker", "dlrm", "popularity", "lr")  # every model the evaluation can run
DEFAULT_MODELS = ("ranker", "dlrm", "popularity")  # the published report's models
# The preset behind the published MovieLens-100K numbers (docs/results/eval); its label priors also initialise the
# DLRM baseline's output biases.
DEFAULT_PRESET = "eval-ml100k"
_EPS = 1e-7
V = TypeVar("V")
# The MovieLens adapter's feedback follows its impression by 5 s (click) and 10 s (like): a 60 s attribution window
# labels every rating and makes its outcome (a click, or a skip behavior) visible to the user's next targets a
# minute later instead of 30.
MOVIELENS_WINDOW_S = 60.0


@dataclass(frozen=True)
class EvalConfig:
    """What to evaluate and how (built only in :func:`main`).

    Attributes:
        models: which of ``ranker``, ``dlrm``, ``popularity``, ``lr`` to run, side by side on the same batches.
        batch_samples: user-level samples per training step.
        seed: torch seed (model init) — the only randomness.
        points: time slices on the plots.
        preset: name of the :data:`model.PRESETS` entry ``ranker``, ``max_history``, ``max_realtime`` and
            ``max_table_rows`` come from (single fields may be overridden: the effective values are what ran);
            equals ``ranker.preset`` ('' for a hand-built Ranker config).
        max_history / max_realtime / max_table_rows: the FeatureSpec limits (see :class:`model.Preset`).
        ranker / dlrm / optim / ranker_optim: model and optimizer settings (``ranker_optim`` None = ``optim``).
            Defaults are the settings tuned on MovieLens-100K (small batches = more one-pass steps; row-wise
            Adagrad lr 0.2; the ``eval-ml100k`` preset: a 1-block, d=32 Ranker with the co-watch readout, the
            user's smoothed cross-counter rates and output biases at the label priors, besides the first-order
            shortcuts every Ranker has — the target's input token into the head, a linear term on the target's
            raw features, a per-item bias table, a per-user term).
            The DLRM baseline gets the same generic, non-sequence shortcuts (per-item bias table, linear term,
            cross-counter rates, prior output biases); only the Ranker has the wide input token into its head, the
            per-user term and the target-aware co-watch read of the history — see docs/experiments.md.
        popularity_smoothing: pseudo-count m of the popularity baseline.
        lr: the online logistic regression's settings.
        core: the streaming core's settings (join window, sample span, cross features).
    """

    models: tuple[str, ...] = DEFAULT_MODELS
    batch_samples: int = 8
    seed: int = 0
    points: int = 12
    preset: str = DEFAULT_PRESET
    max_history: int = PRESETS[DEFAULT_PRESET].max_history
    max_realtime: int = PRESETS[DEFAULT_PRESET].max_realtime
    max_table_rows: int = PRESETS[DEFAULT_PRESET].max_table_rows
    ranker: RankerConfig = PRESETS[DEFAULT_PRESET].ranker
    dlrm: DLRMConfig = field(default_factory=lambda: DLRMConfig(
        item_bias=True, linear=True, task_priors=MOVIELENS_PRIORS, cross_rates=True, cross_rates_init=0.5))
    optim: OptimConfig = field(default_factory=lambda: OptimConfig(embedding_lr=0.2))
    ranker_optim: OptimConfig | None = None
    popularity_smoothing: float = 10.0
    lr: LRConfig = field(default_factory=LRConfig)
    core: CoreConfig = field(default_factory=CoreConfig)

    def __post_init__(self) -> None:
        unknown = [m for m in self.models if m not in MODELS]
        if unknown or not self.models:
            raise ValueError(f"models must be a non-empty subset of {MODELS}, got {self.models}")
        if self.batch_samples < 1 or self.points < 1:
            raise ValueError("batch_samples and points must be >= 1")
        if self.preset != self.ranker.preset:
            raise ValueError(f"preset {self.preset!r} but the Ranker config comes from preset {self.ranker.preset!r}")

    def feature_spec(self) -> FeatureSpec:
        """The spec every model of the run shares."""
        return shaped_spec(self.max_history, self.max_realtime, self.max_table_rows, tasks=self.core.tasks)


@dataclass
class Predictions:
    """Progressive predictions of one model, aligned with the evaluation's target order."""

    probs: dict[str, np.ndarray]  # task -> (N,) float64
    seconds: float


@dataclass
class Targets:
    """Labels and grouping keys of every target, in progressive order (shared by all models)."""

    labels: dict[str, np.ndarray]  # task -> (N,) {0,1}
    scenarios: np.ndarray  # (N,) object
    users: np.ndarray  # (N,) int64 user hash
    ts: np.ndarray  # (N,) float64
    item_ids: list[str]


Scores = dict[str, float]  # auc, gauc, logloss, calibration, label_mean, count
Series = dict[str, list[float]]  # metric -> one value per time slice


class Split(TypedDict, Generic[V]):
    """One model × task: ``overall`` (every target once) apart from the open-keyed ``scenarios``, so no scenario
    name (``all`` included) can collide with the aggregate."""

    overall: V
    scenarios: dict[str, V]


@dataclass
class EvalResult:
    """Everything the report shows: ``metrics[model][task]["overall"] = {auc, gauc, logloss, count, ...}`` and
    ``metrics[model][task]["scenarios"][scenario]`` the same per scenario; ``timeline`` likewise, per time slice."""

    config: EvalConfig
    dataset: dict[str, Any]
    metrics: dict[str, dict[str, Split[Scores]]]
    timeline: dict[str, dict[str, Split[Series]]]
    slice_end_ts: list[float]
    seconds: dict[str, float]
    files: list[Path] = field(default_factory=list)


# ---------------------------------------------------------------------------------------------- running models
def default_core(dataset: str, *, attribution_window_s: float | None = None, category_key: str | None = None,
                 skip_action: str | None = "skip", history_len: int = DEFAULT_HISTORY_LEN) -> CoreConfig:
    """The core settings the evaluation uses for ``dataset``: MovieLens (100K and 1M) gets the 60 s attribution
    window and the ``genres`` category; every dataset gets ``skip`` behaviors (None = none). Explicit values win.
    ``history_len`` is the samples' L (the longest ``max_history`` of the models evaluated on them: each model's
    collate keeps the latest ``max_history`` of a sample's H).

    Example:
        >>> c = default_core("movielens-1m"); c.attribution_window_s, c.cross.category_key, c.skip_action
        (60.0, 'genres', 'skip')
        >>> default_core("movielens", history_len=512).history_len
        512
    """
    movielens = dataset.startswith("movielens")
    window = attribution_window_s
    if window is None:
        window = MOVIELENS_WINDOW_S if movielens else CoreConfig.attribution_window_s
    cat = category_key or ("genres" if movielens else "category")
    return CoreConfig(attribution_window_s=window, skip_action=skip_action or None, cross=CrossSpec(category_key=cat),
                      history_len=history_len)


def make_samples(events: Sequence[Event], core: CoreConfig, limit_targets: int | None = None) -> list[Sample]:
    """The core's samples in emission order (:func:`streaming.core.run_offline`); with ``limit_targets``, only the
    first that many targets of that stream: the core stops once the samples it emitted hold enough targets (the
    samples are exactly the full run's first ones, the last one cut to the limit), so a prefix costs only its share
    of the core's time.

    Example:
        >>> from streaming.datasets.synthetic import SyntheticConfig, generate
        >>> ev = generate(SyntheticConfig(num_users=5, requests_per_user=4))
        >>> sum(len(s.targets) for s in make_samples(ev, CoreConfig(), limit_targets=7))
        7
    """
    if limit_targets is None:
        return run_offline(events, core)
    if limit_targets < 1:
        raise ValueError("limit_targets must be >= 1")
    sc = StreamCore(core)
    out: list[Sample] = []
    n = 0

    def take(outputs: Sequence[object]) -> bool:
        nonlocal n
        for o in outputs:
            if isinstance(o, Sample):
                keep = o.targets[: limit_targets - n]
                out.append(o if len(keep) == len(o.targets) else dataclasses.replace(o, targets=keep))
                n += len(keep)
                if n >= limit_targets:
                    return True
        return False

    for ev in events:
        if take(sc.on_event(ev)):
            return out
    take(sc.flush_all())
    return out


def build_batches(samples: Sequence[Sample], spec: FeatureSpec, batch_samples: int) -> list[tuple[list[Sample], Batch]]:
    """Consecutive groups of samples (emission order) and their collated batches."""
    out = []
    for i in range(0, len(samples), batch_samples):
        group = list(samples[i : i + batch_samples])
        out.append((group, collate(group, spec)))
    return out


def collect_targets(batches: Sequence[tuple[list[Sample], Batch]], tasks: Sequence[str]) -> Targets:
    labels: dict[str, list[float]] = {t: [] for t in tasks}
    scen: list[str] = []
    users: list[int] = []
    ts: list[float] = []
    items: list[str] = []
    for group, b in batches:
        for t in tasks:
            labels[t].extend(b.labels[t].tolist())
        scen.extend(b.target_scenarios)
        users.extend(user_hash(u) for u in b.target_user_ids)
        for s in group:  # collate keeps the samples' target order
            ts.extend(t.ts for t in s.targets)
            items.extend(t.item_id for t in s.targets)
    return Targets({t: np.asarray(v, dtype=np.float64) for t, v in labels.items()},
                   np.asarray(scen, dtype=object), np.asarray(users, dtype=np.int64), np.asarray(ts), items)


def run_neural(model: torch.nn.Module, batches: Sequence[tuple[list[Sample], Batch]], spec: FeatureSpec,
               optim: OptimConfig, seed: int, progress: bool = False) -> Predictions:
    """Progressive predictions of a neural model trained by the continual trainer's own ``train_step``."""
    from tqdm import tqdm

    probs: dict[str, list[np.ndarray]] = {t: [] for t in spec.tasks}
    t0 = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="streamrec-eval-") as run_dir:
        cfg = TrainerConfig(optim=optim, run_dir=Path(run_dir), device="cpu", seed=seed, snapshots_topic="")
        trainer = Trainer(cfg, model, spec, registry=CollectorRegistry())
        for _, batch in tqdm(batches, disable=not progress, file=sys.stderr, leave=False,
                             desc=type(model).__name__, unit="batch"):
            trainer.train_step(batch)  # forward (scored before the update) + backward + optimizer step
            for t in spec.tasks:  # the scores progressive validation took (averaged weights with ema_decay)
                probs[t].append(trainer.last_probs[t].double().numpy())
    return Predictions({t: np.concatenate(v) if v else np.zeros(0) for t, v in probs.items()},
                       time.perf_counter() - t0)


def run_lr(batches: Sequence[tuple[list[Sample], Batch]], tasks: Sequence[str], config: LRConfig) -> Predictions:
    """Progressive predictions of the online logistic regression (score a batch, then one Adagrad step on it)."""
    lr = LogisticRegressionBaseline(tasks, config)
    probs: dict[str, list[np.ndarray]] = {t: [] for t in tasks}
    t0 = time.perf_counter()
    for group, batch in batches:
        h = lr.featurize(group)
        for t, p in lr.predict(h).items():
            probs[t].append(p.double().numpy())
        lr.update(h, {t: batch.labels[t] for t in tasks})
    return Predictions({t: np.concatenate(v) if v else np.zeros(0) for t, v in probs.items()},
                       time.perf_counter() - t0)


def run_model(name: str, batches: Sequence[tuple[list[Sample], Batch]], spec: FeatureSpec, config: EvalConfig,
              progress: bool = False) -> Predictions:
    """Progressive predictions of model ``name`` (one of :data:`MODELS`) over ``batches``, seeded by
    ``config.seed``; ``config`` supplies the model's settings."""
    torch.manual_seed(config.seed)
    if name == "ranker":
        return run_neural(Ranker(spec, config.ranker), batches, spec, config.ranker_optim or config.optim,
                          config.seed, progress)
    if name == "dlrm":
        return run_neural(DLRMBaseline(spec, config.dlrm), batches, spec, config.optim, config.seed, progress)
    if name == "lr":
        return run_lr(batches, spec.tasks, config.lr)
    if name == "popularity":
        return run_popularity(batches, spec.tasks, config.popularity_smoothing)
    raise ValueError(f"unknown model {name!r} (one of {MODELS})")


def run_popularity(batches: Sequence[tuple[list[Sample], Batch]], tasks: Sequence[str],
                   smoothing: float) -> Predictions:
    """Progressive predictions of the popularity baseline (score a batch, then count it)."""
    pop = PopularityBaseline(tasks, smoothing=smoothing)
    probs: dict[str, list[np.ndarray]] = {t: [] for t in tasks}
    t0 = time.perf_counter()
    for group, batch in batches:
        items = [t.item_id for s in group for t in s.targets]
        for t, p in pop.predict(items).items():
            probs[t].append(p.double().numpy())
        pop.update(items, {t: batch.labels[t] for t in tasks})
    return Predictions({t: np.concatenate(v) if v else np.zeros(0) for t, v in probs.items()},
                       time.perf_counter() - t0)


# ---------------------------------------------------------------------------------------------- metrics
def score(p: np.ndarray, y: np.ndarray, users: np.ndarray) -> dict[str, float]:
    """AUC, GAUC, log loss, calibration (mean p / mean y) and counts of one set of predictions."""
    n = len(y)
    if n == 0:
        return {"count": 0.0, "auc": math.nan, "gauc": math.nan, "logloss": math.nan, "calibration": math.nan,
                "label_mean": math.nan}
    pt, yt = torch.from_numpy(p), torch.from_numpy(y)
    num, den = grouped_auc(pt, yt, torch.from_numpy(users))
    pc = np.clip(p, _EPS, 1 - _EPS)
    ll = float(-(y * np.log(pc) + (1 - y) * np.log(1 - pc)).mean())
    return {"count": float(n), "auc": exact_auc(pt, yt), "gauc": num / den if den else math.nan, "logloss": ll,
            "calibration": float(p.mean() / y.mean()) if y.sum() > 0 else math.nan, "label_mean": float(y.mean())}


def compute_metrics(preds: dict[str, Predictions], tg: Targets, points: int) -> tuple[
        dict[str, dict[str, Split[Scores]]], dict[str, dict[str, Split[Series]]], list[float]]:
    """Whole-run metrics and per-time-slice metrics for every model × task, overall and per scenario."""
    masks = {s: tg.scenarios == s for s in sorted(set(tg.scenarios.tolist()))}
    every = np.ones(len(tg.ts), dtype=bool)
    n = len(tg.ts)
    order = np.argsort(tg.ts, kind="stable")
    k = max(1, min(points, n))
    bounds = [order[int(i * n / k) : int((i + 1) * n / k)] for i in range(k)] if n else []
    slice_end = [float(tg.ts[b].max()) for b in bounds if len(b)]

    def whole_and_slices(p: np.ndarray, y: np.ndarray, m: np.ndarray) -> tuple[Scores, Series]:
        series: Series = {k2: [] for k2 in (*METRICS, "count")}
        for b in bounds:
            idx = b[m[b]]
            r = score(p[idx], y[idx], tg.users[idx])
            for k2 in series:
                series[k2].append(r[k2])
        return score(p[m], y[m], tg.users[m]), series

    metrics: dict[str, dict[str, Split[Scores]]] = {}
    timeline: dict[str, dict[str, Split[Series]]] = {}
    for model, pr in preds.items():
        for task, p in pr.probs.items():
            y = tg.labels[task]
            whole, series = whole_and_slices(p, y, every)
            m_split: Split[Scores] = {"overall": whole, "scenarios": {}}
            t_split: Split[Series] = {"overall": series, "scenarios": {}}
            for s, m in masks.items():
                m_split["scenarios"][s], t_split["scenarios"][s] = whole_and_slices(p, y, m)
            metrics.setdefault(model, {})[task] = m_split
            timeline.setdefault(model, {})[task] = t_split
    return metrics, timeline, slice_end


# ---------------------------------------------------------------------------------------------- the run
def evaluate(events: Sequence[Event], config: EvalConfig, progress: bool = False) -> EvalResult:
    """Run the core, then every model progressively over the same batches; returns all metrics (no files)."""
    t0 = time.perf_counter()
    samples = run_offline(events, config.core)
    t_core = time.perf_counter() - t0
    spec = config.feature_spec()
    t0 = time.perf_counter()
    batches = build_batches(samples, spec, config.batch_samples)
    t_collate = time.perf_counter() - t0
    tg = collect_targets(batches, spec.tasks)
    preds = {name: run_model(name, batches, spec, config, progress) for name in config.models}
    metrics, timeline, slice_end = compute_metrics(preds, tg, config.points)
    counts = summarize(events)
    dataset = {
        "events": len(events), **counts, "samples": len(samples), "targets": len(tg.ts),
        "users": len({s.user_id for s in samples}),
        "targets_per_scenario": {s: int((tg.scenarios == s).sum()) for s in sorted(set(tg.scenarios.tolist()))},
        "label_rate": {t: float(v.mean()) if len(v) else math.nan for t, v in tg.labels.items()},
        "first_ts": float(tg.ts.min()) if len(tg.ts) else math.nan,
        "last_ts": float(tg.ts.max()) if len(tg.ts) else math.nan,
    }
    seconds = {"core": t_core, "collate": t_collate, **{m: p.seconds for m, p in preds.items()}}
    return EvalResult(config, dataset, metrics, timeline, slice_end, seconds)


# ---------------------------------------------------------------------------------------------- report
_EVAL_FLAGS = ("models", "batch_samples", "seed", "points", "popularity_smoothing")
_EVAL_NAMES = {"popularity_smoothing": "smoothing"}


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m trainer.evaluate", description=__doc__.split("\n\n")[0].replace("``", ""),
                                formatter_class=cli.HelpFormatter)
    add_dataset_args(p, default="movielens")
    p.add_argument("--out", type=Path, default=Path("reports/eval"), help="report directory")
    # One flag per EvalConfig field that is one value (streaming/cli.py: default from the dataclass); the nested
    # configs' flags below stay by hand (preset- or dataset-dependent defaults).
    cli.add_config_args(p, EvalConfig, include=_EVAL_FLAGS, names=_EVAL_NAMES, help={
        "models": f"comma-separated subset of {','.join(MODELS)}", "seed": "torch seed (model init)",
        "points": "time slices in the plots", "popularity_smoothing": "popularity baseline pseudo-count"})
    p.add_argument("--limit", type=int, help="use only the first N events (event-time order)")
    p.add_argument("--threads", type=int, default=1, help="torch CPU threads")
    p.add_argument("--preset", choices=sorted(PRESETS), default=DEFAULT_PRESET,
                   help="the Ranker's shape and feature limits (model/presets.py; the Ranker flags below "
                        "override single fields) (default %(default)s: the published MovieLens-100K numbers)")
    p.add_argument("--max-history", type=int, help="H tokens kept per sample (default: the preset's)")
    p.add_argument("--category-key", help="item feature counted as the category by the core's cross features "
                                          "(default: genres for movielens and movielens-1m, category otherwise)")
    p.add_argument("--attribution-window-s", type=float,
                   help="the core's attribution window (default: 60 for movielens and movielens-1m, whose feedback "
                        "comes 5-10 s after its impression; the core's default otherwise)")
    p.add_argument("--skip-action", default="skip",
                   help="behavior action of an impression released unlabeled ('' = no skip behaviors)")
    p.add_argument("--d-model", type=int, help="Ranker token width (default: the preset's)")
    p.add_argument("--num-blocks", type=int, help="Ranker HTA blocks (default: the preset's)")
    p.add_argument("--target-layers", type=int, help="Ranker target layers per block (default: the preset's)")
    p.add_argument("--cowatch-dim", type=int,
                   help="Ranker co-watch sketch width, 0 = no co-watch readout (and so none of its options: the "
                        "per-size weights and the co-like readout) (default: the preset's)")
    p.add_argument("--mf-dim", type=int,
                   help="Ranker user x item factorization logits width, 0 = off (default: the preset's)")
    p.add_argument("--dlrm-dim", type=int, default=EvalConfig().dlrm.embed_dim, help="DLRM embedding width")
    p.add_argument("--cross-rates-init", type=float,
                   help="initial weight of the user's cross-counter rate term, both models, 0 = no such term "
                        f"(default: the preset's for the Ranker, {EvalConfig().dlrm.cross_rates_init} for the DLRM)")
    o = EvalConfig().optim
    p.add_argument("--embedding-lr", type=float, default=o.embedding_lr, help="row-wise Adagrad lr (both models)")
    p.add_argument("--dense-lr", type=float, default=o.dense_lr, help="AdamW lr (both models)")
    p.add_argument("--ranker-dense-lr", type=float, help="AdamW lr of the Ranker only (default: --dense-lr)")
    p.add_argument("--ema-decay", type=float, default=o.ema_decay,
                   help="score with an exponential moving average of the dense weights, this decay (both models; "
                        "0 = off, the published runs)")
    p.add_argument("--rank-loss-weight", type=float, default=o.rank_loss_weight,
                   help="weight of the within-sample pairwise ranking loss next to the BCE (both models; 0 = off, "
                        "the published runs; trainer.optim.pairwise_rank_loss)")
    p.add_argument("--progress", action="store_true", help="progress bars on stderr")
    return p


def main(argv: list[str] | None = None) -> int:
    p = _parser()
    ns = p.parse_args(argv)
    torch.set_num_threads(max(1, ns.threads))
    try:
        events = load_dataset(ns)
    except DatasetError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    if ns.limit is not None:
        events = events[: ns.limit]
    if not events:
        print("error: the dataset has no events", file=sys.stderr)
        return 2
    cw, cr = ns.cowatch_dim, ns.cross_rates_init
    preset = PRESETS[ns.preset].with_changes(
        max_history=ns.max_history, d_model=ns.d_model, num_blocks=ns.num_blocks, target_layers=ns.target_layers,
        cowatch=None if cw is None else cw > 0, cowatch_dim=None if cw is None else max(cw, 1),
        cross_rates=None if cr is None else cr != 0, cross_rates_init=cr, mf_dim=ns.mf_dim)
    dlrm = EvalConfig().dlrm
    if cr is not None:
        dlrm = dataclasses.replace(dlrm, cross_rates=cr != 0, cross_rates_init=cr)
    try:
        optim = OptimConfig(embedding_lr=ns.embedding_lr, dense_lr=ns.dense_lr, ema_decay=ns.ema_decay,
                            rank_loss_weight=ns.rank_loss_weight)
        config = cli.config_from_args(
            EvalConfig, ns, names=_EVAL_NAMES, preset=preset.name, max_history=preset.max_history,
            max_realtime=preset.max_realtime, max_table_rows=preset.max_table_rows, ranker=preset.ranker,
            dlrm=dataclasses.replace(dlrm, embed_dim=ns.dlrm_dim), optim=optim,
            ranker_optim=None if ns.ranker_dense_lr is None else dataclasses.replace(optim, dense_lr=ns.ranker_dense_lr),
            core=default_core(
                ns.dataset, attribution_window_s=ns.attribution_window_s, category_key=ns.category_key,
                skip_action=ns.skip_action or None, history_len=max(DEFAULT_HISTORY_LEN, preset.max_history)))
    except ValueError as e:
        p.error(str(e))
    t0 = time.perf_counter()
    res = evaluate(events, config, progress=ns.progress)
    command = "python -m trainer.evaluate " + " ".join(sys.argv[1:] if argv is None else argv)
    files = write_report(res, ns.out, ns.dataset, command)
    print_headline(res)
    print(f"wrote {len(files)} files to {ns.out} in {time.perf_counter() - t0:.1f} s "
          f"({', '.join(f'{k} {v:.1f}s' for k, v in res.seconds.items())})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
