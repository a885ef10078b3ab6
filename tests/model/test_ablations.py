"""model.presets.ABLATIONS: each builds, trains a step on a tiny batch, and differs from its preset in exactly the
intended config fields and parameters; what each switch claims (no cross features reach the model, one LayerNorm
affine, the time-causal mask) holds on the built model."""

from __future__ import annotations

import dataclasses
from typing import Any

import pytest
import torch

from model import Preset, Ranker
from model.batch import collate
from model.presets import ABLATIONS, PRESETS, SCALING
from streaming.cross import lifetime_count_names
from streaming.sample import Sample
from tests.model.helpers import make_sample, seeded, small_config

TINY = Preset(name="tiny", description="test shape",
              ranker=small_config(preset="tiny", cross_rates=True, task_priors=(("click", 0.4),)),
              max_history=6, max_realtime=4, max_table_rows=4096)

# name -> the RankerConfig fields it sets on TINY (q_heads 3, kv_heads 1, target_layers 2)
EXPECTED: dict[str, dict[str, Any]] = {
    "no_cross": {"cross_features": False, "cross_rates": False},
    "no_group_norm": {"group_norm": False},
    "no_dynamic_mask": {"dynamic_mask": False},
    "target_ratio_0_1": {"target_layers": 0},
    "target_ratio_3_1": {"target_layers": 3},
    "gqa_1_1": {"kv_heads": 3},
    "gqa_3_1": {"kv_heads": 1},
    "prompt_tokens": {"prompt_tokens": True},
}


def with_counters(s: Sample, seed: int) -> Sample:
    """``s`` with the lifetime cross counters CrossRates reads (impressions >= positives) on every target."""
    names = lifetime_count_names(TINY.feature_spec().tasks)
    tg = [dataclasses.replace(t, cross={**t.cross, **{n: float(3 + (seed + j + i) % 5 if "imp" in n else (j + i) % 3)
                                                      for i, n in enumerate(names)}})
          for j, t in enumerate(s.targets)]
    return dataclasses.replace(s, targets=tg)


def samples() -> list[Sample]:
    return [with_counters(make_sample(40), 0), with_counters(make_sample(41, n_tgt=3), 1)]


def shapes(model: Ranker) -> dict[str, tuple[int, ...]]:
    return {k: tuple(v.shape) for k, v in model.state_dict().items()}


def test_every_ablation_is_listed_and_sets_exactly_its_fields() -> None:
    assert set(ABLATIONS) == set(EXPECTED)
    for name, fields in EXPECTED.items():
        got = ABLATIONS[name](TINY)
        assert got.name == TINY.name == got.ranker.preset and got.ranker.variant == name
        assert got.ranker == dataclasses.replace(TINY.ranker, variant=name, **fields)
        assert dataclasses.replace(got, ranker=TINY.ranker) == TINY  # feature-spec limits untouched
    twice = ABLATIONS["no_cross"](ABLATIONS["prompt_tokens"](TINY))
    assert twice.ranker.variant == "prompt_tokens+no_cross"


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_ablation_trains_a_step_and_changes_only_its_parameters(name: str) -> None:
    spec = TINY.feature_spec()
    torch.manual_seed(0)
    base = TINY.build(spec)
    model = seeded(ABLATIONS[name](TINY).build(spec), seed=3).train()
    assert isinstance(model, Ranker) and model.config.variant == name
    batch = collate(samples(), spec)
    out = model(batch)
    assert {t: o.shape for t, o in out.items()} == {t: (8,) for t in spec.tasks}
    loss = torch.stack([torch.nn.functional.binary_cross_entropy_with_logits(out[t], batch.labels[t])
                        for t in spec.tasks]).sum()
    loss.backward()
    dead = {n for n, p in model.named_parameters() if p.grad is None or not p.grad.abs().sum() > 0}
    assert dead == ({"embedder.features.float_ebc.embedding_bags.t_cross.weight"} if name == "no_cross" else set())

    a, b = shapes(base), shapes(model)
    changed = {k for k in a.keys() & b.keys() if a[k] != b[k]}
    if name == "no_cross":
        assert a.keys() - b.keys() == {"cross_rates.proj.weight"} and not b.keys() - a.keys() and not changed
    elif name == "no_group_norm":
        assert a.keys() == b.keys() and changed == {k for k in a if ".norm_" in k}
        assert all(b[k][0] == 1 and a[k][0] == 4 for k in changed)
    elif name in ("no_dynamic_mask", "gqa_3_1"):
        assert a == b
    elif name.startswith("target_ratio"):
        k = EXPECTED[name]["target_layers"]
        assert [full for full, _ in model.layers()] == ([True] + [False] * k) * TINY.ranker.num_blocks
        assert changed == set() and (a.keys() < b.keys() if k > 2 else b.keys() < a.keys())
    elif name == "gqa_1_1":
        assert changed == {k for k in a if ".kv_proj." in k}
        assert {layer.kv_proj.out_features for _, layer in model.layers()} == {2 * 3 * TINY.ranker.head_dim}
    elif name == "prompt_tokens":
        assert not a.keys() - b.keys() and b.keys() - a.keys() == {"prompts.scenario", "prompts.task"}


