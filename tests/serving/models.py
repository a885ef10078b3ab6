"""A small Ranker (the model engineer's API) for serving tests: small tables keep each snapshot under a few MB."""

from __future__ import annotations

import torch

from model.features import FeatureSpec, TableSpec
from model.ranker import Ranker, RankerConfig


def small_spec() -> FeatureSpec:
    dims = {"user_feat": 8, "item_id": 16, "item_feat": 8, "scenario": 8, "action": 4, "time_gap": 4,
            "context": 8, "dense": 8, "cross": 8}
    rows = {"time_gap": 32, "action": 64, "scenario": 256}
    return FeatureSpec(tables={k: TableSpec(rows.get(k, 4096), d) for k, d in dims.items()}, max_history=256)


def small_model() -> tuple[Ranker, FeatureSpec]:
    """With the co-watch readout on (a small, seeded sketch), so serving runs its cached-context path too."""
    spec = small_spec()
    cfg = RankerConfig(d_model=32, num_blocks=1, target_layers=1, q_heads=3, kv_heads=1, head_dim=16,
                       num_experts=2, expert_dim=32, cowatch=True, cowatch_rows=1024, cowatch_dim=16)
    model = Ranker(spec, cfg).eval()
    assert model.cowatch is not None
    with torch.no_grad():
        model.cowatch.context.normal_(generator=torch.Generator().manual_seed(11))
        model.cowatch.proj.weight.normal_(std=0.5, generator=torch.Generator().manual_seed(12))
    return model, spec
