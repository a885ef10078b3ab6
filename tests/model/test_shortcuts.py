"""The Ranker's shortcut terms (wide input token, first-order linear, per-user term, item bias) and its init options."""

from __future__ import annotations

import dataclasses
import json
import math

import pytest
import torch

from tests.model.helpers import make_sample, seeded, small_config, small_spec
from trainer.batch import collate
from trainer.model import Ranker, RankerConfig

_OFF = {"wide": False, "linear": False, "user_linear": False, "item_bias": False}


@pytest.mark.parametrize("options", [_OFF, {**_OFF, "item_bias": True}, {**_OFF, "user_linear": True},
                                     {"zero_init": True}])
def test_cached_scores_equal_forward_for_each_option(options: dict[str, bool]) -> None:
    spec = small_spec()
    model = seeded(Ranker(spec, small_config(**options)), seed=7)
    assert isinstance(model, Ranker)
    batch = collate([make_sample(50, n_tgt=5), make_sample(51, n_hist=0, n_rt=0, n_tgt=2)], spec)
    with torch.no_grad():
        full = model(batch)
    cached = model.score_candidates(model.encode_user(batch), batch)
    for task in spec.tasks:
        torch.testing.assert_close(cached[task], full[task], atol=1e-5, rtol=1e-5)


def test_each_shortcut_changes_the_scores() -> None:
    """Every term is live: dropping one from a trained (seeded) model changes the logits."""
    spec = small_spec()
    batch = collate([make_sample(60, n_tgt=4)], spec)
    base = seeded(Ranker(spec, small_config()), seed=8)
    with torch.no_grad():
        ref = base(batch)["click"]
        for attr in ("linear", "item_bias", "user_lin"):
            saved = getattr(base, attr)
            setattr(base, attr, None)
            if attr == "user_lin":
                base.hist_lin, saved_h = None, base.hist_lin
            assert not torch.allclose(base(batch)["click"], ref), attr
            setattr(base, attr, saved)
            if attr == "user_lin":
                base.hist_lin = saved_h


def test_task_priors_set_the_output_bias_and_shortcuts_start_at_zero() -> None:
    spec = small_spec()
    model = Ranker(spec, small_config(task_priors=(("click", 0.55), ("conversion", 0.21)), zero_init=True))
    assert model.head.towers["click"][-1].bias.item() == pytest.approx(math.log(0.55 / 0.45))
    assert model.head.towers["conversion"][-1].bias.item() == pytest.approx(math.log(0.21 / 0.79))
    assert model.linear is not None and model.item_bias is not None
    assert not model.linear.weight.any() and not any(p.any() for p in model.item_bias.parameters())
    assert all(not layer.out_proj.weight.any() for _, layer in model.layers())
    # the item-bias table is an embedding table (row-wise Adagrad), not a dense parameter
    ib = {id(p) for p in model.item_bias.parameters()}
    assert ib <= {id(p) for p in model.embedding_parameters()}
    assert not ib & {id(p) for p in model.dense_parameters()}


def test_old_config_json_loads_without_the_new_options() -> None:
    d = json.loads(small_config().to_json())
    for k in ("wide", "zero_init", "linear", "user_linear", "item_bias", "task_priors"):
        d.pop(k)
    old = RankerConfig.from_json(d)
    assert (old.wide, old.linear, old.user_linear, old.item_bias, old.task_priors) == (False, False, False, False, ())
    new = dataclasses.replace(small_config(), task_priors=(("click", 0.5),))
    assert RankerConfig.from_json(new.to_json()) == new
