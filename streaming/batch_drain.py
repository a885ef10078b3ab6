"""Whole-batch delivery of Kafka records to one Faust handler: the worker's fast path past Faust's per-message loop.

Faust's fetcher hands every record to the conductor one at a time, as
``await self.wait_first(callback(message), self.suspend_flow.wait())`` (two new tasks and several event-loop turns
per record), and the agent's stream then takes each event through its iterator, processors and acks. Measured here
(``benchmarks/bench_streaming.py``, "Faust no-op"): an agent that does nothing tops out at ~9–15k events/s on one
core, below what the worker's pure core alone processes.

:class:`BatchDrainApp` is a ``faust.App`` whose consumer, for the topics given to :meth:`BatchDrainApp.drain_batches`,
collects the records of consecutive ``getmany`` fetches (up to a size or a time bound) and awaits the handler ONCE
with the whole list (aiokafka records: no Faust ``Message`` per record); after it returns the records are acked
with :meth:`Consumer.ack`'s bookkeeping (one lock per partition), so Faust's offset commits, consumer group,
rebalancing, tables, changelogs and recovery are unchanged. Records of every other topic (table changelogs during
recovery, other agents) take Faust's normal path. The handler runs inline in the fetch loop: the next fetch waits
for it (back-pressure), and a handler that raises stops the worker like a crashing agent would (nothing acked).

Semantics kept from Faust's loop: records at or below the partition's read offset are dropped (re-fetched after a
seek), gaps in offsets are recorded so commits can pass them, and a fetch taken under an older consumer generation
(a rebalance happened) is dropped unacked and re-fetched by the partition's new owner.

Example (no broker needed to build it):
    >>> app = BatchDrainApp("demo", broker="kafka://127.0.0.1:1", web_enabled=False)
    >>> async def handle(messages): pass
    >>> app.drain_batches(["impressions"], handle)
    >>> sorted(app.batch_topics)
    ['impressions']
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable, Iterable, Sequence
from typing import Any, cast

import faust
from faust.transport.drivers import aiokafka as faust_aiokafka
from faust.types import TP, Message
from faust.types.tuples import ack_lock
from mode.utils.futures import notify

BatchHandler = Callable[[Sequence[Any]], Awaitable[None]]  # records with topic/partition/offset/key/value


class BatchDrainConsumer(faust_aiokafka.Consumer):
    """Faust's aiokafka consumer with a fetch loop that delivers the app's batch topics a batch at a time.

    Batch-topic records reach the handler as aiokafka ``ConsumerRecord``s (``topic``, ``partition``, ``offset``,
    ``key``, ``value``), without Faust's per-record ``Message`` and generator step.
    """

    async def _drain_messages(self, fetcher: Any) -> None:  # pragma: no cover - exercised on the real broker
        app = cast(BatchDrainApp, self.app)
        if not app.batch_topics:
            await super()._drain_messages(fetcher)
            return
        callback = self.callback
        read_offset = self._read_offset
        consumer_should_stop = self._stopped.is_set
        fetcher_should_stop = fetcher._stopped.is_set
        acks_enabled_for = self.app.topics.acks_enabled_for
        while not (consumer_should_stop() or fetcher_should_stop()):
            generation = self.app.consumer_generation_id
            batch: list[tuple[TP, Any]] = []
            timeout, deadline = 1.0, 0.0
            while True:  # fetch until batch_max records, batch_within_s after the first one, or a fetch comes back empty
                n_before = len(batch)
                others = await self._fetch(timeout, batch)
                await self.sleep(0)
                if self.should_stop:
                    return
                for tp, message in others:  # Faust's per-message path, unchanged
                    r_offset = read_offset.get(tp)
                    if r_offset is None or message.offset >= r_offset:
                        if r_offset and message.offset - r_offset > 1 and acks_enabled_for(tp.topic):
                            await self._add_gap(tp, r_offset + 1, message.offset)
                        await self.wait_first(callback(message), self.suspend_flow.wait())
                        read_offset[tp] = message.offset
                if not batch:
                    break
                if not n_before:
                    deadline = time.monotonic() + app.batch_within_s
                timeout = deadline - time.monotonic()
                if (len(batch) == n_before or len(batch) >= app.batch_max or timeout <= 0
                        or self.app.consumer_generation_id != generation):
                    break
            if not batch:
                continue
            # Faust's filter: skip offsets below the read offset (re-fetched after a seek); record a gap where offsets
            # jump (compaction, transaction markers) so commits can pass it. Read offsets advance after handling.
            seen: dict[TP, int | None] = {}
            offsets: dict[TP, list[int]] = {}
            fresh = []
            for tp, rec in batch:
                if tp not in seen:
                    seen[tp] = read_offset.get(tp)
                    offsets[tp] = []
                r_offset, offset = seen[tp], rec.offset
                if r_offset is not None and offset < r_offset:
                    continue
                if r_offset and offset - r_offset > 1 and acks_enabled_for(tp.topic):
                    await self._add_gap(tp, r_offset + 1, offset)
                seen[tp] = offset
                offsets[tp].append(offset)
                fresh.append(rec)
            if not fresh or self.app.consumer_generation_id != generation or not self.flow_active:
                continue  # revoked or paused meanwhile: the new owner (or the resumed fetch) reads them again
            assert app.batch_handler is not None
            await app.batch_handler(fresh)
            for tp, offs in offsets.items():
                if acks_enabled_for(tp.topic):
                    self._ack_offsets(tp, offs)
                if seen[tp] is not None:
                    read_offset[tp] = seen[tp]
            if self._commit_every is not None and self._n_acked >= self._commit_every:
                self._n_acked = 0
                await self.commit()

    async def _fetch(self, timeout: float, batch: list[tuple[TP, Any]]) -> list[tuple[TP, Message]]:
        """One fetch: batch-topic records are appended to ``batch`` as (tp, record); the others come back as Faust
        messages for the per-message path. Mirrors ``Consumer.getmany``'s checks (flow, generation, active tps)."""
        if not self.flow_active:
            return [x async for x in self.getmany(timeout)]  # Faust seeks back to the committed offsets
        records, active = await self._wait_next_records(timeout)
        if records is None or self.should_stop:
            return []
        generation = self.app.consumer_generation_id
        batch_topics = cast(BatchDrainApp, self.app).batch_topics
        buffered = self._buffered_partitions
        others: list[tuple[TP, Message]] = []
        got: list[tuple[TP, Any]] = []
        for tp, recs in records.items():
            if not (active is None or tp in active or tp in buffered):
                continue
            self.app.monitor.track_tp_end_offset(tp, self.highwater(tp))
            if tp.topic in batch_topics:
                got += [(tp, r) for r in recs]
            else:
                others += [(tp, self._to_message(tp, r)) for r in recs]
        if not self.flow_active or self.app.consumer_generation_id != generation:
            return []
        batch += got
        return others

    def _ack_offsets(self, tp: TP, offsets: list[int]) -> None:
        """``Consumer.ack`` for many offsets of one partition at once (same bookkeeping, one lock)."""
        with ack_lock:
            committed = self._committed_offset[tp]
            index, acked = self._acked_index[tp], self._acked[tp]
            n = 0
            for offset in offsets:
                if (committed is None or offset >= committed) and offset not in index:
                    index.add(offset)
                    acked.append(offset)
                    n += 1
            self._n_acked += n
            notify(self._waiting_for_ack)


class BatchDrainTransport(faust_aiokafka.Transport):
    """The aiokafka transport with :class:`BatchDrainConsumer`."""

    Consumer = BatchDrainConsumer


class BatchDrainApp(faust.App):
    """A ``faust.App`` whose consumer can hand whole fetches of some topics to one coroutine (see module doc)."""

    batch_topics: frozenset[str] = frozenset()
    batch_handler: BatchHandler | None = None
    batch_max: int = 2000
    batch_within_s: float = 0.2

    def drain_batches(self, topics: Iterable[str], handler: BatchHandler, max_records: int = 2000,
                      within_s: float = 0.2) -> None:
        """Deliver ``topics`` (subscribed through an agent or ``app.topics``) to ``handler`` in batches.

        A batch is the records of consecutive fetches, closed at ``max_records`` (or more: whole fetches), after
        ``within_s`` from its first record, or when a fetch comes back empty.
        """
        self.batch_topics = frozenset(topics)
        self.batch_handler = handler
        self.batch_max = max_records
        self.batch_within_s = within_s

    def _new_transport(self) -> Any:
        return BatchDrainTransport(self.conf.broker_consumer, self, loop=self.loop)
