"""``python -m serving``: the HTTP scoring service (see ``--help``)."""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

from model.presets import PRESETS
from serving.config import ServingConfig


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
            log_level=a.log_level, preset=a.preset)
    except ValueError as e:
        p.error(str(e))


def main(argv: list[str] | None = None) -> int:
    cfg = parse_config(argv)
    # Our loggers at --log-level; libraries (kafka-python logs every connection, fbgemm every .so) at WARNING.
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    logging.getLogger("serving").setLevel(cfg.log_level.upper())
    import uvicorn

    from serving.api import create_app

    app = create_app(cfg)
    try:
        uvicorn.run(app, host=cfg.host, port=cfg.port, log_level=cfg.log_level, access_log=False,
                    timeout_keep_alive=cfg.keep_alive_s)
    except OSError as e:  # port taken, bad address
        print(f"serving: cannot listen on {cfg.host}:{cfg.port}: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
