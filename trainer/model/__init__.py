"""The servable models: :class:`Ranker` (MTFM-style HTA transformer) and :class:`DLRMBaseline` (for comparison).

Both take a :class:`trainer.batch.Batch` and return ``{task: (T,) logits}``; neither contains a loss. Both implement
:class:`TrainableModel` (the contract the trainer relies on); the Ranker is also a :class:`SnapshotSource` (it is
what serving loads). Model shapes are named in :data:`PRESETS` (:mod:`trainer.model.presets`).
"""

from trainer.model.dlrm import DLRMBaseline, DLRMConfig
from trainer.model.presets import PRESETS, Preset
from trainer.model.protocols import SnapshotSource, TrainableModel
from trainer.model.ranker import Ranker, RankerConfig, UserCache

__all__ = ["PRESETS", "DLRMBaseline", "DLRMConfig", "Preset", "Ranker", "RankerConfig", "SnapshotSource",
           "TrainableModel", "UserCache"]
