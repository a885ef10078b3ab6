"""User-level scoring: one request → one sample → one batch → encode the user once → score every candidate.

This is the pure core of the serving worker (no HTTP, no Kafka): the API calls :func:`score_request` on a worker
thread, the parity test and the benchmark call it directly.

Example (with a loaded snapshot ``served``)::

    result = score_request(served, state=None, user_id="u1", scenario="home",
                           candidates=[Candidate("i1", {}, {}, {})], context={}, now=time.time())
    result.scores["click"]        # [p_click(i1)]
"""

from __future__ import annotations

import hashlib
import math
import threading
import time
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass

import torch

from kernels.attention import TokenGroup
from model import Ranker, UserCache
from model.batch import Batch, collate
from model.features import FeatureSpec
from model.snapshot import SnapshotMeta
from serving.metrics import ModelTimes
from streaming.sample import Sample
from streaming.user_state import Candidate, UserState, build_request_sample


class InputError(ValueError):
    """A request that passed schema validation but cannot be turned into a batch (→ HTTP 422)."""

    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(f"{reason}: {detail}")
        self.reason = reason
        self.detail = detail


class NonFiniteScore(RuntimeError):
    """The model produced a NaN/inf score (a model fault, never the client's)."""


@dataclass(frozen=True, slots=True)
class ServedModel:
    """A verified snapshot in eval mode: the object a request holds for its whole lifetime.

    Swapping replaces the holder's reference; a request that already took this object keeps using it.
    """

    model: Ranker
    spec: FeatureSpec
    meta: SnapshotMeta
    path: str
    loaded_at: float
    tasks: tuple[str, ...]

    def times(self) -> ModelTimes:
        """Its wall-clock times: swapped in, snapshot written, newest trained samples record produced."""
        m = self.meta
        return ModelTimes(self.loaded_at, float(m.created_at),
                          None if m.max_produce_ts is None else float(m.max_produce_ts))


@dataclass(frozen=True, slots=True)
class ScoreResult:
    """Per-task probabilities, ``scores[task][i]`` for candidate i, and timings."""

    scores: dict[str, list[float]]
    build_s: float
    model_s: float


def context_digest(batch: Batch) -> bytes | None:
    """Digest of everything :meth:`Ranker.encode_user` reads for a one-user batch, or None for other batches.

    That is the context tokens' sparse ids (time-gap buckets included, so a history whose buckets moved with the
    request time gets a new digest), their groups and, when the context holds R tokens (whose mask compares
    timestamps), their timestamps and the time origin. Equal digests give the same :class:`UserCache`.
    """
    if batch.num_samples != 1:
        return None
    n = batch.num_tokens
    n_ctx = n - batch.num_targets  # collate puts a user's targets after its context
    h = hashlib.blake2b(digest_size=16)
    h.update(n_ctx.to_bytes(8, "little"))
    lens = batch.sparse.lengths().view(-1, n)  # key-major (keys, N)
    vals = batch.sparse.values()
    start = 0
    for kl, total in zip(lens, lens.sum(1).tolist(), strict=True):
        c = int(kl[:n_ctx].sum())
        h.update(kl[:n_ctx].numpy().tobytes())
        h.update(vals[start:start + c].numpy().tobytes())
        start += total
    group = batch.token_group[:n_ctx]
    h.update(group.numpy().tobytes())
    if bool((group == TokenGroup.R).any()):
        h.update(batch.token_ts[:n_ctx].numpy().tobytes())
        h.update(batch.ts_origin.numpy().tobytes())
    return h.digest()


