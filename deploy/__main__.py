"""python -m deploy: the local Kafka broker, the demo (the whole pipeline on this machine), the benchmarks and docs/results.md."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from deploy.kafka import (
    DEFAULT_CACHE,
    DEFAULT_STATE,
    KAFKA_VERSION,
    BrokerConfig,
    BrokerError,
    KafkaBroker,
    fetch_jars,
)


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m deploy", description=__doc__)
    sub = p.add_subparsers(dest="cmd", required=True)
    k = sub.add_parser("kafka", help=f"the local Apache Kafka {KAFKA_VERSION} broker (KRaft, 127.0.0.1)")
    k.add_argument("action", choices=["fetch", "start", "stop", "status", "smoke"],
                   help="fetch jars | start (waits until ready) | stop | status | smoke (produce+consume one event)")
    k.add_argument("--port", type=int, default=9092, help="client port on 127.0.0.1 (0 = a free port)")
    k.add_argument("--state-dir", type=Path, default=DEFAULT_STATE, help="data, logs and pid file")
    k.add_argument("--cache", type=Path, default=DEFAULT_CACHE, help="jar cache")
    k.add_argument("--heap", default="512m", help="JVM heap")
    k.add_argument("--fresh", action="store_true",
                   help="start: wipe the broker's data (topics, offsets, cluster id) first; by default data is kept")
    sub.add_parser("demo", help="the whole pipeline with live progress on MovieLens-100K or your own log "
                   "(--data FILE --map MAPPING); python -m deploy demo --help lists its options", add_help=False)
    sub.add_parser("bench", help="run every benchmarks/bench_*.py and collect reports/bench/*.json", add_help=False)
    sub.add_parser("dashboards", help="render the Grafana dashboards' panels from a live Prometheus into PNGs "
                   "(--png DIR; see deploy/dashboards.py)", add_help=False)
    sub.add_parser("results", help="write docs/results.md from the committed result JSON under docs/results/ "
                   "(--check: fail if it is out of date)", add_help=False)
    return p


def smoke(bootstrap: str) -> dict[str, object]:
    """Produce one event with kafka-python and read it back: the broker works end to end."""
    import time
    import uuid

    from kafka import KafkaConsumer, KafkaProducer

    topic = f"smoke-{uuid.uuid4().hex[:8]}"
    payload = {"event_id": uuid.uuid4().hex, "ts": time.time(), "hello": "kafka"}
    producer = KafkaProducer(bootstrap_servers=bootstrap)
    producer.send(topic, key=b"smoke", value=json.dumps(payload).encode()).get(timeout=30)
    producer.close()
    consumer = KafkaConsumer(topic, bootstrap_servers=bootstrap, auto_offset_reset="earliest",
                             consumer_timeout_ms=30000, enable_auto_commit=False)
    got = next(iter(consumer))
    consumer.close()
    back = json.loads(got.value)
    if back != payload:
        raise BrokerError(f"smoke test read back {back!r}, expected {payload!r}")
    return {"topic": topic, "partition": got.partition, "offset": got.offset, "value": back}


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["demo"]:
        from deploy import demo

        return demo.main(argv[1:])
    if argv[:1] == ["bench"]:
        from deploy import bench

        return bench.main(argv[1:])
    if argv[:1] == ["dashboards"]:
        from deploy import dashboards

        return dashboards.main(argv[1:])
    if argv[:1] == ["results"]:
        from deploy import results

        return results.main(argv[1:])
    args = _parser().parse_args(argv)
    try:
        if args.cmd == "kafka":
            if args.action == "fetch":
                print(f"kafka jars: {fetch_jars(args.cache)}")
                return 0
            broker = KafkaBroker(BrokerConfig(state_dir=args.state_dir, port=args.port, cache=args.cache,
                                              heap=args.heap))
            if args.action == "start":
                if broker.running() and not args.fresh:
                    print(f"kafka {KAFKA_VERSION} already running on {broker.bootstrap} (pid {broker.pid()})")
                    return 0
                kept = broker.formatted() and not args.fresh
                boot = broker.start(fresh=args.fresh)
                data = f"kept data of cluster {broker.cluster_id()}" if kept else f"new cluster {broker.cluster_id()}"
                print(f"kafka {KAFKA_VERSION} ready at {boot} ({data} in {broker.data_dir}; logs: {broker.log_file})")
            elif args.action == "stop":
                print("stopped (data kept)" if broker.stop() else "not running")
            elif args.action == "status":
                # Exit code 0 = running, 3 = not running (for scripts; `make kafka-status` accepts both).
                if broker.running():
                    print(f"kafka {KAFKA_VERSION} running on {broker.bootstrap} (pid {broker.pid()}), "
                          f"cluster {broker.cluster_id()}, data in {broker.data_dir}")
                    return 0
                data = (f"data of cluster {broker.cluster_id()} kept in {broker.data_dir}" if broker.formatted()
                        else "no data yet")
                print(f"kafka {KAFKA_VERSION} not running ({data})")
                return 3
            elif args.action == "smoke":
                print(json.dumps(smoke(broker.bootstrap), indent=2))
        return 0
    except BrokerError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
