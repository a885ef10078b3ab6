"""Training-only baselines for offline evaluation: popularity and online logistic regression.

Both follow the progressive protocol of the neural models: score a batch first, then learn from its labels.

:class:`LogisticRegressionBaseline` (model name ``lr``) is a hashed sparse logistic regression on the target's ids,
item/user/context features, user × item crosses and bucketed cross counters (:func:`target_features`), one Adagrad
step per batch.

:class:`PopularityBaseline` predicts each task's rate for an item with additive smoothing towards the global rate
seen so far, and is updated online (predict first, then count the batch's labels) — the same progressive protocol
as the neural models:

    p(task | item) = (positives_item + m * prior) / (impressions_item + m),   prior = (P + 1) / (N + 2)

Example:
    >>> pop = PopularityBaseline(("click",), smoothing=1.0)
    >>> pop.predict(["a", "a"])["click"].tolist()
    [0.5, 0.5]
    >>> pop.update(["a", "a", "b"], {"click": [1.0, 1.0, 0.0]})
    >>> [round(x, 3) for x in pop.predict(["a", "b", "c"])["click"].tolist()]
    [0.867, 0.3, 0.6]
"""

from __future__ import annotations

import math
import warnings
import zlib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import torch

from streaming.sample import Sample, Target


@dataclass
class _Counts:
    n: float = 0.0
    pos: float = 0.0


class PopularityBaseline:
    """Smoothed per-item rate of each task, updated online (no parameters, no gradients)."""

    def __init__(self, tasks: Sequence[str], smoothing: float = 10.0) -> None:
        if smoothing <= 0:
            raise ValueError("smoothing must be > 0")
        self.tasks = tuple(tasks)
        self.smoothing = smoothing
        self._items: dict[str, dict[str, _Counts]] = {t: {} for t in self.tasks}
        self._global = {t: _Counts() for t in self.tasks}

    def predict(self, item_ids: Sequence[str]) -> dict[str, torch.Tensor]:
        """task → (T,) probabilities for the given items."""
        out: dict[str, torch.Tensor] = {}
        m = self.smoothing
        for t in self.tasks:
            g = self._global[t]
            prior = (g.pos + 1.0) / (g.n + 2.0)
            table = self._items[t]
            vals = []
            for i in item_ids:
                c = table.get(i)
                vals.append(prior if c is None else (c.pos + m * prior) / (c.n + m))
            out[t] = torch.tensor(vals, dtype=torch.float32)
        return out

    def update(self, item_ids: Sequence[str], labels: Mapping[str, Sequence[float] | torch.Tensor]) -> None:
        """Count one batch of labeled impressions (after it was scored)."""
        for t in self.tasks:
            ys = labels[t].tolist() if isinstance(labels[t], torch.Tensor) else list(labels[t])  # type: ignore[union-attr]
            table = self._items[t]
            g = self._global[t]
            for i, y in zip(item_ids, ys, strict=True):
                c = table.get(i)
                if c is None:
                    c = table[i] = _Counts()
                c.n += 1.0
                c.pos += float(y)
                g.n += 1.0
                g.pos += float(y)


# ---------------------------------------------------------------------------------------------- online LR
def _bucket_count(x: float) -> int:
    """log2 bucket of a non-negative count: 0, 1, 2-3, 4-7, ... capped at 12."""
    return min(int(math.log2(1.0 + max(x, 0.0))), 12)


def _bucket_float(x: float) -> int:
    """sign(x)·log2 bucket of |x| (open-keyed dense floats of any scale), capped at ±16."""
    b = min(int(math.log2(1.0 + abs(x)) * 2), 16)
    return -b if x < 0 else b


def target_features(sample: Sample, target: Target) -> list[str]:
    """The sparse features of one target, as strings (hashed by :class:`LogisticRegressionBaseline`).

    - ids: ``item``, ``user``, ``scenario``, ``scenario × item``;
    - the target's item features and the user's profile and the target's context, one feature per ``key=value``
      (multi-valued item values such as ``genres=Action|Comedy`` give one feature per value);
    - crosses: ``user × item value`` (the user's own taste per genre, decade, ...) and ``user feature × item value``
      (age × genre, ...);
    - the target's cross counters (the user's running rates per scope and window, see ``streaming.cross``): every
      ``*_rate_*`` as its rate decile conjoined with the log2 bucket of its impression count (a rate of 1.0 over 1
      impression is not one over 30), every ``*_imp_*`` count as its log2 bucket;
    - ``dense`` floats as signed log2 buckets.

    Example:
        >>> from streaming.sample import Target, Sample
        >>> t = Target("e", "r", "i7", "home", 1.0, item={"genres": "A|B"}, cross={"all_click_rate_1h": 0.5,
        ...            "all_imp_1h": 4.0})
        >>> target_features(Sample("s", "u1", [t], user={"age": "25"}), t)  # doctest: +NORMALIZE_WHITESPACE
        ['i=i7', 'u=u1', 's=home', 's=home&i=i7', 'it.genres=A', 'u=u1&it.genres=A', 'us.age=25&it.genres=A',
         'it.genres=B', 'u=u1&it.genres=B', 'us.age=25&it.genres=B', 'us.age=25', 'x.all_click_rate_1h=5@2',
         'x.all_imp_1h=2']
    """
    u = sample.user_id
    out = [f"i={target.item_id}", f"u={u}", f"s={target.scenario}", f"s={target.scenario}&i={target.item_id}"]
    user = [f"us.{k}={v}" for k, v in sorted(sample.user.items())]
    for k, v in sorted(target.item.items()):
        for part in v.split("|"):
            f = f"it.{k}={part}"
            out += [f, f"u={u}&{f}", *(f"{uf}&{f}" for uf in user)]
    out += user
    out += [f"cx.{k}={v}" for k, v in sorted(target.context.items())]
    cross = target.cross
    for k, x in sorted(cross.items()):
        if "_rate_" in k:
            scope, rest = k.split("_", 1)
            window = rest.split("_rate_", 1)[1]
            n = cross.get(f"{scope}_imp_{window}", 0.0)
            out.append(f"x.{k}={round(10 * x)}@{_bucket_count(n)}")
        elif "_imp_" in k:
            out.append(f"x.{k}={_bucket_count(x)}")
    out += [f"d.{k}={_bucket_float(x)}" for k, x in sorted(target.dense.items())]
    return out


