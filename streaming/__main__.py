"""``python -m streaming worker --bootstrap HOST:PORT ...``: run the impression⋈feedback join worker."""

from __future__ import annotations

import argparse
import logging
import sys

from streaming import cli
from streaming.config import CoreConfig, CrossSpec, WorkerConfig


def _worker_parser(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    p = sub.add_parser("worker", help="run the Faust join/aggregation worker",
                       description="Consume impressions+feedback, produce user-level samples, dead letters and "
                                   "per-user state; metrics on --metrics-host:--metrics-port. At start it creates "
                                   "its topics with --partitions partitions (or adopts existing ones with that "
                                   "count; another count is an error, exit code 2) and publishes the sample spec "
                                   "(--history-len, --max-targets, cross layout) to SAMPLES_TOPIC.spec (another "
                                   "spec already there is an error, exit code 2).")
    # One flag per config field (streaming/cli.py: type and default from the dataclass); by hand: the switches that
    # are not a field (--gc-gen0, --log-level) or invert one (--agent-delivery).
    cli.add_config_args(p, WorkerConfig, exclude=_WORKER_BY_HAND, names=_WORKER_NAMES)
    p.add_argument("--gc-gen0", type=int, default=50_000,
                   help="Python GC generation-0 threshold (Python's default: 700). The join state is millions of "
                        "small live objects; default-threshold collections cost ~30%% of the core's time (0: keep "
                        "Python's default) (default: %(default)s)")
    p.add_argument("--agent-delivery", action="store_true",
                   help="deliver input through the Faust agent's per-event stream instead of whole fetches "
                        "(streaming/batch_drain.py); slower, same results")
    cli.add_config_args(p, CoreConfig, exclude=("action_tasks", "cross"), names=_CORE_NAMES, help={
        "attribution_window_s": "attribution window, seconds (event time)",
        "allowed_lateness_s": "allowed lateness, seconds (event time)",
        "history_len": "L, behaviors in H", "max_targets": "max targets per sample",
        "span_s": "max event-time span of a sample, seconds",
        "late_horizon_s": "event time to remember released impressions and event ids after the window",
        "skip_action": "behavior action given to an impression released with no positive label, e.g. skip "
                       "(implicit negative feedback in H/R; '': no such behaviors)"})
    cli.add_config_args(p, CrossSpec, include=("category_key",),
                        help={"category_key": "item feature used for category cross features"})
    p.add_argument("--log-level", default="info", help="log level (default: %(default)s)")


_WORKER_BY_HAND = ("batch_drain", "log_chunk_bytes")  # --agent-delivery inverts batch_drain; log_chunk_bytes: no flag
_WORKER_NAMES = {"publish_user_state": "user-state"}  # --user-state / --no-user-state
_CORE_NAMES = {"attribution_window_s": "window-s", "allowed_lateness_s": "lateness-s"}


def worker_configs(a: argparse.Namespace) -> tuple[WorkerConfig, CoreConfig]:
    """The frozen configs of parsed ``worker`` flags."""
    core = cli.config_from_args(CoreConfig, a, names=_CORE_NAMES, cross=cli.config_from_args(CrossSpec, a))
    return cli.config_from_args(WorkerConfig, a, names=_WORKER_NAMES, batch_drain=not a.agent_delivery), core


def run_worker(a: argparse.Namespace) -> int:
    import faust
    from prometheus_client import REGISTRY, start_http_server

    from streaming.app import BrokerUnavailable, StreamWorker, TopicConflict, ensure_topics
    from streaming.spec_topic import SpecConflict, SpecUnavailable, publish_spec

    cfg, core = worker_configs(a)
    if a.gc_gen0 > 0:
        import gc

        gc.set_threshold(a.gc_gen0, 20, 100)
    w = StreamWorker(cfg, core, REGISTRY)
    try:
        created = ensure_topics(cfg.bootstrap, w.topic_specs(), cfg.connect_timeout_s)
        # the shape of the samples (L, max targets, cross layout) on <samples-topic>.spec, for trainers and serving
        publish_spec(cfg.bootstrap, cfg.samples_topic, core.sample_spec(), cfg.connect_timeout_s)
    except (TopicConflict, BrokerUnavailable, SpecConflict, SpecUnavailable) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    if created:
        logging.getLogger("streaming").info("created topics %s", ", ".join(created))
    if cfg.metrics_port:
        start_http_server(cfg.metrics_port, addr=cfg.metrics_host)

    class _Worker(faust.Worker):
        def on_setup_root_logger(self, logger: logging.Logger, level: int) -> None:
            super().on_setup_root_logger(logger, level)
            # mode leaves the root logger at DEBUG (its handler filters): every aiokafka debug call then builds a
            # LogRecord, ~8% of the worker's time per produced record. Gate at the logger instead.
            logger.setLevel(level)

    worker = _Worker(w.app, loglevel=a.log_level.upper(), quiet=True)
    worker.execute_from_commandline()
    return 0


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m streaming", description=__import__("streaming").__doc__)
    sub = parser.add_subparsers(dest="cmd")
    _worker_parser(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = _parser()
    a = parser.parse_args(argv)
    if a.cmd == "worker":
        logging.basicConfig(level=a.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s %(message)s")
        return run_worker(a)
    parser.print_help()
    return 0


if __name__ == "__main__":
    sys.exit(main())
