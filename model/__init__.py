"""The servable model package: feature spec (:mod:`model.features`), ``Batch`` and ``collate`` (:mod:`model.batch`),
snapshots (:mod:`model.snapshot`) and the models :class:`Ranker` (MTFM-style HTA transformer) and
:class:`DLRMBaseline` (for comparison). Serving depends on this package, not on the trainer.

Both take a :class:`model.batch.Batch` and return ``{task: (T,) logits}``; neither contains a loss. Both implement
:class:`TrainableModel` (the contract the trainer relies on); the Ranker is also a :class:`SnapshotSource` (it is
what serving loads). Model shapes are named in :data:`PRESETS` (:mod:`model.presets`).
"""

from model.dlrm import DLRMBaseline, DLRMConfig
from model.presets import PRESETS, Preset
from model.protocols import SnapshotSource, TrainableModel
from model.ranker import Ranker, RankerConfig, UserCache

__all__ = ["PRESETS", "DLRMBaseline", "DLRMConfig", "Preset", "Ranker", "RankerConfig", "SnapshotSource",
           "TrainableModel", "UserCache"]
