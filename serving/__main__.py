"""``python -m serving``: the HTTP scoring service (see ``--help``).

One model (``--snapshot-dir``, ``--snapshots-topic``, ``--preset``; named ``default``), or several named models
(``--serve NAME=DIR[,topic=TOPIC][,preset=PRESET]``, repeatable) routed by scenario (``--route SCENARIO=NAME``,
``--route '*=NAME'`` for every other scenario; default: the first ``--serve``).
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

from model.contract import problems
from model.presets import PRESETS
from serving.config import ModelSource, ServingConfig
from streaming import cli
from streaming.spec import SampleSpec, spec_topic
from streaming.spec_topic import SpecConflict, SpecUnavailable, read_spec

log = logging.getLogger("serving")


SERVE_KEYS = {"topic": "snapshots_topic", "preset": "preset"}  # --serve option → ModelSource field


def parse_serve(text: str) -> ModelSource:
    """``NAME=SNAPSHOT_DIR[,topic=TOPIC][,preset=PRESET]`` → :class:`ModelSource` (a bad value raises
    :class:`argparse.ArgumentTypeError`, so argparse reports it). The directory cannot contain a comma.

    Example:
        >>> parse_serve("teacher=runs/teacher,topic=teacher-snapshots,preset=medium")
        ModelSource(name='teacher', snapshot_dir=PosixPath('runs/teacher'), snapshots_topic='teacher-snapshots', \
preset='medium')
        >>> parse_serve("student=runs/student").snapshots_topic is None
        True
        >>> parse_serve("student=runs/s,colour=red")
        Traceback (most recent call last):
        ...
        argparse.ArgumentTypeError: --serve student=runs/s,colour=red: unknown option 'colour' (topic, preset)
    """
    name, eq, rest = text.partition("=")
    directory, *options = rest.split(",")
    if not eq or not directory.strip():
        raise argparse.ArgumentTypeError(f"--serve {text}: expected NAME=SNAPSHOT_DIR[,topic=TOPIC][,preset=PRESET]")
    fields: dict[str, str] = {}
    for opt in options:
        key, eq, value = (part.strip() for part in opt.partition("="))
        if key not in SERVE_KEYS:
            raise argparse.ArgumentTypeError(f"--serve {text}: unknown option {key!r} ({', '.join(SERVE_KEYS)})")
        if not eq or not value:
            raise argparse.ArgumentTypeError(f"--serve {text}: {key} needs a value ({key}=...)")
        if SERVE_KEYS[key] in fields:
            raise argparse.ArgumentTypeError(f"--serve {text}: {key} given twice")
        fields[SERVE_KEYS[key]] = value
    try:
        return ModelSource(name.strip(), Path(directory.strip()), **fields)
    except ValueError as e:
        raise argparse.ArgumentTypeError(f"--serve {text}: {e}") from None


def parse_route(text: str) -> tuple[str, str]:
    """``SCENARIO=NAME`` → ``(scenario, name)``; ``*=NAME`` is the default route. The name is after the last ``=``
    (names have none), so a scenario may contain one.

    Example:
        >>> parse_route("search=teacher"), parse_route("*=student")
        (('search', 'teacher'), ('*', 'student'))
    """
    scenario, eq, name = text.rpartition("=")
    if not eq or not scenario or not name:
        raise argparse.ArgumentTypeError(f"--route {text}: expected SCENARIO=NAME ('*=NAME': every other scenario)")
    return scenario, name


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m serving",
        description="Serve user-level scores from the newest verified snapshot, hot-swapping new ones as the "
                    "trainer announces them. API docs at http://HOST:PORT/docs.")
    # One flag per ServingConfig field (streaming/cli.py: type, choices and default from the dataclass); by hand:
    # --no-kafka (kafka_bootstrap=None), --preset (its choices are the model registry's), --serve and --route
    # (repeated NAME=... values).
    cli.add_config_args(p, ServingConfig, exclude=("preset", "models", "routes"),
                        names={"kafka_bootstrap": "bootstrap"}, help={
        "host": "bind address (0.0.0.0 exposes it)", "port": "HTTP port, /metrics included",
        "kafka_bootstrap": "Kafka bootstrap host:port",
        "samples_topic": "the streaming worker's samples topic: its sample spec is read from SAMPLES_TOPIC.spec; a "
                         "--preset that does not fit it is an error at start (exit code 2) and snapshots trained on "
                         "other samples are rejected as wrong_sample_spec",
        "sample_spec_wait_s": "at start, wait this long for the sample spec (0: read what is there; it is followed "
                              "afterwards either way)",
        "snapshot_dir": "directory the trainer writes snapshots into (the single model; --serve names its own)",
        "snapshots_topic": "topic on which the trainer announces snapshots (the single model; --serve names its own)",
        "snapshot_poll_s": "seconds between snapshot-directory scans (of every model); 0 = only at start",
        "max_candidates": "most candidates per /v1/score request",
        "max_body_bytes": "largest request body accepted, larger is 413",
        "torch_threads": "torch intra-op threads for scoring", "log_level": "log level"})
    p.add_argument("--no-kafka", action="store_true",
                   help="run without Kafka: snapshots from the directory only, every user a cold start")
    p.add_argument("--preset", choices=sorted(PRESETS), default=ServingConfig().preset,
                   help="serve only snapshots trained from this model preset (model/presets.py; the model "
                        "itself always comes from the snapshot); others are rejected and counted as wrong_preset "
                        "(default: any preset; with --serve, give each model its own preset=)")
    p.add_argument("--serve", metavar="NAME=DIR[,topic=TOPIC][,preset=PRESET]", type=parse_serve, action="append",
                   default=[], help="serve a named model ([a-z0-9_-]+) from its own snapshot directory, optionally "
                                    "following its own snapshots topic and serving only one preset; repeatable, "
                                    "each hot-swapped on its own (default: one model named 'default' from "
                                    "--snapshot-dir, --snapshots-topic and --preset, which --serve replaces)")
    p.add_argument("--route", metavar="SCENARIO=NAME", type=parse_route, action="append", default=[],
                   help="score requests of SCENARIO with model NAME; '*=NAME' for every other scenario "
                        "(default: every scenario to the first --serve); repeatable")
    return p


def parse_config(argv: list[str] | None = None) -> ServingConfig:
    p = _parser()
    a = p.parse_args(argv)
    try:
        return cli.config_from_args(ServingConfig, a, kafka_bootstrap=None if a.no_kafka else a.bootstrap,
                                    preset=a.preset, models=tuple(a.serve), routes=tuple(a.route))
    except ValueError as e:
        p.error(str(e))


def worker_sample_spec(cfg: ServingConfig) -> SampleSpec | None:
    """The streaming worker's sample spec (None: no Kafka, or none published yet). Raises :class:`SpecConflict`
    when it is unreadable or a served model's preset (``--preset``, ``--serve ...,preset=``) does not fit it."""
    if cfg.kafka_bootstrap is None:
        return None
    try:
        spec = read_spec(cfg.kafka_bootstrap, cfg.samples_topic, cfg.sample_spec_wait_s)
    except SpecUnavailable as e:
        log.warning("sample spec not read at start: %s", e)
        return None
    if spec is None:
        log.info("no sample spec in %s yet; following it", spec_topic(cfg.samples_topic))
        return None
    for source in cfg.sources():
        if source.preset is None:
            continue
        found = problems(PRESETS[source.preset].feature_spec(), spec)
        if found:
            which = f"--preset {source.preset}" if not cfg.models else f"model {source.name}'s preset {source.preset}"
            raise SpecConflict(f"{which} cannot serve the samples of {cfg.samples_topic}: "
                               f"{'; '.join(found)} ({spec_topic(cfg.samples_topic)})")
    return spec


def main(argv: list[str] | None = None) -> int:
    cfg = parse_config(argv)
    # Our loggers at --log-level; libraries (kafka-python logs every connection, fbgemm every .so) at WARNING.
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    logging.getLogger("serving").setLevel(cfg.log_level.upper())
    try:
        sample_spec = worker_sample_spec(cfg)
    except SpecConflict as e:
        print(f"serving: error: {e}", file=sys.stderr)
        return 2
    import uvicorn

    from serving.api import create_app

    app = create_app(cfg, sample_spec=sample_spec)
    try:
        uvicorn.run(app, host=cfg.host, port=cfg.port, log_level=cfg.log_level, access_log=False,
                    timeout_keep_alive=cfg.keep_alive_s)
    except OSError as e:  # port taken, bad address
        print(f"serving: cannot listen on {cfg.host}:{cfg.port}: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
