"""The batch drain's fetch loop around a rebalance, driven without a broker through a scripted stand-in for
:class:`streaming.faust_compat.ConsumerInternals` (the seam the loop reads Faust's private state through).

What is checked is what the real-broker rebalance test (``tests/streaming/test_worker_kafka.py``) can only catch by
chance: records fetched under a new consumer generation reach the handler, and input records never take Faust's
per-message path (where the agent would process them after later batches and the worker skip them as redelivered).
"""

from __future__ import annotations

import asyncio
import functools
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from faust.types import TP

from streaming.batch_drain import BatchDrainApp

TOPIC = "impressions"
TP0 = TP(TOPIC, 0)


@dataclass
class Record:
    topic: str
    partition: int
    offset: int
    key: bytes = b"u"
    value: bytes = b"{}"


def _records(first: int, last: int) -> list[Record]:
    return [Record(TOPIC, 0, o) for o in range(first, last + 1)]


class ScriptedInternals:
    """Each fetch runs the next step of ``script`` (which may rebalance: stop flow, bump the generation) and returns
    its records; like Faust's ``_wait_next_records`` it waits while the flow is stopped. Stops when the script is
    done."""

    def __init__(self, consumer: Any, script: list[Callable[[], list[Record]]]) -> None:
        self.consumer = consumer
        self.script = list(script)
        self.read_offset: dict[TP, int | None] = {}
        self.acked: list[int] = []
        self.gaps: list[tuple[int, int]] = []
        self.seeks: list[int] = []

    def stopping(self) -> bool:
        return not self.script

    async def wait_next_records(self, timeout: float) -> tuple[dict[TP, list[Record]] | None, set[TP] | None]:
        if not self.script:
            return {}, None
        recs = self.script.pop(0)()
        while not self.consumer.flow_active:
            await asyncio.sleep(0.001)
        by_tp: dict[TP, list[Record]] = {}
        for r in recs:
            by_tp.setdefault(TP(r.topic, r.partition), []).append(r)
        return by_tp, None

    def buffered(self, tp: TP) -> bool:
        return False

    def to_message(self, tp: TP, record: Any) -> Any:
        return record

    async def add_gap(self, tp: TP, offset_from: int, offset_to: int) -> None:
        self.gaps.append((offset_from, offset_to))

    async def seek(self, tp: TP, offset: int) -> None:
        """``Consumer.seek``: the next fetch starts at ``offset``, which becomes the read offset."""
        self.seeks.append(offset)
        self.read_offset[tp] = offset

    def ack_offsets(self, tp: TP, offsets: list[int]) -> None:
        self.acked += offsets

    def take_commit_due(self) -> bool:
        return False


Step = Callable[[Any], list[Record]]  # consumer -> the records one fetch returns (may rebalance first)


def _run(script: list[Step], during_handler: Sequence[Callable[[Any], None]] = (),
         ) -> tuple[list[list[int]], list[Any], ScriptedInternals]:
    """Run the fetch loop over ``script`` (``during_handler[i]`` runs inside the i-th handler call); returns
    (offsets per handled batch, per-message deliveries, internals)."""
    app = BatchDrainApp("drain-test", broker="kafka://127.0.0.1:1", web_enabled=False)
    handled: list[list[int]] = []
    consumer: Any = app.consumer

    async def handle(messages: Sequence[Any]) -> None:
        handled.append([m.offset for m in messages])
        if on_handle:
            on_handle.pop(0)(consumer)

    on_handle = list(during_handler)
    app.drain_batches([TOPIC], handle, max_records=1000, within_s=0.05)
    app.consumer_generation_id = 1
    consumer.sought_generation = 1  # Faust's seek to the committed offsets is done for generation 1
    consumer.highwater = lambda tp: None
    per_message: list[Any] = []

    async def deliver_others(internals: Any, others: list[Any]) -> None:
        per_message.extend(others)

    consumer._deliver_others = deliver_others
    internals = ScriptedInternals(consumer, [functools.partial(step, consumer) for step in script])
    consumer.seek = internals.seek
    consumer.internals = internals
    consumer._read_offset = internals.read_offset
    asyncio.run(asyncio.wait_for(consumer.fetch_loop(None, internals), 10))
    return handled, per_message, internals


def _empty(consumer: Any) -> list[Record]:
    return []


def test_records_fetched_after_a_rebalance_reach_the_handler_once() -> None:
    """Fetch 1 (generation 1) is cut short by a rebalance; fetch 2 comes back under generation 2 from the committed
    offset (the rebalance's seek). The old batch is dropped unhandled; the new records are handled, not dropped
    with it (nothing would fetch them again)."""
    def rebalance_then_refetch(consumer: Any) -> list[Record]:
        consumer.app.consumer_generation_id = 2
        _faust_seek(consumer, committed=0)
        return _records(0, 9)

    handled, per_message, internals = _run([lambda c: _records(0, 4), rebalance_then_refetch, _empty, _empty])
    assert handled == [list(range(10))]
    assert internals.read_offset[TP0] == 9
    assert per_message == []


