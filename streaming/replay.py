"""Replay a dataset's events to Kafka in event-time order, then end-of-stream markers: python -m streaming.replay

Impressions go to the impressions topic and feedback to the feedback topic (key = user_id UTF-8, value = the
canonical JSON of streaming.events.encode_event), produced with kafka-python in event-time order, either as fast as
possible (--max-rate, the default) or paced at --speedup X times real time (event-time gaps divided by X). A
progress bar runs on stderr; the final summary (events, rate, errors) goes to stdout.

End-of-stream markers (on by default; --no-eos-markers turns them off): a worker releases an impression once its
partition's event-time watermark passes ts + attribution window, and a finished replay never moves the watermark
again, so the last window of impressions would stay pending. After the last event the replay therefore sends, on
every partition, one impression and one feedback of user _eos-p<N> in scenario _eos, --eos-margin-s (30 days) after
the last event: each partition's watermark passes every real impression, and the worker releases them all. The
markers stay pending themselves; the worker counts them as consumed events.

Examples:
    python -m streaming.replay --dataset movielens --bootstrap 127.0.0.1:9092 --max-rate
    python -m streaming.replay --dataset synthetic --limit 5000 --speedup 3600
    python -m streaming.replay --dataset log --path examples/events.csv --mapping examples/mapping.toml
    python -m streaming.replay --dataset log --path my.csv --user-col uid --item-col movie --ts-col when \\
        --label click=stars>=4 --label like=stars==5 --scenario-col page

Exit status: 0 all events acknowledged, 1 some sends failed (counted in the summary), 2 bad input or the broker
is unreachable (nothing is produced), 130 interrupted (Ctrl-C).
"""

from __future__ import annotations

import argparse
import contextlib
import sys
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from streaming.datasets import DatasetError, category_note
from streaming.datasets.load import add_dataset_args, load_dataset
from streaming.events import Event, Feedback, Impression, encode_event

