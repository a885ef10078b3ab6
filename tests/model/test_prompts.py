"""MDL-style prompt tokens (RankerConfig.prompt_tokens, model/prompts.py): same output shape, gradients reach the
prompt embeddings, every target reads them, cached scoring still equals forward, and a model with prompts off is
bit-identical to one built from a config that predates the option."""

from __future__ import annotations

import json
from pathlib import Path

import torch

from model import Ranker, RankerConfig
from model.batch import collate
from model.snapshot import SnapshotMeta, load_snapshot, save_snapshot
from tests.model.helpers import make_sample, seeded, small_config, small_spec

NEW_FIELDS = ("cross_features", "group_norm", "dynamic_mask", "prompt_tokens", "variant")


def test_prompts_keep_the_output_shape_and_get_gradients() -> None:
    spec = small_spec()
    model = seeded(Ranker(spec, small_config(prompt_tokens=True)), seed=1).train()
    assert isinstance(model, Ranker) and model.prompts is not None and model.prompts.count == 1 + len(spec.tasks)
    batch = collate([make_sample(1, n_tgt=4), make_sample(2, n_hist=0, n_rt=0, n_tgt=2)], spec)
    out = model(batch)
    assert {t: tuple(o.shape) for t, o in out.items()} == {t: (6,) for t in spec.tasks}
    torch.stack([o.sum() for o in out.values()]).sum().backward()
    scen, task = model.prompts.scenario.grad, model.prompts.task.grad
    assert scen is not None and task is not None
    assert bool((task.abs().sum(1) > 0).all())  # every task token is read
    used = (batch.target_scenario_ids % model.prompts.scenario_rows).unique()
    assert bool((scen[used].abs().sum(1) > 0).all()) and int((scen.abs().sum(1) > 0).sum()) == used.numel()


def test_every_target_reads_the_prompts_and_cached_scoring_equals_forward() -> None:
    spec = small_spec()
    model = seeded(Ranker(spec, small_config(prompt_tokens=True)), seed=2)
    assert isinstance(model, Ranker) and model.prompts is not None
    batch = collate([make_sample(3, n_tgt=5), make_sample(4, n_tgt=1)], spec)
    with torch.no_grad():
        before = model(batch)
        cached = model.score_candidates(model.encode_user(batch), batch)
        model.prompts.task[1] += torch.randn(model.prompts.task.shape[1], generator=torch.Generator().manual_seed(0))
        after = model(batch)
    for t in spec.tasks:
        torch.testing.assert_close(cached[t], before[t], rtol=0, atol=0)
        assert bool(((after[t] - before[t]).abs() > 1e-6).all())  # each target attends to the task tokens


def _old_config_json(config: RankerConfig) -> dict[str, object]:
    d = json.loads(config.to_json())
    for f in NEW_FIELDS:
        del d[f]
    return d


def test_prompts_off_is_bit_identical_to_a_config_without_the_options() -> None:
    spec = small_spec()
    cfg = small_config(cross_rates=True)
    old = RankerConfig.from_json(_old_config_json(cfg))  # what a config written before the options reads as
    assert old == cfg and not old.prompt_tokens and old.variant == ""
    batch = collate([make_sample(5), make_sample(6, n_tgt=2)], spec)
    outs, states = [], []
    for c in (old, RankerConfig.from_json(cfg.to_json())):
        torch.manual_seed(0)
        model = Ranker(spec, c).train()
        outs.append(model(batch))
        states.append(model.state_dict())
    assert states[0].keys() == states[1].keys() and not any(".prompts." in k or k.startswith("prompts.")
                                                           for k in states[0])
    assert all(torch.equal(states[0][k], states[1][k]) for k in states[0])
    for t in spec.tasks:
        assert torch.equal(outs[0][t], outs[1][t])


def test_a_snapshot_written_before_the_options_loads(tmp_path: Path) -> None:
    spec = small_spec()
    model = seeded(Ranker(spec, small_config()), seed=3)
    assert isinstance(model, Ranker)
    path = save_snapshot(tmp_path, model, SnapshotMeta(1, 0.0, 0.0, 0))
    meta = json.loads((path / "meta.json").read_text())
    meta["ranker_config"] = _old_config_json(model.config)
    (path / "meta.json").write_text(json.dumps(meta))
    loaded = load_snapshot(path)
    assert loaded.config == model.config
    batch = collate([make_sample(7)], spec)
    with torch.no_grad():
        assert torch.equal(loaded.model(batch)["click"], model(batch)["click"])
