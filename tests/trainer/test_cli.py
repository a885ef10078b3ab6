"""``python -m trainer``: every flag documented, defaults equal the config dataclasses, a DLRM run trains."""

from __future__ import annotations

import argparse

import pytest

from model import PRESETS, DLRMBaseline, Ranker
from trainer.__main__ import DEFAULT_PRESET, _model, _parser, _spec, config_from_args
from trainer.loop import TrainerConfig


def test_every_flag_has_help_and_defaults_match_the_config() -> None:
    parser = _parser()
    for action in parser._actions:
        if not isinstance(action, argparse._HelpAction):
            assert action.help and action.help != argparse.SUPPRESS, action.dest
    cfg = config_from_args(parser.parse_args([]))
    assert cfg == TrainerConfig()


def test_distributed_ranks_get_their_own_checkpoints_and_share_snapshots() -> None:
    args = _parser().parse_args(["--run-dir", "r", "--trained-log", "x/ids.txt"])
    c1 = config_from_args(args, rank=1, world_size=2)
    assert str(c1.checkpoints_path) == "r/rank1/checkpoints" and str(c1.snapshots_path) == "r/snapshots"
    assert str(c1.trained_log) == "x/rank1/ids.txt" and (c1.source.rank, c1.source.world_size) == (1, 2)


def test_model_flags_build_the_chosen_model() -> None:
    args = _parser().parse_args(["--max-table-rows", "64", "--d-model", "16", "--num-blocks", "1"])
    spec = _spec(args)
    assert max(t.num_embeddings for t in spec.tables.values()) == 64
    m = _model(args, spec)
    assert isinstance(m, Ranker) and m.config.d_model == 16 and m.config.num_blocks == 1
    assert m.cowatch is None
    cw = _model(_parser().parse_args(["--max-table-rows", "64", "--cowatch"]), spec)
    assert isinstance(cw, Ranker) and cw.cowatch is not None
    assert isinstance(_model(_parser().parse_args(["--model", "dlrm"]), spec), DLRMBaseline)


def test_help_lists_every_preset_and_the_default_is_base() -> None:
    text = _parser().format_help()
    assert "--preset {" + ",".join(sorted(PRESETS)) + "}" in text
    assert all(p.description[:30] in " ".join(text.split()) for p in PRESETS.values())
    assert DEFAULT_PRESET == "base" and _parser().parse_args([]).preset == "base"
    with pytest.raises(SystemExit):
        _parser().parse_args(["--preset", "no-such-preset"])


@pytest.mark.parametrize("name", sorted(PRESETS))
def test_preset_flag_builds_the_preset_exactly(name: str) -> None:
    args = _parser().parse_args(["--preset", name])
    spec = _spec(args)
    assert spec == PRESETS[name].feature_spec()
    m = _model(args, spec)
    assert isinstance(m, Ranker) and m.config == PRESETS[name].ranker and m.config.preset == name


def test_single_flags_override_a_preset_field_and_keep_its_name() -> None:
    args = _parser().parse_args(["--preset", "laptop", "--d-model", "16", "--max-history", "8", "--cowatch",
                                 "--mf-dim", "4"])
    spec = _spec(args)
    assert (spec.max_history, spec.max_realtime) == (8, PRESETS["laptop"].max_realtime)
    m = _model(args, spec)
    assert isinstance(m, Ranker) and m.config.preset == "laptop"
    assert (m.config.d_model, m.config.num_blocks, m.config.cowatch, m.config.mf_dim) == (16, 1, True, 4)
    assert m.mf is not None and PRESETS["laptop"].build().mf is None
    full = _spec(_parser().parse_args(["--preset", "laptop", "--max-table-rows", "0"]))  # 0 = FeatureSpec's sizes
    assert full.tables == PRESETS["base"].feature_spec().tables


def test_ema_decay_reaches_the_optimizer_config_and_is_refused_with_distributed(
        capsys: pytest.CaptureFixture[str]) -> None:
    from trainer.__main__ import main

    assert config_from_args(_parser().parse_args(["--ema-decay", "0.99"])).optim.ema_decay == 0.99
    assert main(["--distributed", "--ema-decay", "0.99"]) == 2
    assert "--ema-decay runs on one process" in capsys.readouterr().err


def test_rank_loss_weight_reaches_the_optimizer_config() -> None:
    assert config_from_args(_parser().parse_args(["--rank-loss-weight", "0.1"])).optim.rank_loss_weight == 0.1
    assert config_from_args(_parser().parse_args([])).optim.rank_loss_weight == 0.0