@dataclass(frozen=True)
class LRConfig:
    """Settings of :class:`LogisticRegressionBaseline`.

    Attributes:
        buckets: rows of the hashed weight table (features hash with CRC-32 mod ``buckets``; collisions share a row).
        lr: Adagrad learning rate (weights and biases).
    """

    buckets: int = 1 << 20
    lr: float = 0.05

    def __post_init__(self) -> None:
        if self.buckets < 1 or self.lr <= 0:
            raise ValueError("buckets must be >= 1 and lr > 0")


@dataclass
class HashedTargets:
    """A batch's targets as bags of hashed feature rows: target j owns ``rows[offsets[j]:offsets[j+1]]``."""

    rows: torch.Tensor  # (F,) int64, F = total features of the batch
    offsets: torch.Tensor  # (T,) int64, start of each target's bag
    count: int  # T


class LogisticRegressionBaseline(torch.nn.Module):
    """Online logistic regression on hashed sparse features of the target (:func:`target_features`).

    One weight per (hashed feature, task) — an ``EmbeddingBag`` of width ``len(tasks)``, i.e. one dim-1 bag per
    task sharing the hashing — plus a bias per task: ``logit_t = b_t + Σ_f w[f, t]``. Trained online with the same
    progressive protocol as every model of the evaluation: :meth:`predict` a batch, then :meth:`update` on its labels
    (one Adagrad step on the summed binary cross-entropy of the batch's targets; sparse gradients touch only the
    batch's rows). Weights start at 0 (deterministic: no seed involved).

    Example:
        >>> from streaming.sample import Target, Sample
        >>> lr = LogisticRegressionBaseline(("click",), LRConfig(buckets=1024, lr=0.5))
        >>> s = Sample("s", "u1", [Target("e", "r", "i1", "home", 1.0, labels={"click": 1})])
        >>> h = lr.featurize([s])
        >>> lr.predict(h)["click"].tolist()
        [0.5]
        >>> lr.update(h, {"click": torch.tensor([1.0])})
        >>> lr.predict(h)["click"].item() > 0.5
        True
    """

    def __init__(self, tasks: Sequence[str], config: LRConfig | None = None) -> None:
        super().__init__()
        self.tasks = tuple(tasks)
        self.config = config or LRConfig()
        self.weights = torch.nn.EmbeddingBag(self.config.buckets, len(self.tasks), mode="sum", sparse=True)
        torch.nn.init.zeros_(self.weights.weight)
        self.bias = torch.nn.Parameter(torch.zeros(len(self.tasks)))
        self.opt = torch.optim.Adagrad(self.parameters(), lr=self.config.lr)
        self._rows: dict[str, int] = {}  # feature string -> row (memo of the CRC-32 hash)

    def _row(self, feature: str) -> int:
        r = self._rows.get(feature)
        if r is None:
            r = self._rows[feature] = zlib.crc32(feature.encode()) % self.config.buckets
        return r

    def featurize(self, samples: Sequence[Sample]) -> HashedTargets:
        """Hash the features of every target of ``samples`` (in the samples' target order, as ``collate``)."""
        rows: list[int] = []
        offsets: list[int] = []
        for s in samples:
            for t in s.targets:
                offsets.append(len(rows))
                rows.extend(self._row(f) for f in target_features(s, t))
        return HashedTargets(torch.tensor(rows, dtype=torch.int64), torch.tensor(offsets, dtype=torch.int64),
                             len(offsets))

    def forward(self, h: HashedTargets) -> torch.Tensor:
        """(T, tasks) logits."""
        if h.count == 0:
            return torch.zeros(0, len(self.tasks))
        return self.weights(h.rows, h.offsets) + self.bias

    def predict(self, h: HashedTargets) -> dict[str, torch.Tensor]:
        """task → (T,) probabilities (no update)."""
        with torch.no_grad():
            p = torch.sigmoid(self(h))
        return {t: p[:, i] for i, t in enumerate(self.tasks)}

    def update(self, h: HashedTargets, labels: Mapping[str, torch.Tensor]) -> None:
        """One Adagrad step on the batch's labels (after it was scored)."""
        if h.count == 0:
            return
        y = torch.stack([labels[t].float() for t in self.tasks], dim=1)
        z = self(h)
        loss = torch.nn.functional.binary_cross_entropy_with_logits(z, y, reduction="sum")
        self.opt.zero_grad(set_to_none=True)
        loss.backward()
        with warnings.catch_warnings():  # torch's note that sparse-gradient invariant checks are off
            warnings.filterwarnings("ignore", message="Sparse invariant checks", category=UserWarning)
            self.opt.step()
