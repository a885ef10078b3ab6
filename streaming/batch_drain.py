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

Semantics kept from Faust's loop: records below the partition's read offset are dropped (re-fetched after a
seek), gaps in offsets are recorded so commits can pass them, a batch taken under an older consumer generation (a
rebalance happened) is dropped unacked and re-fetched from the committed offsets by the partition's new owner, and
while Faust's flow is stopped (a rebalance) nothing is fetched.

Where Faust's own loop can lose records around a rebalance, the drain does not: records fetched under the new
generation start the next batch instead of being dropped with the old one; batch-topic records never take Faust's
per-message path (its agent would process them after later batches, and the worker would skip them as already
processed); records fetched before the generation's seek to the committed offsets (Faust resumes the partitions
first and seeks after, so the consumer briefly reads on from its old position) are dropped and read again after
it; and where a partition's offsets jump past the next expected one (the committed offset after a seek, the last
handled + 1 after a batch) the partition is read again from it once (a jump still there is real: compaction or
transaction markers).

Every private Faust member this takes (the fetch-loop hook, the read offsets, the ack bookkeeping, ...) is reached
through :mod:`streaming.faust_compat`, which lists them with the Faust version they were written against; this
module uses Faust's public API otherwise.

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

from faust.transport.drivers import aiokafka as faust_aiokafka
from faust.types import TP, Message

from streaming.faust_compat import ConsumerInternals, DrainHookApp, DrainHookConsumer, read_offsets

BatchHandler = Callable[[Sequence[Any]], Awaitable[None]]  # records with topic/partition/offset/key/value


