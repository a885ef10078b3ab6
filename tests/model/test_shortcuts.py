"""The Ranker's always-on first-order shortcuts (wide input token, linear term, per-user term, item bias), its
output-bias priors, and the options removed from RankerConfig (old snapshot configs load or are refused)."""

from __future__ import annotations

import json
import math

import pytest
import torch

from model import Ranker, RankerConfig
from model.batch import collate
from model.ranker import COWATCH_TEMPERATURES, CROSS_RATES_SMOOTHING, REMOVED_FIELDS
from tests.model.helpers import make_sample, seeded, small_config, small_spec


def test_each_shortcut_changes_the_scores() -> None:
    """Every term is live: zeroing one in a trained (seeded) model changes the logits."""
    spec = small_spec()
    batch = collate([make_sample(60, n_tgt=4)], spec)
    base = seeded(Ranker(spec, small_config()), seed=8)
    terms = {"wide": [base.wide_norm.weight, base.wide_norm.bias], "linear": [base.linear.weight],
             "item_bias": list(base.item_bias.parameters()), "user_linear": [base.user_lin.weight, base.hist_lin.weight]}
    with torch.no_grad():
        ref = base(batch)["click"]
        for name, params in terms.items():
            saved = [p.clone() for p in params]
            for p in params:
                p.zero_()
            assert not torch.allclose(base(batch)["click"], ref), name
            for p, v in zip(params, saved, strict=True):
                p.copy_(v)
        torch.testing.assert_close(base(batch)["click"], ref)


def test_task_priors_set_the_output_bias_and_shortcuts_start_at_zero() -> None:
    spec = small_spec()
    model = Ranker(spec, small_config(task_priors=(("click", 0.55), ("conversion", 0.21))))
    assert model.head.towers["click"][-1].bias.item() == pytest.approx(math.log(0.55 / 0.45))
    assert model.head.towers["conversion"][-1].bias.item() == pytest.approx(math.log(0.21 / 0.79))
    assert not model.linear.weight.any() and not any(p.any() for p in model.item_bias.parameters())
    assert not model.user_lin.weight.any() and not model.hist_lin.weight.any()
    # the item-bias table is an embedding table (row-wise Adagrad), not a dense parameter
    ib = {id(p) for p in model.item_bias.parameters()}
    assert ib <= {id(p) for p in model.embedding_parameters()}
    assert not ib & {id(p) for p in model.dense_parameters()}


def _old_json(cfg: RankerConfig, **removed: object) -> dict[str, object]:
    """``cfg`` as a config written before the pruning: every removed field present (at its fixed value unless
    given), no ``preset``."""
    d = json.loads(cfg.to_json())
    d.pop("preset")
    fixed = {k: list(v) if isinstance(v, tuple) else v for k, v in REMOVED_FIELDS.items()}
    return {**d, **fixed, **removed}


def test_configs_with_the_removed_fields_at_their_fixed_values_still_load() -> None:
    assert REMOVED_FIELDS == {"wide": True, "linear": True, "user_linear": True, "item_bias": True, "zero_init": False,
                              "cross_rates_smoothing": CROSS_RATES_SMOOTHING,
                              "cowatch_temperatures": COWATCH_TEMPERATURES}
    cfg = small_config(task_priors=(("click", 0.5),), cowatch=True)
    assert RankerConfig.from_json(_old_json(cfg)) == cfg
    assert RankerConfig.from_json(cfg.to_json()) == cfg
    assert not set(REMOVED_FIELDS) & set(json.loads(cfg.to_json()))  # no longer written


@pytest.mark.parametrize("field, value", [("wide", False), ("linear", False), ("user_linear", False),
                                          ("item_bias", False), ("zero_init", True), ("cross_rates_smoothing", 2.0),
                                          ("cowatch_temperatures", [0.0, 1.0])])
def test_configs_with_a_removed_option_switched_are_refused_with_the_field_named(field: str, value: object) -> None:
    with pytest.raises(ValueError, match=rf"RankerConfig\.{field}=.* is no longer supported"):
        RankerConfig.from_json(_old_json(small_config(), **{field: value}))
