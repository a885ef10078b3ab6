"""Optional TorchRec managed-collision ("zero-collision hashing", ZCH) tables with LRU eviction.

With ``FeatureSpec(managed_collision=True)`` collate emits raw 63-bit hashes; an ``MCHManagedCollisionModule`` per
table maps each raw id to its own row (while rows are free) instead of letting ``hash % rows`` collide. Every
``spec.mc_eviction_interval`` training steps it admits the ids seen since the last admission and evicts the
least-recently-seen ones (LRU); until admitted, a new id reads the table's last row. The id->row mapping lives in
buffers, so it is part of ``state_dict`` and travels in snapshots. Works on CPU (TorchRec 1.9.2, tested).
"""

from __future__ import annotations

import torch
from torch import nn
from torchrec import EmbeddingBagCollection, EmbeddingBagConfig
from torchrec.modules.mc_embedding_modules import ManagedCollisionEmbeddingBagCollection
from torchrec.modules.mc_modules import (
    LRU_EvictionPolicy,
    ManagedCollisionCollection,
    MCHManagedCollisionModule,
)

from model.features import FeatureSpec


def managed_collision_ebc(
    spec: FeatureSpec, tables: list[EmbeddingBagConfig], device: torch.device | None = None
) -> nn.Module:
    """A ``ManagedCollisionEmbeddingBagCollection`` over ``tables`` (one MCH module per table, LRU eviction)."""
    dev = device or torch.device("cpu")
    modules: dict[str, MCHManagedCollisionModule] = {
        t.name: MCHManagedCollisionModule(
            zch_size=t.num_embeddings,
            device=dev,
            eviction_policy=LRU_EvictionPolicy(decay_exponent=1.0),
            eviction_interval=spec.mc_eviction_interval,
            input_hash_size=(1 << 63) - 1,
            name=t.name,
        )
        for t in tables
    }
    ebc = EmbeddingBagCollection(tables=tables, device=dev)
    mcc = ManagedCollisionCollection(managed_collision_modules=modules, embedding_configs=tables)  # type: ignore[arg-type]
    return ManagedCollisionEmbeddingBagCollection(ebc, mcc, return_remapped_features=False)
