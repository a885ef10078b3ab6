"""The sample spec on Kafka: the worker publishes its :class:`streaming.spec.SampleSpec`, trainers and serving read it.

Topic ``<samples topic>.spec`` (:func:`streaming.spec.spec_topic`): one partition, compacted, key ``b"spec"``,
value :meth:`SampleSpec.encode`. A worker at start (:func:`publish_spec`, before Faust runs) reads every record
there and refuses (:class:`SpecConflict`) when one differs from its own spec — another worker of the same pipeline,
or an earlier run, was configured differently; otherwise it appends its spec (unless the last record already is
it) and reads the topic again, so two workers that started at the same moment with different settings both see
the conflict. Changing the shape of a pipeline's samples on purpose means a new samples topic (or deleting
``<samples>.spec`` together with the samples written under the old spec).

kafka-python only (no Faust): the trainer and serving import this module too.

Example (needs a broker, so not a doctest)::

    publish_spec("127.0.0.1:9092", "samples", CoreConfig().sample_spec(), timeout_s=30)  # the worker
    spec = read_spec("127.0.0.1:9092", "samples", wait_s=5)  # a trainer: None if no worker published one yet
"""

from __future__ import annotations

import logging
import time
from typing import Any

from streaming.spec import SPEC_KEY, SampleSpec, spec_topic

log = logging.getLogger(__name__)

RECONNECT_BACKOFF_MAX_MS = 1000


class SpecConflict(Exception):
    """The spec topic holds a spec this process cannot work with; the message is one line for the operator."""


class SpecUnavailable(Exception):
    """No broker answered in time."""


def _quiet() -> tuple[logging.Logger, int]:
    quiet = logging.getLogger("kafka")  # kafka-python logs every failed attempt: the caller reports
    level = quiet.level
    quiet.setLevel(logging.CRITICAL)
    return quiet, level


def read_records(bootstrap: str, topic: str, wait_s: float, want_record: bool = True) -> list[bytes] | None:
    """Every ``b"spec"`` record value of ``topic`` (oldest first); None when the topic does not exist. Waits up to
    ``wait_s`` for the topic to exist and (``want_record``) to hold a record. Raises :class:`SpecUnavailable`."""
    from kafka import KafkaConsumer, TopicPartition
    from kafka.errors import KafkaError

    deadline = time.monotonic() + wait_s
    quiet, level = _quiet()
    try:
        try:
            consumer = KafkaConsumer(bootstrap_servers=bootstrap, group_id=None, enable_auto_commit=False,
                                     allow_auto_create_topics=False, client_id="streamrec-sample-spec",
                                     reconnect_backoff_max_ms=RECONNECT_BACKOFF_MAX_MS,
                                     bootstrap_timeout_ms=max(1000, int(wait_s * 1000)))
        except KafkaError as e:
            raise SpecUnavailable(f"no Kafka broker answered at {bootstrap}: {type(e).__name__}") from e
        try:
            while True:
                parts = consumer.partitions_for_topic(topic)
                if parts:
                    tps = [TopicPartition(topic, p) for p in sorted(parts)]
                    consumer.assign(tps)
                    consumer.seek_to_beginning(*tps)
                    ends: dict[Any, int] = consumer.end_offsets(tps)
                    values = _read_to(consumer, tps, ends, deadline)
                    if values or not want_record or time.monotonic() >= deadline:
                        return values
                elif time.monotonic() >= deadline:
                    return None
                consumer.topics()  # refresh metadata
                time.sleep(0.2)
        finally:
            consumer.close()
    finally:
        quiet.setLevel(level)


def _read_to(consumer: Any, tps: list[Any], ends: dict[Any, int], deadline: float) -> list[bytes]:
    values: list[tuple[int, int, bytes]] = []
    pending = {tp for tp in tps if consumer.position(tp) < ends[tp]}
    while pending and time.monotonic() < deadline + 10.0:  # records known to exist: finish reading them
        for tp, recs in consumer.poll(timeout_ms=200).items():
            values += [(tp.partition, r.offset, r.value) for r in recs if r.key == SPEC_KEY and r.value]
        pending = {tp for tp in pending if consumer.position(tp) < ends[tp]}
    return [v for _, _, v in sorted(values)]