def test_no_cross_reads_no_cross_feature() -> None:
    """Other cross values change the base model's scores, never the ablated model's."""
    spec = TINY.feature_spec()
    ss = samples()
    other = [dataclasses.replace(s, targets=[dataclasses.replace(t, cross={k: 7.0 * v + 1 for k, v in t.cross.items()})
                                             for t in s.targets]) for s in ss]
    for preset, moves in ((TINY, True), (ABLATIONS["no_cross"](TINY), False)):
        model = seeded(preset.build(spec), seed=1)
        with torch.no_grad():
            x, y = model(collate(ss, spec))["click"], model(collate(other, spec))["click"]
        assert bool((x - y).abs().max() > 1e-4) == moves


def test_no_group_norm_is_group_norm_with_one_affine_for_every_group() -> None:
    spec = TINY.feature_spec()
    plain = seeded(ABLATIONS["no_group_norm"](TINY).build(spec), seed=2)
    grouped = TINY.build(spec).eval()
    grouped.load_state_dict({k: v.expand(4, -1) if ".norm_" in k else v for k, v in plain.state_dict().items()})
    batch = collate(samples(), spec)
    with torch.no_grad():
        want, got = grouped(batch), plain(batch)
    for t in spec.tasks:
        torch.testing.assert_close(got[t], want[t], rtol=1e-6, atol=1e-6)


def test_no_dynamic_mask_is_time_causal() -> None:
    """Targets see earlier targets (not later ones) and never a later real-time event: no look-ahead."""
    spec = TINY.feature_spec()
    s = make_sample(7, n_rt=4, n_tgt=4)  # R_i at t0 + 10 i + 5, T_j at t0 + 10 j
    first = dataclasses.replace(s, targets=[dataclasses.replace(s.targets[0], item_id="other"), *s.targets[1:]])
    later_rt = dataclasses.replace(s, realtime=s.realtime[:2] + [dataclasses.replace(r, item_id="zz", action="order")
                                                                for r in s.realtime[2:]])
    for preset, sees_earlier_targets in ((TINY, False), (ABLATIONS["no_dynamic_mask"](TINY), True)):
        model = seeded(preset.build(spec), seed=6)
        with torch.no_grad():
            base = model(collate([s], spec))["click"]
            a = model(collate([first], spec))["click"]
            b = model(collate([later_rt], spec))["click"]
            cached = model.score_candidates(model.encode_user(collate([s], spec)), collate([s], spec))["click"]
        torch.testing.assert_close(cached, base, atol=1e-5, rtol=1e-5)
        assert bool((a[1:] - base[1:]).abs().max() > 1e-5) == sees_earlier_targets
        torch.testing.assert_close(b[:3], base[:3], rtol=0, atol=1e-6)  # R_2, R_3 come after T_0 .. T_2
        assert bool((b[3] - base[3]).abs() > 1e-5)  # ... and before T_3


@pytest.mark.parametrize("size", SCALING)
def test_ablations_apply_to_every_scaling_preset(size: str) -> None:
    base = PRESETS[size]
    assert (base.ranker.q_heads, base.ranker.kv_heads, base.ranker.target_layers) == (3, 1, 3)  # MTFM's layout
    for name, ablate in ABLATIONS.items():
        assert ablate(base).ranker == dataclasses.replace(base.ranker, variant=name, **EXPECTED[name])
    for same in ("target_ratio_3_1", "gqa_3_1"):  # the family's own layout: only the recorded variant differs
        assert dataclasses.replace(ABLATIONS[same](base).ranker, variant="") == base.ranker


def test_gqa_refuses_a_ratio_that_does_not_divide_the_query_heads() -> None:
    two = dataclasses.replace(TINY, ranker=dataclasses.replace(TINY.ranker, q_heads=2))
    with pytest.raises(ValueError, match="gqa_3_1"):
        ABLATIONS["gqa_3_1"](two)
