"""Kafka adapters of external distillation: the teacher's record publisher and the student's record consumer.

The pure parts (records, join buffer, loss) are in :mod:`trainer.distill`; these only move bytes.

* :class:`TeacherPublisher` (``python -m trainer --teacher-scores-topic T``): one :class:`~trainer.distill.TeacherRecord`
  per trained sample, key = ``sample_id``, sent after the step whose pre-update scores it holds.
* :class:`TeacherConsumer` (``python -m trainer --distill-from T``): a background thread assigned every partition of
  ``T`` from the beginning (no consumer group, like the samples source) that decodes records into a
  :class:`~trainer.distill.TeacherJoin`; undecodable records are counted and dropped, records of samples this
  trainer already trained (a restart re-reading the topic) are skipped.
"""

from __future__ import annotations

import contextlib
import logging
import threading
from collections.abc import Callable, Container, Iterable
from typing import Any

from trainer.distill import TeacherJoin, TeacherRecord, TeacherRecordError
from trainer.source import RECONNECT_BACKOFF_MAX_MS

log = logging.getLogger(__name__)


class TeacherPublisher:
    """Sends teacher records to ``topic`` (key = sample id). Send errors are logged, never raised: a student
    trains on labels alone for a sample without a record.

    Example (needs a broker, so not a doctest)::

        pub = TeacherPublisher("127.0.0.1:9092", "teacher-scores")
        pub.publish(records_from_batch(batch, trainer.last_probs, ...))
        pub.close()
    """

    def __init__(self, bootstrap: str, topic: str) -> None:
        from kafka import KafkaProducer

        self.topic = topic
        self.sent = 0
        self._producer = KafkaProducer(bootstrap_servers=bootstrap, linger_ms=20,
                                       reconnect_backoff_max_ms=RECONNECT_BACKOFF_MAX_MS)

    def publish(self, records: Iterable[TeacherRecord]) -> int:
        n = 0
        for r in records:
            try:
                self._producer.send(self.topic, key=r.sample_id.encode(), value=r.encode())
                n += 1
            except Exception as e:
                log.warning("could not publish the teacher record of %s: %s", r.sample_id, e)
        self.sent += n
        return n

    def flush(self) -> None:
        with contextlib.suppress(Exception):
            self._producer.flush(timeout=10)

    def close(self) -> None:
        self.flush()
        with contextlib.suppress(Exception):
            self._producer.close(timeout=10)


class TeacherConsumer:
    """Reads ``topic`` from the beginning into ``join`` on a daemon thread until :meth:`close`.

    Args:
        bootstrap / topic: where the teacher publishes.
        join: the buffer the training loop takes from.
        trained: sample ids already trained (their records are skipped).
        on_invalid: called with each undecodable record's error (the trainer counts them).
    """

    def __init__(self, bootstrap: str, topic: str, join: TeacherJoin, trained: Container[str] = (),
                 on_invalid: Callable[[TeacherRecordError], None] | None = None) -> None:
        self.bootstrap, self.topic, self.join, self.trained = bootstrap, topic, join, trained
        self.on_invalid = on_invalid
        self.received = 0
        self._stop = threading.Event()
        self._consumer: Any = None
        self._thread = threading.Thread(target=self._run, name="teacher-consumer", daemon=True)

    def start(self) -> TeacherConsumer:
        self._thread.start()
        return self

    def _open(self) -> Any:
        from kafka import KafkaConsumer, TopicPartition

        consumer = KafkaConsumer(bootstrap_servers=self.bootstrap, group_id=None, enable_auto_commit=False,
                                 auto_offset_reset="earliest", client_id="streamrec-trainer-distill",
                                 reconnect_backoff_max_ms=RECONNECT_BACKOFF_MAX_MS)
        parts: set[int] | None = None
        while not self._stop.is_set():  # the teacher may not have created the topic yet
            parts = consumer.partitions_for_topic(self.topic)
            if parts:
                break
            consumer.topics()
            self._stop.wait(0.5)
        tps = [TopicPartition(self.topic, p) for p in sorted(parts or ())]
        consumer.assign(tps)
        for tp in tps:
            consumer.seek_to_beginning(tp)
        return consumer

    def _run(self) -> None:
        try:
            self._consumer = self._open()
            while not self._stop.is_set():
                for records in self._consumer.poll(timeout_ms=200, max_records=1000).values():
                    for r in records:
                        try:
                            rec = TeacherRecord.decode(r.value)
                        except TeacherRecordError as e:
                            if self.on_invalid is not None:
                                self.on_invalid(e)
                            continue
                        self.received += 1
                        if rec.sample_id not in self.trained:
                            self.join.add(rec)
        except Exception as e:  # the student keeps training on labels alone
            if not self._stop.is_set():
                log.error("teacher-score consumer stopped: %s", e)

    def close(self) -> None:
        self._stop.set()
        self._thread.join(timeout=10)
        if self._consumer is not None:
            with contextlib.suppress(Exception):
                self._consumer.close()
