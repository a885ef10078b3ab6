"""The model contract :class:`trainer.loop.Trainer` relies on, as typed Protocols (checked by mypy and, being
``runtime_checkable``, by ``isinstance`` at the trainer's entry).

* :class:`TrainableModel`: scoring (``model(batch) -> {task: (T,) logits}``), the two parameter groups (row-wise
  Adagrad on embedding tables, AdamW on the rest), ``observe`` (model-side streaming statistics, updated after each
  real training step) and ``config`` (a dataclass, logged with every checkpoint). :class:`~model.Ranker`
  and :class:`~model.DLRMBaseline` implement it, and so does the DMP-sharded Ranker of
  :mod:`trainer.distributed`.
* :class:`SnapshotSource`: a trainable model with a servable form, ``to_ranker()``: the Ranker to write as a serving
  snapshot (the Ranker itself; a sharded one gathers its tables and returns the Ranker on rank 0, None on the other
  ranks). A model without it (the DLRM baseline) is trained and checkpointed but never served.

Example:
    >>> from model.features import FeatureSpec
    >>> from model import DLRMBaseline, DLRMConfig, Ranker, RankerConfig
    >>> ranker, dlrm = Ranker(FeatureSpec(), RankerConfig()), DLRMBaseline(FeatureSpec(), DLRMConfig())
    >>> isinstance(ranker, SnapshotSource), isinstance(dlrm, TrainableModel), isinstance(dlrm, SnapshotSource)
    (True, True, False)
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable

import torch
from torch import nn

from model.batch import Batch

if TYPE_CHECKING:
    from model.ranker import Ranker


@runtime_checkable
class TrainableModel(Protocol):
    """What the continual trainer needs of a model besides being an ``nn.Module``."""

    @property
    def config(self) -> Any:
        """The model's frozen config dataclass (written into every checkpoint's metadata)."""
        ...

    def __call__(self, batch: Batch) -> dict[str, torch.Tensor]:
        """``{task: (T,) logits}``, one per target of ``batch`` (no loss inside)."""
        ...

    def embedding_parameters(self) -> list[nn.Parameter]:
        """Embedding-table parameters (row-wise Adagrad; empty when a sharded model fuses it into the backward)."""
        ...

    def dense_parameters(self) -> list[nn.Parameter]:
        """Every other trainable parameter (AdamW)."""
        ...

    def observe(self, batch: Batch) -> None:
        """Update model-side statistics with a batch just trained on (after scoring and learning from it)."""
        ...


@runtime_checkable
class SnapshotSource(TrainableModel, Protocol):
    """A trainable model with a servable form."""

    def to_ranker(self) -> Ranker | None:
        """The Ranker to write as a serving snapshot; None where another rank writes it."""
        ...
