"""``python -m serving``: the HTTP scoring service (see ``--help``)."""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

from model.contract import problems
from model.presets import PRESETS
from serving.config import ServingConfig
from streaming.spec import SampleSpec, spec_topic
from streaming.spec_topic import SpecConflict, SpecUnavailable, read_spec

log = logging.getLogger("serving")


def parse_config(argv: list[str] | None = None) -> ServingConfig:
    d = ServingConfig()
    p = argparse.ArgumentParser(
        prog="python -m serving",
        description="Serve user-level scores from the newest verified snapshot, hot-swapping new ones as the "
                    "trainer announces them. API docs at http://HOST:PORT/docs.")
    p.add_argument("--host", default=d.host, help="bind address (default %(default)s; 0.0.0.0 exposes it)")
    p.add_argument("--port", type=int, default=d.port, help="HTTP port, /metrics included (default %(default)s)")
    p.add_argument("--bootstrap", default=d.kafka_bootstrap,
                   help="Kafka bootstrap host:port (default %(default)s)")
    p.add_argument("--no-kafka", action="store_true",
                   help="run without Kafka: snapshots from the directory only, every user a cold start")
    p.add_argument("--snapshots-topic", default=d.snapshots_topic,
                   help="topic the trainer announces snapshots on (default %(default)s)")
    p.add_argument("--user-state-topic", default=d.user_state_topic,
                   help="compacted per-user state topic written by the streaming worker (default %(default)s)")
    p.add_argument("--samples-topic", default=d.samples_topic,
                   help="the streaming worker's samples topic: its sample spec is read from SAMPLES_TOPIC.spec; a "
                        "--preset that does not fit it is an error at start (exit code 2) and snapshots trained on "
                        "other samples are rejected as wrong_sample_spec (default %(default)s)")
    p.add_argument("--sample-spec-wait-s", type=float, default=d.sample_spec_wait_s,
                   help="at start, wait this long for the sample spec (0: read what is there; it is followed "
                        "afterwards either way) (default %(default)s)")
    p.add_argument("--snapshot-dir", type=Path, default=d.snapshot_dir,
                   help="directory of the trainer's snapshots (default %(default)s)")
    p.add_argument("--snapshot-poll-s", type=float, default=d.snapshot_poll_s,
                   help="seconds between snapshot-directory scans; 0 = only at start (default %(default)s)")
    p.add_argument("--max-candidates", type=int, default=d.max_candidates,
                   help="most candidates per /v1/score request (default %(default)s)")
    p.add_argument("--max-body-bytes", type=int, default=d.max_body_bytes,
                   help="largest request body accepted, larger is 413 (default %(default)s)")
    p.add_argument("--torch-threads", type=int, default=d.torch_threads,
                   help="torch intra-op threads for scoring (default %(default)s)")
    p.add_argument("--scoring-workers", type=int, default=d.scoring_workers,
                   help="threads that run scoring off the event loop (default %(default)s)")
    p.add_argument("--keep-alive-s", type=int, default=d.keep_alive_s,
                   help="idle HTTP keep-alive timeout in seconds (default %(default)s)")
    p.add_argument("--log-level", default=d.log_level, choices=["debug", "info", "warning", "error"],
                   help="log level (default %(default)s)")
    p.add_argument("--preset", choices=sorted(PRESETS), default=d.preset,
                   help="serve only snapshots trained from this model preset (model/presets.py; the model "
                        "itself always comes from the snapshot); others are rejected and counted as wrong_preset "
                        "(default: any preset)")
    a = p.parse_args(argv)
    try:
        return ServingConfig(
            host=a.host, port=a.port, kafka_bootstrap=None if a.no_kafka else a.bootstrap,
            snapshots_topic=a.snapshots_topic, user_state_topic=a.user_state_topic, snapshot_dir=a.snapshot_dir,
            snapshot_poll_s=a.snapshot_poll_s, max_candidates=a.max_candidates, max_body_bytes=a.max_body_bytes,
            torch_threads=a.torch_threads, scoring_workers=a.scoring_workers, keep_alive_s=a.keep_alive_s,
            log_level=a.log_level, preset=a.preset, samples_topic=a.samples_topic,
            sample_spec_wait_s=a.sample_spec_wait_s)
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
