"""model.presets.flops_per_target: grows along SCALING, equals a hand count on a tiny config, and its matrix-product
parts (tokenizers, projections, heads) equal what torch's FLOP counter measures on a real forward pass."""

from __future__ import annotations

import re

import pytest
import torch
from torch.utils.flop_counter import FlopCounterMode

from model import Preset, RankerConfig
from model.batch import collate
from model.presets import ABLATIONS, PRESETS, SCALING, flops_breakdown, flops_per_target
from tests.model.helpers import make_sample

# d=4, 1 block of 1 full + 1 target layer, 2 query heads : 1 KV head of width 2, 1 expert of width 2
HAND = Preset(name="hand", description="hand count",
              ranker=RankerConfig(preset="hand", d_model=4, num_blocks=1, target_layers=1, q_heads=2, kv_heads=1,
                                  head_dim=2, num_experts=1, expert_dim=2),
              max_history=3, max_realtime=0, max_table_rows=64)


def test_flops_grow_along_the_scaling_family() -> None:
    parts = [flops_breakdown(PRESETS[n], 256, 16) for n in SCALING]
    for key in parts[0]:
        assert parts[0][key] < parts[1][key] < parts[2][key], key
    per_target = [flops_per_target(PRESETS[n], 256, 16) for n in SCALING]
    assert per_target[0] < per_target[1] < per_target[2]
    assert flops_per_target(PRESETS["small"], 512, 16) > per_target[0]  # longer histories cost more per target


def test_flops_equal_a_hand_count() -> None:
    t = HAND.feature_spec().tables
    in_u = t["user_feat"].dim
    in_h = t["item_id"].dim + t["item_feat"].dim + t["scenario"].dim + t["action"].dim + t["time_gap"].dim
    in_t = t["item_id"].dim + t["item_feat"].dim + t["scenario"].dim + t["time_gap"].dim + t["context"].dim \
        + t["dense"].dim + t["cross"].dim + 3
    # U=2 user tokens, H=3, T=2: C=5 context tokens, N=7; d=4, a=2*2=4, kv=2*1*2=4
    tokenizers = 2 * (2 * (in_u + 4) * 4 + 3 * (in_h + 4) * 4 + 2 * (in_t + 4) * 4)
    projections = 2 * 7 * 4 * (3 * 4 + 4) + 2 * (7 * 4 * 4 + 2 * 3 * 4 * 4)  # full layer + target layer = 1312
    attention = 4 * 4 * ((5 * 5 + 2 * 6) + 2 * 6)  # pairs: full 37 (context 5x5, each target 5 + itself), target 12
    heads = 2 * 2 * ((2 * 4 * 2 + 2 * 2) + 2 * ((t["scenario"].dim + 8) * 1 + 2 * 1 + 1) + in_t * 2)
    assert projections == 1312 and attention == 784
    assert flops_breakdown(HAND, 3, 2) == {"tokenizers": tokenizers, "projections": projections,
                                           "attention": attention, "heads": heads}
    assert flops_per_target(HAND, 3, 2) == (tokenizers + projections + attention + heads) / 2
    # time-causal mask: U 2x2, H_i sees U and H_0..H_i (2*3 + 6), T_j sees U, H and T_0..T_j (2*5 + 3)
    causal = flops_breakdown(ABLATIONS["no_dynamic_mask"](HAND), 3, 2)
    assert causal["attention"] == 4 * 4 * ((4 + 6 + 6 + 13) + 13)
    # prompts: 1 scenario + 2 task tokens join the context (C=8, N=10); no tokenizer runs on them
    prompted = flops_breakdown(ABLATIONS["prompt_tokens"](HAND), 3, 2)
    assert prompted["attention"] == 4 * 4 * ((8 * 8 + 2 * 9) + 2 * 9)
    assert prompted["projections"] == 2 * 10 * 4 * 16 + 2 * (10 * 4 * 4 + 2 * 3 * 4 * 4)
    assert prompted["tokenizers"] == tokenizers
    with pytest.raises(ValueError):
        flops_per_target(HAND, 3, 0)


_PARTS = {  # breakdown key -> the modules whose matrix products it counts
    "tokenizers": r"Ranker\.embedder\.tokenizers\.\d",
    "projections": r"Ranker\.blocks\.\d+\.\d+\.\w+",
    "heads": r"Ranker\.head|Ranker\.linear",
}


@pytest.mark.parametrize("preset", [PRESETS["small"], ABLATIONS["gqa_1_1"](PRESETS["medium"]),
                                    ABLATIONS["prompt_tokens"](HAND), ABLATIONS["target_ratio_0_1"](HAND)],
                         ids=["small", "medium-gqa_1_1", "hand-prompts", "hand-0_1"])
def test_matrix_product_parts_equal_the_measured_flops(preset: Preset) -> None:
    spec = preset.feature_spec()
    n_hist, n_tgt = min(5, spec.max_history), 3
    model = preset.build(spec).eval()
    batch = collate([make_sample(1, n_hist=n_hist, n_rt=0, n_tgt=n_tgt)], spec)
    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        model(batch)
    measured = counter.get_flop_counts()
    want = flops_breakdown(preset, n_hist, n_tgt)
    for part, pattern in _PARTS.items():
        got = sum(sum(ops.values()) for name, ops in measured.items() if re.fullmatch(pattern, name))
        assert got == want[part], part
