"""``python -m streaming worker --bootstrap HOST:PORT ...``: run the impression⋈feedback join worker."""

from __future__ import annotations

import argparse
import logging
import sys

from streaming.config import CoreConfig, CrossSpec
from streaming.spec import DEFAULT_HISTORY_LEN, DEFAULT_MAX_TARGETS


def _worker_parser(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    p = sub.add_parser("worker", help="run the Faust join/aggregation worker",
                       formatter_class=argparse.ArgumentDefaultsHelpFormatter,
                       description="Consume impressions+feedback, produce user-level samples, dead letters and "
                                   "per-user state; metrics on --metrics-host:--metrics-port. At start it creates "
                                   "its topics with --partitions partitions (or adopts existing ones with that "
                                   "count; another count is an error, exit code 2) and publishes the sample spec "
                                   "(--history-len, --max-targets, cross layout) to SAMPLES_TOPIC.spec (another "
                                   "spec already there is an error, exit code 2).")
    p.add_argument("--bootstrap", default="127.0.0.1:9092", help="Kafka bootstrap host:port")
    p.add_argument("--app-id", default="streamrec-stream", help="Faust app id (consumer group, table topic prefix)")
    p.add_argument("--impressions-topic", default="impressions", help="input topic of impressions")
    p.add_argument("--feedback-topic", default="feedback", help="input topic of feedback")
    p.add_argument("--samples-topic", default="samples", help="output topic of user-level samples")
    p.add_argument("--deadletter-topic", default="deadletter", help="output topic of bad input and corrections")
    p.add_argument("--user-state-topic", default="user_state", help="compacted output topic of per-user state")
    p.add_argument("--partitions", type=int, default=8,
                   help="partition count of every topic of the worker: inputs, outputs and table changelogs")
    p.add_argument("--connect-timeout-s", type=float, default=60.0,
                   help="at start, how long to wait for the broker to create/check the topics before exiting")
    p.add_argument("--store", default="memory://", help="Faust table store: memory:// or rocksdb:// (needs rocksdict)")
    p.add_argument("--data-dir", default="runs/stream", help="Faust data directory")
    p.add_argument("--batch-max", type=int, default=2000, help="max events per processed batch")
    p.add_argument("--batch-within-s", type=float, default=0.2, help="max wait to fill a batch, seconds")
    p.add_argument("--commit-interval-s", type=float, default=1.0, help="offset commit interval, seconds")
    p.add_argument("--session-timeout-s", type=float, default=30.0,
                   help="consumer group session timeout: how long a dead worker holds its partitions")
    p.add_argument("--metrics-host", default="127.0.0.1", help="Prometheus metrics bind address")
    p.add_argument("--metrics-port", type=int, default=9101, help="Prometheus metrics port (0: disabled)")
    p.add_argument("--snapshot-every-s", type=float, default=30.0,
                   help="seconds between state snapshots (in between, each batch's events are logged)")
    p.add_argument("--no-user-state", action="store_true", help="do not publish UserState records")
    p.add_argument("--gc-gen0", type=int, default=50_000,
                   help="Python GC generation-0 threshold (Python's default: 700). The join state is millions of "
                        "small live objects; default-threshold collections cost ~30%% of the core's time (0: keep "
                        "Python's default)")
    p.add_argument("--agent-delivery", action="store_true",
                   help="deliver input through the Faust agent's per-event stream instead of whole fetches "
                        "(streaming/batch_drain.py); slower, same results")
    p.add_argument("--window-s", type=float, default=1800.0, help="attribution window, seconds (event time)")
    p.add_argument("--lateness-s", type=float, default=60.0, help="allowed lateness, seconds (event time)")
    p.add_argument("--history-len", type=int, default=DEFAULT_HISTORY_LEN, help="L, behaviors in H")
    p.add_argument("--max-targets", type=int, default=DEFAULT_MAX_TARGETS, help="max targets per sample")
    p.add_argument("--span-s", type=float, default=1800.0, help="max event-time span of a sample, seconds")
    p.add_argument("--late-horizon-s", type=float, default=3600.0,
                   help="event time to remember released impressions and event ids after the window")
    p.add_argument("--skip-action", default=None,
                   help="behavior action given to an impression released with no positive label, e.g. skip "
                        "(implicit negative feedback in H/R; None or '': no such behaviors)")
    p.add_argument("--category-key", default="category", help="item feature used for category cross features")
    p.add_argument("--log-level", default="info", help="log level")


def run_worker(a: argparse.Namespace) -> int:
    import faust
    from prometheus_client import REGISTRY, start_http_server

    from streaming.app import BrokerUnavailable, StreamWorker, TopicConflict, WorkerConfig, ensure_topics
    from streaming.spec_topic import SpecConflict, SpecUnavailable, publish_spec

    core = CoreConfig(attribution_window_s=a.window_s, allowed_lateness_s=a.lateness_s, history_len=a.history_len,
                      max_targets=a.max_targets, span_s=a.span_s, late_horizon_s=a.late_horizon_s,
                      skip_action=a.skip_action or None, cross=CrossSpec(category_key=a.category_key))
    cfg = WorkerConfig(bootstrap=a.bootstrap, app_id=a.app_id, impressions_topic=a.impressions_topic,
                       feedback_topic=a.feedback_topic, samples_topic=a.samples_topic,
                       deadletter_topic=a.deadletter_topic, user_state_topic=a.user_state_topic,
                       partitions=a.partitions, store=a.store, data_dir=a.data_dir, batch_max=a.batch_max,
                       batch_within_s=a.batch_within_s, commit_interval_s=a.commit_interval_s,
                       session_timeout_s=a.session_timeout_s,
                       metrics_host=a.metrics_host, metrics_port=a.metrics_port,
                       publish_user_state=not a.no_user_state, snapshot_every_s=a.snapshot_every_s,
                       batch_drain=not a.agent_delivery, connect_timeout_s=a.connect_timeout_s)
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


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m streaming", description=__import__("streaming").__doc__)
    sub = parser.add_subparsers(dest="cmd")
    _worker_parser(sub)
    a = parser.parse_args(argv)
    if a.cmd == "worker":
        logging.basicConfig(level=a.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s %(message)s")
        return run_worker(a)
    parser.print_help()
    return 0


if __name__ == "__main__":
    sys.exit(main())
