"""Loss and optimizers of the continual trainer (the model itself has neither).

* Embedding tables: row-wise Adagrad (:class:`torchrec.optim.RowWiseAdagrad`: one accumulator per row, the
  sparse-friendly choice of DLRM/TorchRec — rows that are rarely hit keep a large step size).
* Dense parameters: :class:`torch.optim.AdamW`.
* Loss: binary cross-entropy per task (mean over that task's labelled targets), summed over tasks.

Example:
    >>> import torch
    >>> logits = {"click": torch.tensor([0.0, 0.0])}
    >>> total, per_task = multitask_bce(logits, {"click": torch.tensor([1.0, 0.0])})
    >>> round(float(total), 4), round(per_task["click"], 4)
    (0.6931, 0.6931)
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn
from torchrec.optim import RowWiseAdagrad


@dataclass(frozen=True, slots=True)
class OptimConfig:
    """Optimizer settings.

    Attributes:
        embedding_lr: row-wise Adagrad learning rate for embedding tables.
        dense_lr: AdamW learning rate for dense parameters.
        weight_decay: AdamW decoupled weight decay.
        grad_clip: clip the dense gradient norm to this (0 = off).
    """

    embedding_lr: float = 0.05
    dense_lr: float = 1e-3
    weight_decay: float = 1e-5
    grad_clip: float = 1.0


def build_optimizers(
    embedding_params: Iterable[nn.Parameter], dense_params: Iterable[nn.Parameter], cfg: OptimConfig
) -> tuple[torch.optim.Optimizer | None, torch.optim.Optimizer | None]:
    """(row-wise Adagrad over embeddings, AdamW over dense); None for an empty group."""
    emb = [p for p in embedding_params if p.requires_grad]
    dense = [p for p in dense_params if p.requires_grad]
    emb_opt = RowWiseAdagrad(emb, lr=cfg.embedding_lr) if emb else None
    dense_opt = torch.optim.AdamW(dense, lr=cfg.dense_lr, weight_decay=cfg.weight_decay) if dense else None
    return emb_opt, dense_opt


def multitask_bce(
    logits: Mapping[str, torch.Tensor],
    labels: Mapping[str, torch.Tensor],
    masks: Mapping[str, torch.Tensor] | None = None,
) -> tuple[torch.Tensor, dict[str, float]]:
    """Sum over tasks of the masked mean BCE-with-logits.

    Args:
        logits: task → (T,) logits.
        labels: task → (T,) {0, 1} float labels.
        masks: optional task → (T,) bool; False excludes a target from that task's loss.

    Returns:
        ``(total loss tensor, {task: float loss})``.
    """
    total: torch.Tensor | None = None
    per_task: dict[str, float] = {}
    for task, z in logits.items():
        y = labels[task].to(z.dtype)
        m = masks.get(task) if masks is not None else None
        if m is not None:
            m = m.to(z.device).bool()
            if not bool(m.any()):
                continue
            z, y = z[m], y[m]
        if z.numel() == 0:
            continue
        loss = F.binary_cross_entropy_with_logits(z, y)
        per_task[task] = float(loss.detach())
        total = loss if total is None else total + loss
    if total is None:
        any_z = next(iter(logits.values()))
        total = any_z.sum() * 0.0
    return total, per_task
