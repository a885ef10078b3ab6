"""Non-neural baselines for offline evaluation.

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

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import torch


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
