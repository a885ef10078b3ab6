"""The feature spec shared by trainer, serving and evaluation: which fields become which ids, hashing, table sizes.

Everything categorical is *open-keyed* (MTFM's "alignment-free" scenarios): a scenario string, an item id and every
``key=value`` pair of a sample's ``user``/``item``/``context`` dicts is hashed into a fixed-size table, so a new
scenario or a new feature key needs no code change. Open-keyed float features (``Target.dense`` and ``Target.cross``)
become a weighted bag: the embedding of the hashed *key* times a squashed value ``sign(x) * log1p(|x|)``
(:func:`streaming.cross.squash`; :func:`streaming.cross.unsquash_count` reads a count back).

Hashing is :func:`stable_hash` (blake2b, 8 bytes): identical in every process and on every machine, unlike
Python's salted ``hash()``. The spec travels inside every snapshot, so trainer and serving can never disagree.

Example:
    >>> spec = FeatureSpec()
    >>> FeatureSpec.from_json(spec.to_json()) == spec
    True
    >>> spec.bucket("item_id", "i42") == spec.bucket("item_id", "i42")
    True
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
from dataclasses import dataclass, field
from functools import lru_cache
from typing import Any

from streaming.cross import squash
from streaming.sample import TASKS
from streaming.spec import DEFAULT_HISTORY_LEN

__all__ = ["FLOAT_FEATURES", "NUM_TARGET_DENSE", "SPARSE_FEATURES", "SPEC_VERSION", "FeatureSpec", "TableSpec",
           "squash", "stable_hash"]  # squash is streaming.cross's (the transform of every float feature)

SPEC_VERSION = 1

# Feature (KJT key) -> table. Keys of the unweighted per-token KJT, in this order.
SPARSE_FEATURES: tuple[str, ...] = (
    "user_feat",  # U tokens: "key=value" of Sample.user (+ "user_id=<id>")
    "item_id",  # H, R, T tokens
    "item_feat",  # H, R, T tokens: "key=value" of Behavior.item / Target.item
    "scenario",  # H, R, T tokens
    "action",  # H, R tokens
    "time_gap",  # H, R, T tokens: log-bucketed seconds from the sample's reference time (not hashed)
    "context",  # T tokens: "key=value" of Target.context (+ "position=<n>")
)
# Keys of the weighted per-target KJT (value = squashed float).
FLOAT_FEATURES: tuple[str, ...] = ("dense", "cross")

# Number of always-present per-target dense columns built by collate (see model.batch.TARGET_DENSE_COLUMNS).
NUM_TARGET_DENSE = 3

_MASK63 = (1 << 63) - 1


@lru_cache(maxsize=1 << 18)
def stable_hash(s: str) -> int:
    """Deterministic 63-bit hash of a string (blake2b), the same in every process.

    Example:
        >>> stable_hash("home") == stable_hash("home")
        True
    """
    return int.from_bytes(hashlib.blake2b(s.encode(), digest_size=8).digest(), "little") & _MASK63


@dataclass(frozen=True)
class TableSpec:
    """One embedding table: ``num_embeddings`` hash buckets of width ``dim``."""

    num_embeddings: int
    dim: int


def _default_tables() -> dict[str, TableSpec]:
    return {
        "user_feat": TableSpec(1 << 16, 16),
        "item_id": TableSpec(1 << 17, 32),
        "item_feat": TableSpec(1 << 15, 16),
        "scenario": TableSpec(1 << 10, 16),
        "action": TableSpec(1 << 8, 8),
        "time_gap": TableSpec(32, 8),
        "context": TableSpec(1 << 14, 16),
        "dense": TableSpec(1 << 10, 16),
        "cross": TableSpec(1 << 10, 16),
    }


@dataclass(frozen=True)
class FeatureSpec:
    """Which sample fields become which ids and how big the tables are (one spec for trainer and serving).

    Attributes:
        tables: feature name -> :class:`TableSpec`; must cover :data:`SPARSE_FEATURES` and :data:`FLOAT_FEATURES`.
        max_history: keep at most this many most recent H behaviors per sample.
        max_realtime: keep at most this many most recent R behaviors per sample.
        num_user_tokens: U tokens per user; each ``user`` key goes to group ``stable_hash(key) % num_user_tokens``.
        include_user_id: also hash ``user_id=<id>`` into the first U token.
        time_gap_buckets: number of log2 buckets for time gaps (bucket = floor(log2(1 + seconds)), clipped).
        tasks: label names; a target without a label for a task gets 0.
        managed_collision: emit raw 63-bit hashes (no modulo) of the sparse features for TorchRec
            managed-collision tables (float-feature keys stay hashed modulo their table).
        mc_eviction_interval: training steps between admissions/LRU evictions of managed-collision ids (ids seen
            since the last admission share the table's last row until then).
        version: spec format version.

    Example:
        >>> FeatureSpec(max_history=16).max_history
        16
    """

    tables: dict[str, TableSpec] = field(default_factory=_default_tables)
    max_history: int = DEFAULT_HISTORY_LEN  # the worker's default L (streaming.spec); must be <= the worker's L
    max_realtime: int = 64
    num_user_tokens: int = 2
    include_user_id: bool = True
    time_gap_buckets: int = 32
    tasks: tuple[str, ...] = TASKS
    managed_collision: bool = False
    mc_eviction_interval: int = 16
    version: int = SPEC_VERSION

    def __post_init__(self) -> None:
        missing = [f for f in (*SPARSE_FEATURES, *FLOAT_FEATURES) if f not in self.tables]
        if missing:
            raise ValueError(f"FeatureSpec.tables lacks {missing}")
        if self.tables["time_gap"].num_embeddings < self.time_gap_buckets:
            raise ValueError("time_gap table must have at least time_gap_buckets rows")
        if self.num_user_tokens < 1 or self.max_history < 0 or self.max_realtime < 0:
            raise ValueError("num_user_tokens must be >= 1 and max_history/max_realtime >= 0")
        if not self.tasks:
            raise ValueError("at least one task is required")

    def __hash__(self) -> int:  # dict field: hash the JSON form
        return hash(self.to_json())

    def bucket(self, feature: str, value: str) -> int:
        """Id of ``value`` in ``feature``'s table (raw 63-bit hash for sparse features under managed collision)."""
        h = stable_hash(f"{feature}\x1f{value}")
        if self.managed_collision and feature in SPARSE_FEATURES:
            return h
        return h % self.tables[feature].num_embeddings

    def time_gap_bucket(self, seconds: float) -> int:
        """Log2 bucket of a non-negative gap in seconds (negative or non-finite gaps -> bucket 0)."""
        if not math.isfinite(seconds) or seconds <= 0.0:
            return 0
        return min(self.time_gap_buckets - 1, int(math.log2(1.0 + seconds)))

    def user_token(self, key: str) -> int:
        """Which U token a ``user`` feature key belongs to."""
        return stable_hash(f"ugroup\x1f{key}") % self.num_user_tokens

    def to_json(self) -> str:
        d: dict[str, Any] = dataclasses.asdict(self)
        d["tasks"] = list(self.tasks)
        return json.dumps(d, sort_keys=True)

    @staticmethod
    def from_json(raw: str | dict[str, Any]) -> FeatureSpec:
        d = dict(json.loads(raw) if isinstance(raw, str) else raw)
        if d.get("version") != SPEC_VERSION:
            raise ValueError(f"unsupported FeatureSpec version {d.get('version')!r} (this build reads {SPEC_VERSION})")
        d["tables"] = {k: TableSpec(**v) for k, v in d["tables"].items()}
        d["tasks"] = tuple(d["tasks"])
        return FeatureSpec(**d)
