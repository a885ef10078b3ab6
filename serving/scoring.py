"""User-level scoring: one request → one sample → one batch → encode the user once → score every candidate.

This is the pure core of the serving worker (no HTTP, no Kafka): the API calls :func:`score_request` on a worker
thread, the parity test and the benchmark call it directly.

Example (with a loaded snapshot ``served``)::

    result = score_request(served, state=None, user_id="u1", scenario="home",
                           candidates=[Candidate("i1", {}, {}, {})], context={}, now=time.time())
    result.scores["click"]        # [p_click(i1)]
"""

from __future__ import annotations

import math
import time
from collections.abc import Sequence
from dataclasses import dataclass

import torch

from streaming.sample import Sample
from streaming.user_state import Candidate, UserState, build_request_sample
from trainer.batch import collate
from trainer.features import FeatureSpec
from trainer.model import Ranker
from trainer.snapshot import SnapshotMeta


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


@dataclass(frozen=True, slots=True)
class ScoreResult:
    """Per-task probabilities, ``scores[task][i]`` for candidate i, and timings."""

    scores: dict[str, list[float]]
    build_s: float
    model_s: float


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
                  candidates: Sequence[Candidate], context: dict[str, str], now: float) -> ScoreResult:
    """Score ``candidates`` for ``user_id`` with ``served``; ``state=None`` is a cold start."""
    t0 = time.perf_counter()
    sample = build_batch_sample(state, user_id, scenario, candidates, context, now)
    try:
        batch = collate([sample], served.spec)
    except (ValueError, KeyError, TypeError) as e:
        raise InputError("uncollatable_request", f"{type(e).__name__}: {e}") from None
    t1 = time.perf_counter()
    with torch.inference_mode():
        cache = served.model.encode_user(batch)
        logits = served.model.score_candidates(cache, batch)
    scores = {task: torch.sigmoid(v.float()).tolist() for task, v in logits.items()}
    t2 = time.perf_counter()
    for task, vals in scores.items():
        if len(vals) != len(candidates):
            raise RuntimeError(f"model returned {len(vals)} {task} scores for {len(candidates)} candidates")
        if not all(math.isfinite(v) for v in vals):
            raise NonFiniteScore(f"non-finite {task} score from snapshot version {served.meta.version}")
    return ScoreResult(scores=scores, build_s=t1 - t0, model_s=t2 - t1)
