"""The servable models: :class:`Ranker` (MTFM-style HTA transformer) and :class:`DLRMBaseline` (for comparison).

Both take a :class:`trainer.batch.Batch` and return ``{task: (T,) logits}``; neither contains a loss.
"""

from trainer.model.dlrm import DLRMBaseline, DLRMConfig
from trainer.model.ranker import Ranker, RankerConfig, UserCache

__all__ = ["DLRMBaseline", "DLRMConfig", "Ranker", "RankerConfig", "UserCache"]