def decode(raw: bytes, topic: str) -> SampleSpec:
    try:
        return SampleSpec.from_json(raw)
    except ValueError as e:
        raise SpecConflict(f"cannot read the sample spec in {topic} ({e}); it was written by another build") from None


def read_spec(bootstrap: str, samples_topic: str, wait_s: float) -> SampleSpec | None:
    """The newest spec published for ``samples_topic``, waiting up to ``wait_s`` for one; None if none appeared.

    Raises :class:`SpecConflict` (an undecodable record) and :class:`SpecUnavailable`."""
    topic = spec_topic(samples_topic)
    values = read_records(bootstrap, topic, wait_s)
    return decode(values[-1], topic) if values else None


def conflict_message(mine: SampleSpec, theirs: SampleSpec, topic: str) -> str:
    diff = "; ".join(mine.differences(theirs, "here", f"in {topic}"))
    return (f"sample spec conflict: {diff} (written by another worker); start every worker of this pipeline with "
            f"the same settings, or use a new --samples-topic")


def publish_spec(bootstrap: str, samples_topic: str, spec: SampleSpec, timeout_s: float) -> bool:
    """Create ``<samples_topic>.spec`` if needed, check it holds no other spec, append ``spec`` (unless it is already
    the last record) and check again; True when a record was written.

    Raises:
        SpecConflict: ``sample spec conflict: history_len 256 here, 64 in samples.spec (written by another worker);
            ...`` (or an undecodable record).
        SpecUnavailable: no broker answered within ``timeout_s``.
    """
    from kafka import KafkaProducer
    from kafka.errors import KafkaError

    topic = spec_topic(samples_topic)
    _create(bootstrap, topic, timeout_s)

    def check() -> list[SampleSpec]:
        found = [decode(v, topic) for v in read_records(bootstrap, topic, timeout_s, want_record=False) or []]
        for other in found:
            if other != spec:
                raise SpecConflict(conflict_message(spec, other, topic))
        return found

    if check()[-1:] == [spec]:
        return False
    quiet, level = _quiet()
    try:
        producer = KafkaProducer(bootstrap_servers=bootstrap, acks="all", client_id="streamrec-sample-spec",
                                 reconnect_backoff_max_ms=RECONNECT_BACKOFF_MAX_MS)
        try:
            producer.send(topic, key=SPEC_KEY, value=spec.encode()).get(timeout=timeout_s)
        finally:
            producer.close(timeout=5)
    except KafkaError as e:
        raise SpecUnavailable(f"cannot write the sample spec to {topic}: {type(e).__name__}: {e}") from e
    finally:
        quiet.setLevel(level)
    check()  # a worker that published another spec meanwhile: both see it now
    return True


def _create(bootstrap: str, topic: str, timeout_s: float) -> None:
    from kafka.admin import KafkaAdminClient
    from kafka.errors import KafkaError, TopicAlreadyExistsError

    quiet, level = _quiet()
    try:
        try:
            admin = KafkaAdminClient(bootstrap_servers=bootstrap, client_id="streamrec-sample-spec",
                                     bootstrap_timeout_ms=int(timeout_s * 1000))
        except KafkaError as e:
            raise SpecUnavailable(f"no Kafka broker answered at {bootstrap} within {timeout_s:g}s") from e
        try:
            if topic not in set(admin.list_topics()):
                try:
                    admin.create_topics({topic: {"num_partitions": 1, "replication_factor": -1,
                                                 "configs": {"cleanup.policy": "compact"}}})
                    admin.wait_for_topics([topic], timeout_ms=int(timeout_s * 1000))
                except TopicAlreadyExistsError:  # another worker was faster
                    pass
        finally:
            admin.close()
    finally:
        quiet.setLevel(level)