class UserCacheLRU:
    """A small thread-safe LRU of per-user encodings (:class:`UserCache`) for the model being served.

    Keyed by (user id, :func:`context_digest`): a repeat request whose context is unchanged (same state version,
    same time-gap buckets) skips :meth:`Ranker.encode_user` and only pays for its candidates; scores are identical
    to encoding again. A different model (hot swap) empties it. One entry is ~0.5 MB with the default model
    (layers x context tokens x kv width), so keep ``capacity`` small.

    Example:
        >>> lru = UserCacheLRU(capacity=2)
        >>> len(lru)
        0
    """

    def __init__(self, capacity: int = 64) -> None:
        self.capacity = capacity
        self._model: Ranker | None = None
        self._items: OrderedDict[tuple[str, bytes], UserCache] = OrderedDict()
        self._lock = threading.Lock()
        self.hits = 0
        self.misses = 0

    def __len__(self) -> int:
        return len(self._items)

    def encode(self, model: Ranker, batch: Batch) -> UserCache:
        """``model.encode_user(batch)``, from the cache when this user's context was encoded before."""
        digest = context_digest(batch) if self.capacity > 0 else None
        if digest is None:
            return model.encode_user(batch)
        key = (batch.user_ids[0], digest)
        with self._lock:
            if self._model is not model:
                self._model, self._items = model, OrderedDict()
            hit = self._items.get(key)
            if hit is not None:
                self._items.move_to_end(key)
                self.hits += 1
                return hit
            self.misses += 1
        cache = model.encode_user(batch)
        with self._lock:
            if self._model is model:
                self._items[key] = cache
                while len(self._items) > self.capacity:
                    self._items.popitem(last=False)
        return cache


DEFAULT_USER_CACHE = UserCacheLRU()


def build_batch_sample(state: UserState | None, user_id: str, scenario: str, candidates: Sequence[Candidate],
                       context: dict[str, str], now: float) -> Sample:
    """The request's user-level sample (same code as the stream's); input problems raise :class:`InputError`."""
    try:
        return build_request_sample(state, user_id, scenario, candidates, context, now)
    except (ValueError, KeyError, TypeError) as e:
        raise InputError("unbuildable_request", f"{type(e).__name__}: {e}") from None


def score_sample(model: Ranker, spec: FeatureSpec, sample: Sample) -> dict[str, torch.Tensor]:
    """Probabilities per task, shape (T,), through the cached path: ``encode_user`` once, then all candidates."""
    batch = collate([sample], spec)
    with torch.inference_mode():
        cache = model.encode_user(batch)
        logits = model.score_candidates(cache, batch)
    return {task: torch.sigmoid(v.float()) for task, v in logits.items()}


def score_request(served: ServedModel, state: UserState | None, user_id: str, scenario: str,
                  candidates: Sequence[Candidate], context: dict[str, str], now: float,
                  user_cache: UserCacheLRU | None = DEFAULT_USER_CACHE) -> ScoreResult:
    """Score ``candidates`` for ``user_id`` with ``served``; ``state=None`` is a cold start.

    ``user_cache`` reuses the user's encoding when the same context was encoded before (None: always encode).
    """
    t0 = time.perf_counter()
    sample = build_batch_sample(state, user_id, scenario, candidates, context, now)
    try:
        batch = collate([sample], served.spec)
    except (ValueError, KeyError, TypeError) as e:
        raise InputError("uncollatable_request", f"{type(e).__name__}: {e}") from None
    t1 = time.perf_counter()
    with torch.inference_mode():
        cache = served.model.encode_user(batch) if user_cache is None else user_cache.encode(served.model, batch)
        logits = served.model.score_candidates(cache, batch)
    scores = {task: torch.sigmoid(v.float()).tolist() for task, v in logits.items()}
    t2 = time.perf_counter()
    for task, vals in scores.items():
        if len(vals) != len(candidates):
            raise RuntimeError(f"model returned {len(vals)} {task} scores for {len(candidates)} candidates")
        if not all(math.isfinite(v) for v in vals):
            raise NonFiniteScore(f"non-finite {task} score from snapshot version {served.meta.version}")
    return ScoreResult(scores=scores, build_s=t1 - t0, model_s=t2 - t1)
