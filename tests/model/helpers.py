"""Deterministic sample factories and small model settings for the model tests."""

from __future__ import annotations

import random

import torch

from model import RankerConfig
from model.features import FeatureSpec, TableSpec
from streaming.sample import Behavior, Sample, Target, make_sample_id

SCENARIOS = ("home", "search", "cart", "brand-new-scenario")


def small_spec(**kw: object) -> FeatureSpec:
    """Small tables so tests build models in milliseconds."""
    dims = {"user_feat": 8, "item_id": 8, "item_feat": 8, "scenario": 8, "action": 4, "time_gap": 4,
            "context": 8, "dense": 8, "cross": 8}
    rows = {"time_gap": 32, "action": 64, "scenario": 64}
    tables = {k: TableSpec(rows.get(k, 997), d) for k, d in dims.items()}
    return FeatureSpec(tables=tables, **kw)  # type: ignore[arg-type]


def small_config(**kw: object) -> RankerConfig:
    base: dict[str, object] = {"d_model": 24, "num_blocks": 2, "target_layers": 2, "q_heads": 3, "kv_heads": 1,
                               "head_dim": 8, "num_experts": 2, "expert_dim": 16}
    base.update(kw)
    return RankerConfig(**base)  # type: ignore[arg-type]


def behavior(rng: random.Random, ts: float) -> Behavior:
    return Behavior(f"i{rng.randrange(40)}", rng.choice(SCENARIOS), rng.choice(("click", "order", "view")), ts,
                    {"cat": str(rng.randrange(6)), "brand": f"b{rng.randrange(9)}"})


def target(rng: random.Random, uid: str, j: int, ts: float) -> Target:
    return Target(
        event_id=f"{uid}-e{j}", request_id=f"{uid}-r{j}", item_id=f"i{rng.randrange(40)}",
        scenario=rng.choice(SCENARIOS), ts=ts, position=rng.choice((None, 0, 1, 5)),
        item={"cat": str(rng.randrange(6))}, context={"hour": str(rng.randrange(24)), "os": "ios"},
        dense={"price": rng.uniform(0, 100)}, cross={"user_item_clicks": float(rng.randrange(5))},
        labels={"click": rng.randrange(2), "conversion": rng.randrange(2)},
    )


def make_sample(seed: int, n_hist: int = 6, n_rt: int = 4, n_tgt: int = 5, t0: float = 1.7e9) -> Sample:
    """A user with history before t0, real-time events interleaved with targets at t0 + 10 j (+5 for R)."""
    rng = random.Random(seed)
    uid = f"u{seed}"
    hist = [behavior(rng, t0 - 1000.0 * (n_hist - i)) for i in range(n_hist)]
    rt = [behavior(rng, t0 + 10.0 * i + 5.0) for i in range(n_rt)]
    tg = [target(rng, uid, j, t0 + 10.0 * j) for j in range(n_tgt)]
    return Sample(make_sample_id(t.event_id for t in tg), uid, tg, user={"age": str(20 + seed % 30), "city": "c1"},
                  history=hist, realtime=rt, span_start=t0, span_end=tg[-1].ts if tg else t0, max_event_ts=t0 + 99)


def seeded(module: torch.nn.Module, seed: int = 0) -> torch.nn.Module:
    """Re-initialise every parameter with a seeded normal so zero-initialised ones (biases, slots) matter too."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in module.named_parameters():
            base = 1.0 if "norm" in name and "weight" in name else 0.0
            p.copy_(base + 0.2 * torch.randn(p.shape, generator=g))
    return module.eval()
