"""``python -m serving``: the HTTP scoring service (see ``--help``)."""

from __future__ import annotations

import argparse
import logging
import sys

from model.contract import problems
from model.presets import PRESETS
from serving.config import ServingConfig
from streaming import cli
from streaming.spec import SampleSpec, spec_topic
from streaming.spec_topic import SpecConflict, SpecUnavailable, read_spec

log = logging.getLogger("serving")


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m serving",
        description="Serve user-level scores from the newest verified snapshot, hot-swapping new ones as the "
                    "trainer announces them. API docs at http://HOST:PORT/docs.")
    # One flag per ServingConfig field (streaming/cli.py: type, choices and default from the dataclass); by hand:
    # --no-kafka (kafka_bootstrap=None) and --preset (its choices are the model registry's).
    cli.add_config_args(p, ServingConfig, exclude=("preset",), names={"kafka_bootstrap": "bootstrap"}, help={
        "host": "bind address (0.0.0.0 exposes it)", "port": "HTTP port, /metrics included",
        "kafka_bootstrap": "Kafka bootstrap host:port",
        "samples_topic": "the streaming worker's samples topic: its sample spec is read from SAMPLES_TOPIC.spec; a "
                         "--preset that does not fit it is an error at start (exit code 2) and snapshots trained on "
                         "other samples are rejected as wrong_sample_spec",
        "sample_spec_wait_s": "at start, wait this long for the sample spec (0: read what is there; it is followed "
                              "afterwards either way)",
        "snapshot_poll_s": "seconds between snapshot-directory scans; 0 = only at start",
        "max_candidates": "most candidates per /v1/score request",
        "max_body_bytes": "largest request body accepted, larger is 413",
        "torch_threads": "torch intra-op threads for scoring", "log_level": "log level"})
    p.add_argument("--no-kafka", action="store_true",
                   help="run without Kafka: snapshots from the directory only, every user a cold start")
    p.add_argument("--preset", choices=sorted(PRESETS), default=ServingConfig().preset,
                   help="serve only snapshots trained from this model preset (model/presets.py; the model "
                        "itself always comes from the snapshot); others are rejected and counted as wrong_preset "
                        "(default: any preset)")
    return p


def parse_config(argv: list[str] | None = None) -> ServingConfig:
    p = _parser()
    a = p.parse_args(argv)
    try:
        return cli.config_from_args(ServingConfig, a, kafka_bootstrap=None if a.no_kafka else a.bootstrap,
                                    preset=a.preset)
    except ValueError as e:
        p.error(str(e))


def worker_sample_spec(cfg: ServingConfig) -> SampleSpec | None:
    """The streaming worker's sample spec (None: no Kafka, or none published yet). Raises :class:`SpecConflict`
    when it is unreadable or the configured ``--preset`` does not fit it."""
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
    if cfg.preset is not None:
        found = problems(PRESETS[cfg.preset].feature_spec(), spec)
        if found:
            raise SpecConflict(f"--preset {cfg.preset} cannot serve the samples of {cfg.samples_topic}: "
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