EOS_USER_PREFIX = "_eos-p"  # + the partition number
EOS_SCENARIO = "_eos"
EOS_MARGIN_S = 30 * 86400.0


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
        eos_markers: after the last event, send the end-of-stream markers (:func:`end_of_stream_events`).
        eos_margin_s: how far after the last event the markers are; must exceed the worker's attribution window
            plus its allowed lateness.

    Example:
        >>> ReplayConfig(speedup=60.0).eos_markers
        True
    """

    bootstrap: str = "127.0.0.1:9092"
    impressions_topic: str = "impressions"
    feedback_topic: str = "feedback"
    speedup: float | None = None
    limit: int | None = None
    bootstrap_timeout_s: float = 10.0
    max_errors: int = 100
    eos_markers: bool = True
    eos_margin_s: float = EOS_MARGIN_S

    def __post_init__(self) -> None:
        if self.speedup is not None and not self.speedup > 0:
            raise ValueError("speedup must be > 0")
        if self.limit is not None and self.limit < 0:
            raise ValueError("limit must be >= 0")
        if not self.eos_margin_s > 0:
            raise ValueError("eos_margin_s must be > 0")


@dataclass
class ReplaySummary:
    """What a replay did. ``events``/``impressions``/``feedback`` count the dataset's events; ``markers`` the
    end-of-stream markers sent after them; ``errors`` the sends the broker did not acknowledge."""

    events: int = 0
    impressions: int = 0
    feedback: int = 0
    markers: int = 0
    errors: int = 0
    seconds: float = 0.0
    error_samples: list[str] = field(default_factory=list)
    aborted: bool = False
    interrupted: bool = False

    @property
    def rate(self) -> float:
        return self.events / self.seconds if self.seconds > 0 else 0.0

    @property
    def produced(self) -> int:
        """Every record sent: the events and the markers (what a worker will count as consumed)."""
        return self.events + self.markers

    def line(self) -> str:
        s = (f"replayed {self.events} events ({self.impressions} impressions, {self.feedback} feedback) in "
             f"{self.seconds:.2f} s: {self.rate:,.0f} events/s, {self.errors} errors")
        if self.markers:
            s += f"; then {self.markers} end-of-stream markers"
        if self.aborted:
            s += " (aborted: too many errors)"
        if self.interrupted:
            s += " (interrupted)"
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
            reconnect_backoff_max_ms=1000,  # a restarted broker is found within a second (default backs off to 30 s)
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


def end_of_stream_events(after_ts: float, partitions: Sequence[int], margin_s: float = EOS_MARGIN_S,
                         ) -> list[tuple[int, Event]]:
    """The markers that end a finite replay: per partition ``p``, one impression and one feedback of user
    ``_eos-p<p>`` in scenario ``_eos`` at ``after_ts + margin_s`` (deterministic ids, so a resent marker is a
    duplicate). Each partition's watermark (the minimum over both topics) then passes every real impression's
    attribution window and the worker releases them all; the markers themselves stay pending.

    Example:
        >>> [(p, type(e).__name__, e.user_id, e.ts) for p, e in end_of_stream_events(100.0, [0], margin_s=50.0)]
        [(0, 'Impression', '_eos-p0', 150.0), (0, 'Feedback', '_eos-p0', 150.0)]
    """
    ts = after_ts + margin_s
    out: list[tuple[int, Event]] = []
    for p in partitions:
        uid = f"{EOS_USER_PREFIX}{p}"
        out.append((p, Impression(f"{uid}-imp-{ts:.0f}", ts, uid, EOS_SCENARIO, f"{uid}-req", EOS_SCENARIO)))
        out.append((p, Feedback(f"{uid}-fb-{ts:.0f}", ts, uid, EOS_SCENARIO, f"{uid}-req", EOS_SCENARIO, "view")))
    return out


def send_end_of_stream(producer: Any, config: ReplayConfig, after_ts: float, partitions: int | None = None,
                       on_error: Callable[[BaseException], None] | None = None) -> int:
    """Send :func:`end_of_stream_events` to every partition of the two input topics (``partitions`` of each, or
    as many as the producer's metadata says); returns how many records were sent (not flushed)."""
    n = 0
    for topic, kind in ((config.impressions_topic, Impression), (config.feedback_topic, Feedback)):
        if partitions is not None:
            parts: Sequence[int] = range(partitions)
        else:
            found = producer.partitions_for(topic)  # blocks for metadata
            if not found:
                raise ReplayError(f"no partitions known for topic {topic!r}: cannot send end-of-stream markers")
            parts = sorted(found)
        for p, ev in end_of_stream_events(after_ts, parts, config.eos_margin_s):
            if not isinstance(ev, kind):
                continue
            fut = producer.send(topic, key=ev.user_id.encode(), value=encode_event(ev), partition=p)
            if on_error is not None:
                fut.add_errback(on_error)
            n += 1
    return n


def replay(
    events: Sequence[Event],
    config: ReplayConfig,
    producer: Any | None = None,
    progress: bool = True,
    clock: Callable[[], float] = time.monotonic,
    sleep: Callable[[float], None] = time.sleep,
    stop: threading.Event | None = None,
) -> ReplaySummary:
    """Produce ``events`` (already in event-time order) to Kafka, then (``config.eos_markers``) the end-of-stream
    markers, and wait for every acknowledgement. Setting ``stop`` ends the replay early without markers or a
    final flush (``summary.interrupted``)."""
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
                    if stop is not None:
                        stop.wait(delay)
                    else:
                        sleep(delay)
            if stop is not None and stop.is_set():
                summary.interrupted = True
                break
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
        if summary.interrupted:
            return summary
        if config.eos_markers and evs and not summary.aborted:
            summary.markers = send_end_of_stream(prod, config, max(ev.ts for ev in evs), on_error=on_error)
        prod.flush(timeout=max(30.0, config.bootstrap_timeout_s))
        bar.update(summary.events - bar.n)
    finally:
        bar.close()
        summary.seconds = clock() - t_start
        if own:
            close_producer(prod, 2.0 if summary.interrupted else 10.0)
    return summary


def close_producer(producer: Any, timeout_s: float) -> None:
    """Close a kafka-python producer, giving up quietly after ``timeout_s`` (records still unsent are dropped).
    A closed producer has no ``atexit`` handler left that could raise at interpreter exit."""
    from kafka.errors import KafkaError

    with contextlib.suppress(KafkaError):
        producer.close(timeout=timeout_s)


def describe(events: Sequence[Event]) -> str:
    """What a dataset holds, for ``--check``: counts by kind and action, users, items, scenarios, time range and
    the feature keys of the first impression.

    Example:
        >>> print(describe([Impression("e", 0.0, "u", "home", "r", "i", position=1, item={"category": "c"})]))
        1 events: 1 impressions, 0 feedback (no actions)
        1 users, 1 items, scenarios: home
        time 1970-01-01T00:00:00Z .. 1970-01-01T00:00:00Z
        first impression: position 1, user {}, item {'category': 'c'}, context {}, dense {}
    """
    from datetime import UTC, datetime

    from streaming.datasets import summarize

    if not events:
        return "0 events"
    counts = summarize(events)
    actions = ", ".join(f"{k} {v}" for k, v in counts.items() if k not in ("impression", "feedback")) or "no actions"
    imps = [e for e in events if isinstance(e, Impression)]
    scenarios = sorted({e.scenario for e in events})

    def iso(ts: float) -> str:
        return datetime.fromtimestamp(ts, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")

    lines = [f"{len(events)} events: {counts['impression']} impressions, {counts['feedback']} feedback ({actions})",
             f"{len({e.user_id for e in events})} users, {len({e.item_id for e in imps})} items, scenarios: "
             + ", ".join(scenarios[:20]) + (f" (+{len(scenarios) - 20} more)" if len(scenarios) > 20 else ""),
             f"time {iso(min(e.ts for e in events))} .. {iso(max(e.ts for e in events))}"]
    if imps:
        f = imps[0]
        lines.append(f"first impression: position {f.position}, user {f.user}, item {f.item}, context {f.context}, "
                     f"dense {f.dense}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m streaming.replay", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    add_dataset_args(p)
    d = ReplayConfig()
    p.add_argument("--bootstrap", default=d.bootstrap, help="Kafka bootstrap servers, host:port[,...] "
                                                            "(default %(default)s)")
    p.add_argument("--impressions-topic", default=d.impressions_topic, help="topic for impressions (default "
                                                                            "%(default)s)")
    p.add_argument("--feedback-topic", default=d.feedback_topic, help="topic for feedback (default %(default)s)")
    pace = p.add_mutually_exclusive_group()
    pace.add_argument("--speedup", type=float, help="replay at X times real time (event-time gaps / X)")
    pace.add_argument("--max-rate", action="store_true", help="replay as fast as possible (the default)")
    p.add_argument("--limit", type=int, help="replay only the first N events (event-time order)")
    p.add_argument("--bootstrap-timeout", type=float, default=d.bootstrap_timeout_s,
                   help="seconds to wait for the broker before giving up (default %(default)s)")
    p.add_argument("--max-errors", type=int, default=d.max_errors,
                   help="abort after this many failed sends (default %(default)s)")
    p.add_argument("--no-eos-markers", action="store_true",
                   help="don't end with the end-of-stream markers (then a worker keeps the last attribution window "
                        "of impressions pending until newer events arrive)")
    p.add_argument("--eos-margin-s", type=float, default=d.eos_margin_s,
                   help="event-time seconds between the last event and the markers; must exceed the worker's "
                        "attribution window + allowed lateness (default %(default)s)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.add_argument("--check", action="store_true",
                   help="only read and validate the dataset and print what it holds; send nothing (no broker needed)")
    ns = p.parse_args(argv)
    try:
        config = ReplayConfig(bootstrap=ns.bootstrap, impressions_topic=ns.impressions_topic,
                              feedback_topic=ns.feedback_topic, speedup=ns.speedup, limit=ns.limit,
                              bootstrap_timeout_s=ns.bootstrap_timeout, max_errors=ns.max_errors,
                              eos_markers=not ns.no_eos_markers, eos_margin_s=ns.eos_margin_s)
    except ValueError as e:
        p.error(str(e))
    try:
        events = load_dataset(ns)
        if ns.dataset == "log":
            from streaming.datasets.eventlog import mapping_from_args

            note = category_note(events, mapping_from_args(ns).category_key)
            if note:
                print(note, file=sys.stderr)
    except DatasetError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    if ns.check:
        print(describe(events[: config.limit] if config.limit is not None else events))
        return 0
    try:
        summary = replay(events, config, progress=not ns.no_progress)
    except ReplayError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    print(summary.line())
    return 1 if summary.errors else 0


if __name__ == "__main__":
    sys.exit(main())
