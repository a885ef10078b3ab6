"""Replay a dataset's events to Kafka in event-time order: ``python -m streaming.replay``.

Impressions go to the ``impressions`` topic and feedback to ``feedback`` (key = user_id UTF-8, value = the
canonical JSON of :func:`streaming.events.encode_event`), produced with kafka-python in event-time order, either
as fast as possible (``--max-rate``, the default) or paced at ``--speedup X`` times real time (event-time gaps
divided by X). A progress bar runs on stderr; the final summary (events, rate, errors) goes to stdout.

Usage::

    python -m streaming.replay --dataset movielens --bootstrap 127.0.0.1:9092 --max-rate
    python -m streaming.replay --dataset synthetic --limit 5000 --speedup 3600
    python -m streaming.replay --dataset log --path my.csv --user-col uid --item-col movie --ts-col when \\
        --label click=stars>=4 --label like=stars==5 --scenario-col page

Exit status: 0 all events acknowledged, 1 some sends failed (counted in the summary), 2 bad input or the broker
is unreachable (nothing is produced).

Example:
    >>> ReplayConfig(speedup=60.0).speedup
    60.0
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from streaming.datasets import DatasetError
from streaming.datasets.load import add_dataset_args, load_dataset
from streaming.events import Event, Impression, encode_event


class ReplayError(RuntimeError):
    """The replay could not start (e.g. the broker is unreachable)."""


@dataclass(frozen=True)
class ReplayConfig:
    """Where and how fast to replay.

    Attributes:
        bootstrap: Kafka ``host:port`` list.
        impressions_topic / feedback_topic: destination topics.
        speedup: event-time seconds per wall second; ``None`` = as fast as possible.
        limit: replay only the first ``limit`` events (in event-time order).
        bootstrap_timeout_s: give up connecting after this long.
        max_errors: stop after this many failed sends.
    """

    bootstrap: str = "127.0.0.1:9092"
    impressions_topic: str = "impressions"
    feedback_topic: str = "feedback"
    speedup: float | None = None
    limit: int | None = None
    bootstrap_timeout_s: float = 10.0
    max_errors: int = 100

    def __post_init__(self) -> None:
        if self.speedup is not None and not self.speedup > 0:
            raise ValueError("speedup must be > 0")
        if self.limit is not None and self.limit < 0:
            raise ValueError("limit must be >= 0")


@dataclass
class ReplaySummary:
    """What a replay did; ``errors`` counts sends the broker did not acknowledge."""

    events: int = 0
    impressions: int = 0
    feedback: int = 0
    errors: int = 0
    seconds: float = 0.0
    error_samples: list[str] = field(default_factory=list)
    aborted: bool = False

    @property
    def rate(self) -> float:
        return self.events / self.seconds if self.seconds > 0 else 0.0

    def line(self) -> str:
        s = (f"replayed {self.events} events ({self.impressions} impressions, {self.feedback} feedback) in "
             f"{self.seconds:.2f} s: {self.rate:,.0f} events/s, {self.errors} errors")
        if self.aborted:
            s += " (aborted: too many errors)"
        if self.error_samples:
            s += "; first error: " + self.error_samples[0]
        return s


def make_producer(config: ReplayConfig) -> Any:
    """A kafka-python producer, or :class:`ReplayError` when the broker cannot be reached in time."""
    from kafka import KafkaProducer
    from kafka.errors import KafkaError

    try:
        return KafkaProducer(
            bootstrap_servers=config.bootstrap.split(","),
            bootstrap_timeout_ms=int(config.bootstrap_timeout_s * 1000),
            linger_ms=20,
            batch_size=256 * 1024,  # fewer, larger produce requests: the replay is CPU-bound in Python
            max_block_ms=int(max(config.bootstrap_timeout_s, 5.0) * 1000),
        )
    except KafkaError as e:
        raise ReplayError(f"cannot reach Kafka at {config.bootstrap}: {e}") from None


class _KeyPartitioner:
    """kafka-python's default partitioner (murmur2 of the key, as Java's), memoised per (topic, key): a replay sends
    the same few thousand user keys over and over, and the pure-Python murmur2 was ~10% of its CPU time. None (let
    the producer decide) when the producer cannot say a topic's partitions yet."""

    def __init__(self, producer: Any) -> None:
        self.producer = producer
        self.memo: dict[tuple[str, bytes], int | None] = {}
        self.parts: dict[str, list[int]] = {}

    def __call__(self, topic: str, key: bytes) -> int | None:
        p = self.memo.get((topic, key), -1)
        if p != -1:
            return p
        from kafka.partitioner.default import murmur2

        parts = self.parts.get(topic)
        if parts is None:
            partitions_for = getattr(self.producer, "partitions_for", None)  # a wrapped producer may not say
            found = partitions_for(topic) if partitions_for is not None else None  # blocks for metadata
            parts = sorted(found) if found else []
            if parts:
                self.parts[topic] = parts
        p = parts[(murmur2(key) & 0x7FFFFFFF) % len(parts)] if parts else None
        if p is not None:
            self.memo[(topic, key)] = p
        return p


