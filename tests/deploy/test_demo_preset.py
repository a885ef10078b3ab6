"""The local pipeline names its model preset: ``python -m deploy demo --preset NAME`` (default ``laptop``) starts
the trainer with ``--preset NAME`` and serving expecting that preset; the flags parse in both services."""

from __future__ import annotations

from pathlib import Path

import pytest

from deploy import demo
from deploy.pipeline import LAPTOP_TRAINER_ARGS, Pipeline, PipelineConfig, trainer_preset_args
from deploy.supervisor import Supervisor
from model import PRESETS
from serving.__main__ import parse_config
from trainer.__main__ import _parser as trainer_parser
from trainer.__main__ import preset_from_args


def test_demo_preset_flag() -> None:
    assert demo.config_from_args([]).preset == "laptop"
    assert demo.config_from_args(["--preset", "base"]).preset == "base"
    with pytest.raises(SystemExit):
        demo.config_from_args(["--preset", "no-such-preset"])


def test_laptop_trainer_args_are_the_laptop_preset() -> None:
    args = trainer_parser().parse_args(list(LAPTOP_TRAINER_ARGS))
    assert preset_from_args(args) == PRESETS["laptop"]
    assert (args.batch_samples, args.threads) == (64, 1)


@pytest.mark.parametrize("name", sorted(PRESETS))
def test_the_pipeline_passes_the_preset_to_trainer_and_serving(name: str, tmp_path: Path) -> None:
    cfg = PipelineConfig(run_dir=tmp_path, trainer_args=trainer_preset_args(name), serving_args=("--preset", name))
    pipe = Pipeline(cfg, "127.0.0.1:1", Supervisor(tmp_path))
    trainer_argv = pipe.trainer_service().argv
    serving_argv = pipe.serving_service().argv
    assert trainer_argv[1:3] == ("-m", "trainer") and serving_argv[1:3] == ("-m", "serving")
    assert preset_from_args(trainer_parser().parse_args(list(trainer_argv[3:]))) == PRESETS[name]
    assert parse_config(list(serving_argv[3:])).preset == name