class BatchDrainConsumer(DrainHookConsumer):
    """Faust's aiokafka consumer with a fetch loop that delivers the app's batch topics a batch at a time.

    Batch-topic records reach the handler as aiokafka ``ConsumerRecord``s (``topic``, ``partition``, ``offset``,
    ``key``, ``value``), without Faust's per-record ``Message`` and generator step.
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.sought_generation: int | None = None  # the consumer generation of Faust's last seek to committed
        self._held_before_seek: dict[TP, int] = {}  # {tp: first offset dropped waiting for that seek}
        self._next: dict[TP, int] = {}  # {tp: the offset expected next (committed after a seek, last handled + 1)}
        self._reread_from: dict[TP, int] = {}  # {tp: the expected offset it was last read again from after a jump}

    async def fetch_loop(self, fetcher: Any, internals: ConsumerInternals) -> None:  # pragma: no cover - real broker
        app = cast(BatchDrainApp, self.app)
        if not app.batch_topics:
            await super().fetch_loop(fetcher, internals)
            return
        carry: tuple[int, list[tuple[TP, Any]]] | None = None
        while not internals.stopping():
            generation = self.app.consumer_generation_id
            # records a fetch returned under a newer generation than the batch they ended: this batch's start
            batch = carry[1] if carry is not None and carry[0] == generation else []
            carry = await self._collect(internals, batch, generation)
            if self.should_stop:
                return
            if not batch:
                continue
            offsets, fresh, seen = await self._filter(internals, batch)
            if not fresh or self.app.consumer_generation_id != generation or not self.flow_active:
                continue  # revoked or paused meanwhile: the new owner (or the resumed fetch) reads them again
            assert app.batch_handler is not None
            await app.batch_handler(fresh)
            if not self.flow_active:
                continue  # a revocation began during the batch: it forgot these partitions' bookkeeping; the
                # records are in the logged state, so whoever owns them next skips them as redelivered
            self._acknowledge(internals, offsets, seen)
            if internals.take_commit_due():
                await self.commit()

    async def _collect(self, internals: ConsumerInternals, batch: list[tuple[TP, Any]],
                       generation: int) -> tuple[int, list[tuple[TP, Any]]] | None:
        """Fetch until ``batch_max`` records, ``batch_within_s`` after the first one, a fetch comes back empty or
        a fetch comes back under another consumer generation; batch-topic records are appended to ``batch``, the
        others take Faust's per-message path at once.

        Returns the records of a fetch made under a newer generation than ``batch``'s (generation, records), or
        None: they were fetched after the rebalance's seek, so nothing fetches them again, and they start the next
        batch (``batch`` itself is dropped: its partitions are re-read from their committed offsets)."""
        app = cast(BatchDrainApp, self.app)
        timeout, deadline = 1.0, 0.0
        while True:
            n_before = len(batch)
            got: list[tuple[TP, Any]] = []
            fetched_in, others = await self._fetch(internals, timeout, got)
            await self.sleep(0)
            if self.should_stop:
                return None
            await self._deliver_others(internals, others)
            if fetched_in != generation:
                return (fetched_in, got) if got else None
            batch += got
            if not batch:
                return None
            if not n_before:
                deadline = time.monotonic() + app.batch_within_s
            timeout = deadline - time.monotonic()
            if (len(batch) == n_before or len(batch) >= app.batch_max or timeout <= 0
                    or self.app.consumer_generation_id != generation):
                return None

    async def _deliver_others(self, internals: ConsumerInternals, others: list[tuple[TP, Message]]) -> None:
        """Faust's per-message path, unchanged, for the records of topics outside the batch."""
        read_offset = internals.read_offset
        acks_enabled_for = self.app.topics.acks_enabled_for
        for tp, message in others:
            r_offset = read_offset.get(tp)
            if r_offset is None or message.offset >= r_offset:
                if r_offset and message.offset - r_offset > 1 and acks_enabled_for(tp.topic):
                    await internals.add_gap(tp, r_offset + 1, message.offset)
                await self.wait_first(self.callback(message), self.suspend_flow.wait())
                read_offset[tp] = message.offset

    async def _filter(self, internals: ConsumerInternals, batch: list[tuple[TP, Any]],
                      ) -> tuple[dict[TP, list[int]], list[Any], dict[TP, int | None]]:
        """Faust's filter, plus two guards against records fetched from a stale position.

        Skips offsets below the read offset and below the next expected offset (already delivered, re-fetched
        after a seek). Drops a partition's records while its read offset is unknown and this generation's seek to
        the committed offsets has not happened yet (they come from the previous position: the seek reads them
        again). Where a partition's first offset is past the next expected one (the committed offset after a
        seek, the last handled + 1 after a batch), reads the partition again from the expected offset once: the
        records in between were fetched and dropped somewhere (e.g. around a rebalance). A jump still there on the
        re-read is real (compaction, transaction markers) and is recorded as a gap so commits can pass it.

        Returns ({tp: offsets to ack}, the records to handle, {tp: the read offset once they are handled}).
        """
        read_offset = internals.read_offset
        acks_enabled_for = self.app.topics.acks_enabled_for
        seek_pending = self.sought_generation != self.app.consumer_generation_id
        seen: dict[TP, int | None] = {}
        offsets: dict[TP, list[int]] = {}
        held: set[TP] = set()  # partitions whose remaining records this batch drops (they are read again)
        expect: dict[TP, int] = {}  # {tp: the offset expected next within this batch}
        fresh = []
        for tp, rec in batch:
            if tp in held:
                continue
            if tp not in seen:
                r = read_offset.get(tp)
                if r is None and seek_pending:
                    held.add(tp)
                    first = self._held_before_seek.get(tp)
                    self._held_before_seek[tp] = rec.offset if first is None else min(first, rec.offset)
                    continue
                seen[tp] = r
                offsets[tp] = []
                if tp in self._next:
                    expect[tp] = self._next[tp]
            r_offset, offset, expected = seen[tp], rec.offset, expect.get(tp)
            if (r_offset is not None and offset < r_offset) or (expected is not None and offset < expected):
                continue
            if expected is not None and offset > expected:
                if self._reread_from.get(tp) != expected:
                    self._reread_from[tp] = expected
                    held.add(tp)
                    await self.seek(tp, expected)
                    continue
                if acks_enabled_for(tp.topic):
                    await internals.add_gap(tp, expected, offset)
            expect[tp] = offset + 1
            seen[tp] = offset
            offsets[tp].append(offset)
            fresh.append(rec)
        return offsets, fresh, seen

    async def perform_seek(self) -> None:
        """Faust's seek of the stream partitions to their committed offsets after a rebalance's recovery: records
        the generation it was done for (until then :meth:`_filter` drops records of partitions without a read
        offset) and the committed offsets as the next expected ones, then seeks again any partition whose records
        were dropped meanwhile (they may have been fetched after Faust's seek, so nothing else reads them again)."""
        generation = self.app.consumer_generation_id
        await super().perform_seek()
        if self.app.consumer_generation_id == generation:
            for tp in self.sought(generation):
                await self.seek(tp, self._next[tp])

    def sought(self, generation: int) -> list[TP]:
        """Bookkeeping once Faust sought the stream partitions to their committed offsets (its read offsets now)
        for ``generation``; returns the partitions whose records were dropped waiting for it, to seek again to
        their next expected offset: the committed one, or without one the first dropped (where reading began)."""
        self.sought_generation = generation
        self._next = {tp: o for tp, o in read_offsets(self).items() if o is not None}
        self._reread_from.clear()
        held, self._held_before_seek = self._held_before_seek, {}
        for tp, first in held.items():
            # no committed offset (nothing committed yet): the first dropped record is where reading started
            self._next.setdefault(tp, first)
        return list(held)

    def _acknowledge(self, internals: ConsumerInternals, offsets: dict[TP, list[int]],
                     seen: dict[TP, int | None]) -> None:
        """After the handler returned: ack the batch's offsets (Faust's ack bookkeeping) and advance the read
        offsets and the next expected ones."""
        acks_enabled_for = self.app.topics.acks_enabled_for
        for tp, offs in offsets.items():
            if acks_enabled_for(tp.topic):
                internals.ack_offsets(tp, offs)
            if offs:
                self._next[tp] = offs[-1] + 1
            if seen[tp] is not None:
                internals.read_offset[tp] = seen[tp]

    async def _fetch(self, internals: ConsumerInternals, timeout: float,
                     batch: list[tuple[TP, Any]]) -> tuple[int, list[tuple[TP, Message]]]:
        """One fetch: batch-topic records are appended to ``batch`` as (tp, record); the others come back as Faust
        messages for the per-message path, with the consumer generation the fetch was made under. Mirrors
        ``Consumer.getmany``'s checks (flow, generation, active tps); like it, waits while Faust's flow is stopped
        (a rebalance). Batch-topic records never take the per-message path: the agent's stream would process them
        after later batches, and the worker would skip them as already processed."""
        records, active = await internals.wait_next_records(timeout)
        generation = self.app.consumer_generation_id
        if records is None or self.should_stop:
            return generation, []
        batch_topics = cast(BatchDrainApp, self.app).batch_topics
        others: list[tuple[TP, Message]] = []
        got: list[tuple[TP, Any]] = []
        for tp, recs in records.items():
            if not (active is None or tp in active or internals.buffered(tp)):
                continue
            self.app.monitor.track_tp_end_offset(tp, self.highwater(tp))
            if tp.topic in batch_topics:
                got += [(tp, r) for r in recs]
            else:
                others += [(tp, internals.to_message(tp, r)) for r in recs]
        if not self.flow_active or self.app.consumer_generation_id != generation:
            return generation, []  # revoked meanwhile: re-read after the rebalance's seek
        batch += got
        return generation, others


class BatchDrainTransport(faust_aiokafka.Transport):
    """The aiokafka transport with :class:`BatchDrainConsumer`."""

    Consumer = BatchDrainConsumer


class BatchDrainApp(DrainHookApp):
    """A ``faust.App`` whose consumer can hand whole fetches of some topics to one coroutine (see module doc)."""

    transport_class = BatchDrainTransport

    def __init__(self, id: str, **options: Any) -> None:
        super().__init__(id, **options)
        self.batch_topics: frozenset[str] = frozenset()  # none: every topic takes Faust's per-message path
        self.batch_handler: BatchHandler | None = None
        self.batch_max = 2000
        self.batch_within_s = 0.2

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
