"""A background thread that follows one Kafka topic (all partitions, no consumer group) and hands records over.

Used twice by the serving worker: the ``user_state`` read replica (read from the beginning of the compacted topic)
and the ``snapshots`` announcement follower (start at the last announcement of each partition). No consumer group
and no committed offsets: every serving replica rebuilds its view from the log itself, so replicas scale out
without rebalances, and a restart is a replay (compaction keeps that replay as small as the number of users).

The thread survives a missing broker or a missing topic (it retries with back-off and counts the error); it never
auto-creates the topic (that would create ``user_state`` without compaction).

Example:
    >>> f = TopicFollower("127.0.0.1:9", "user_state", on_record=lambda r: None, start="beginning")
    >>> f.caught_up.is_set()
    False
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from typing import Any, Literal

from kafka import KafkaConsumer, TopicPartition
from kafka.errors import KafkaError

log = logging.getLogger(__name__)

# kafka-python's reconnect (and metadata refresh) backoff grows to 30 s by default: after a broker outage of ~20 s
# a follower could sit out another half minute. Capped at 1 s it is back within about a second of the broker.
RECONNECT_BACKOFF_MAX_MS = 1000

StartAt = Literal["beginning", "last"]


class TopicFollower:
    """Follow ``topic`` on ``bootstrap`` in a daemon thread, calling ``on_record(record)`` for every record.

    ``start="beginning"`` replays the whole topic; ``start="last"`` starts at the newest record of each partition
    (the latest announcement). ``caught_up`` is set once the records present at assignment time have been handed
    over. ``on_error(reason)`` is called for consumer errors (for metrics); ``on_record`` must not raise.
    """

    def __init__(self, bootstrap: str, topic: str, on_record: Callable[[Any], None], start: StartAt,
                 on_error: Callable[[str], None] = lambda reason: None) -> None:
        self.bootstrap = bootstrap
        self.topic = topic
        self.on_record = on_record
        self.on_error = on_error
        self.start_at = start
        self.caught_up = threading.Event()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name=f"follow-{topic}", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self, timeout_s: float = 5.0) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(timeout_s)

    def _run(self) -> None:
        backoff = 0.5
        while not self._stop.is_set():
            try:
                self._follow()
                return
            except KafkaError as e:  # broker down, topic gone, timeouts: retry, never die
                self.on_error(type(e).__name__)
                log.warning("following %s on %s failed (%s: %s); retrying in %.1fs", self.topic, self.bootstrap,
                            type(e).__name__, e, backoff)
            except Exception as e:  # anything else is a bug in a handler or the client; keep the service up
                self.on_error("unexpected")
                log.exception("following %s: unexpected %s; retrying in %.1fs", self.topic, type(e).__name__, backoff)
            self._stop.wait(backoff)
            backoff = min(backoff * 2, 10.0)

    def _follow(self) -> None:
        consumer = KafkaConsumer(bootstrap_servers=self.bootstrap, enable_auto_commit=False, group_id=None,
                                 allow_auto_create_topics=False, auto_offset_reset="earliest",
                                 client_id=f"streamrec-serving-{self.topic}",
                                 reconnect_backoff_max_ms=RECONNECT_BACKOFF_MAX_MS)
        try:
            partitions = self._wait_for_partitions(consumer)
            if partitions is None:
                return
            consumer.assign(partitions)
            ends: dict[TopicPartition, int] = consumer.end_offsets(partitions)
            if self.start_at == "beginning":
                consumer.seek_to_beginning(*partitions)
            else:
                begins: dict[TopicPartition, int] = consumer.beginning_offsets(partitions)
                for tp in partitions:
                    consumer.seek(tp, max(begins[tp], ends[tp] - 1))
            pending = {tp for tp in partitions if consumer.position(tp) < ends[tp]}
            if not pending:
                self.caught_up.set()
            while not self._stop.is_set():
                batches = consumer.poll(timeout_ms=200)
                for records in batches.values():
                    for rec in records:
                        self.on_record(rec)
                if pending:
                    pending = {tp for tp in pending if consumer.position(tp) < ends[tp]}
                    if not pending:
                        self.caught_up.set()
                        log.info("%s: caught up with the records present at start", self.topic)
        finally:
            consumer.close()

    def _wait_for_partitions(self, consumer: KafkaConsumer) -> list[TopicPartition] | None:
        logged = False
        while not self._stop.is_set():
            parts = consumer.partitions_for_topic(self.topic)
            if parts:
                return [TopicPartition(self.topic, p) for p in sorted(parts)]
            if not logged:
                log.info("topic %s does not exist yet on %s; waiting for it", self.topic, self.bootstrap)
                logged = True
            self._stop.wait(1.0)
        return None