def test_while_the_flow_is_stopped_input_records_wait_for_the_batch_path() -> None:
    """A rebalance stops Faust's flow before a fetch and resumes it later: the fetch waits, and its input records
    are handled as a batch, never handed to Faust's per-message path (the agent would process them after later
    batches)."""
    def stop_flow(consumer: Any) -> list[Record]:
        consumer.stop_flow()
        asyncio.get_running_loop().call_later(0.05, consumer.resume_flow)
        return _records(0, 4)

    handled, per_message, _ = _run([stop_flow, _empty, lambda c: _records(5, 7), _empty, _empty])
    assert [o for batch in handled for o in batch] == list(range(8))
    assert per_message == []


def test_a_batch_during_which_a_revocation_began_is_not_acked() -> None:
    """Faust forgets a revoked partition's bookkeeping when the revocation begins; the batch in flight finishes
    (its state is logged) but is not acked and does not move the read offset: the next owner skips the records as
    redelivered."""
    def revoke(consumer: Any) -> None:
        consumer.stop_flow()
        asyncio.get_running_loop().call_later(0.05, consumer.resume_flow)

    handled, _, internals = _run([lambda c: _records(0, 4), _empty, _empty], during_handler=[revoke])
    assert handled == [list(range(5))]
    assert TP0 not in internals.read_offset


def _faust_seek(consumer: Any, committed: int) -> list[TP]:
    """What Faust's recovery does at the end of a rebalance: seek the stream partitions to their committed
    offsets, which become the read offsets (``Consumer.perform_seek``); returns the partitions the drain's
    override then seeks again (their records were dropped waiting for the seek)."""
    consumer.internals.read_offset[TP0] = committed
    again: list[TP] = consumer.sought(consumer.app.consumer_generation_id)
    return again


def test_records_fetched_before_the_rebalance_seek_are_read_again_after_it() -> None:
    """After a rebalance the consumer still fetches from the old position (5..9: 0..4 were prefetched and dropped)
    until Faust seeks to the committed offset 0. Those records are not handled (0..4 would be skipped for good);
    after the seek 0..9 are handled in order."""
    def rebalance(consumer: Any) -> list[Record]:
        consumer.app.consumer_generation_id = 2
        consumer.internals.read_offset.pop(TP0, None)  # Faust forgets a revoked partition's read offset
        return _records(5, 9)

    def seek_then_fetch(consumer: Any) -> list[Record]:
        assert _faust_seek(consumer, committed=0) == [TP0]  # its records were dropped: seek it again too
        return _records(0, 9)

    handled, _, _ = _run([rebalance, _empty, seek_then_fetch, _empty, _empty])
    assert [o for batch in handled for o in batch] == list(range(10))


def test_an_offset_jump_is_read_again_once_and_a_real_gap_is_passed() -> None:
    """Offsets jump from 4 to 10: the partition is read again from 4 (5..9 exist: they were fetched and dropped
    somewhere) and handled in order; a jump that is still there on the re-read (12 → 20: compaction, transaction
    markers) is real and recorded as a gap so commits can pass it."""
    def jump(consumer: Any) -> list[Record]:
        return _records(10, 12)

    handled, _, internals = _run([lambda c: _records(0, 4), _empty, jump, _empty, lambda c: _records(5, 12), _empty,
                                  lambda c: _records(20, 21), _empty, lambda c: _records(20, 21), _empty, _empty])
    assert [o for batch in handled for o in batch] == [*range(13), 20, 21]
    assert internals.seeks == [5, 13]


def test_a_stale_fetch_right_after_the_rebalance_seek_does_not_skip_the_committed_offset() -> None:
    """Faust seeks to the committed offset 6, but a fetch made from the old position (7: 6 was prefetched and
    dropped at the revocation) comes back after the seek. Record 6 is read again, not skipped."""
    def rebalance_and_seek(consumer: Any) -> list[Record]:
        consumer.app.consumer_generation_id = 2
        _faust_seek(consumer, committed=6)
        return _records(7, 9)

    handled, _, internals = _run([lambda c: _records(0, 5), _empty, rebalance_and_seek, _empty,
                                  lambda c: _records(6, 9), _empty, _empty])
    assert [o for batch in handled for o in batch] == list(range(10))
    assert internals.seeks == [6]


def test_records_held_for_the_seek_of_a_group_without_commits_are_read_again_from_the_first() -> None:
    """Nothing was committed yet (the first owner died before its first commit): Faust's seek leaves no read
    offset, and the records fetched from the reset position while it ran (0..4) were dropped. They are read again
    from the first one, not lost."""
    def fetch_while_seeking(consumer: Any) -> list[Record]:
        consumer.app.consumer_generation_id = 2
        consumer.internals.read_offset.pop(TP0, None)
        return _records(0, 4)

    def seek_done(consumer: Any) -> list[Record]:
        consumer.internals.read_offset.pop(TP0, None)  # no committed offset
        again = consumer.sought(consumer.app.consumer_generation_id)
        assert again == [TP0] and consumer._next[TP0] == 0
        consumer.internals.seeks.append(consumer._next[TP0])  # what perform_seek then does
        return _records(0, 4)

    handled, _, internals = _run([fetch_while_seeking, _empty, seek_done, _empty, _empty])
    assert [o for batch in handled for o in batch] == list(range(5))
    assert internals.seeks == [0]