def replay(
    events: Sequence[Event],
    config: ReplayConfig,
    producer: Any | None = None,
    progress: bool = True,
    clock: Callable[[], float] = time.monotonic,
    sleep: Callable[[float], None] = time.sleep,
) -> ReplaySummary:
    """Produce ``events`` (already in event-time order) to Kafka and wait for every acknowledgement."""
    from tqdm import tqdm

    evs = events[: config.limit] if config.limit is not None else events
    own = producer is None
    prod = make_producer(config) if producer is None else producer
    summary = ReplaySummary()

    def on_error(exc: BaseException) -> None:
        summary.errors += 1
        if len(summary.error_samples) < 3:
            summary.error_samples.append(f"{type(exc).__name__}: {exc}")

    partition_of = _KeyPartitioner(prod)
    t_start = clock()
    ts0 = evs[0].ts if evs else 0.0
    bar = tqdm(total=len(evs), unit="ev", disable=not progress, file=sys.stderr, smoothing=0.1)
    try:
        for n, ev in enumerate(evs):
            if config.speedup is not None:
                delay = t_start + (ev.ts - ts0) / config.speedup - clock()
                if delay > 0:
                    sleep(delay)
            topic = config.impressions_topic if isinstance(ev, Impression) else config.feedback_topic
            try:
                key = ev.user_id.encode()
                fut = prod.send(topic, key=key, value=encode_event(ev), partition=partition_of(topic, key))
                fut.add_errback(on_error)
            except Exception as e:  # buffer full / metadata timeout: counted, never silent
                on_error(e)
            if isinstance(ev, Impression):
                summary.impressions += 1
            else:
                summary.feedback += 1
            summary.events += 1
            if n % 256 == 0:
                bar.update(n + 1 - bar.n)
            if summary.errors >= config.max_errors:
                summary.aborted = True
                break
        prod.flush(timeout=max(30.0, config.bootstrap_timeout_s))
        bar.update(summary.events - bar.n)
    finally:
        bar.close()
        if own:
            prod.close(timeout=10)
    summary.seconds = clock() - t_start
    return summary


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m streaming.replay", description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    add_dataset_args(p)
    p.add_argument("--bootstrap", default=ReplayConfig.bootstrap, help="Kafka bootstrap servers (host:port[,...])")
    p.add_argument("--impressions-topic", default=ReplayConfig.impressions_topic, help="topic for impressions")
    p.add_argument("--feedback-topic", default=ReplayConfig.feedback_topic, help="topic for feedback")
    pace = p.add_mutually_exclusive_group()
    pace.add_argument("--speedup", type=float, help="replay at X times real time (event-time gaps / X)")
    pace.add_argument("--max-rate", action="store_true", help="replay as fast as possible (the default)")
    p.add_argument("--limit", type=int, help="replay only the first N events (event-time order)")
    p.add_argument("--bootstrap-timeout", type=float, default=ReplayConfig.bootstrap_timeout_s,
                   help="seconds to wait for the broker before giving up")
    p.add_argument("--max-errors", type=int, default=ReplayConfig.max_errors, help="abort after this many failed sends")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    ns = p.parse_args(argv)
    try:
        config = ReplayConfig(bootstrap=ns.bootstrap, impressions_topic=ns.impressions_topic,
                              feedback_topic=ns.feedback_topic, speedup=ns.speedup, limit=ns.limit,
                              bootstrap_timeout_s=ns.bootstrap_timeout, max_errors=ns.max_errors)
    except ValueError as e:
        p.error(str(e))
    try:
        events = load_dataset(ns)
    except DatasetError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    try:
        summary = replay(events, config, progress=not ns.no_progress)
    except ReplayError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(summary.line())
    return 1 if summary.errors else 0


if __name__ == "__main__":
    sys.exit(main())
