"""Every private Faust member the worker's batch drain uses, behind one adapter: the only module that names them.

Why Faust at all: it gives the worker Kafka consumer groups and rebalancing, tables whose changelogs it writes and
replays on recovery, offset commits that wait for acks, and agents; the join state lives in those tables. What it
lacks is a way to hand a whole fetch to one handler (its consumer delivers records one at a time, see
:mod:`streaming.batch_drain`), so the drain replaces the consumer's fetch loop and keeps that loop's bookkeeping
itself. That takes the private members listed in :data:`PRIVATE_MEMBERS`, each read only here:

* :class:`DrainHookConsumer` overrides ``Consumer._drain_messages`` (the loop Faust's ``Fetcher`` service awaits)
  and calls :meth:`DrainHookConsumer.fetch_loop` with a :class:`ConsumerInternals`;
* :class:`DrainHookApp` overrides ``App._new_transport`` to build the transport class it names;
* :class:`ConsumerInternals` is the typed view of the consumer's private state the loop reads and writes.

Written against faust-streaming :data:`FAUST_VERSION` (pinned in ``requirements/base.txt``) on aiokafka 0.14.0.
``tests/streaming/test_faust_compat.py`` checks the pin, every member (present, same parameters, same kind of
value), the public members in :data:`PUBLIC_MEMBERS`, that Faust still calls the two hooks, and that
:meth:`ConsumerInternals.ack_offsets` leaves the bookkeeping ``Consumer.ack`` leaves, all without a broker. After a
Faust upgrade that test names what moved; re-read Faust's ``Consumer._drain_messages``, ``getmany`` and ``ack``
(which the drain mirrors), adapt this module and raise :data:`FAUST_VERSION`.

Example (no broker needed):
    >>> from faust.transport.drivers import aiokafka as faust_aiokafka
    >>> app = DrainHookApp("demo", broker="kafka://127.0.0.1:1", web_enabled=False)
    >>> isinstance(app.consumer, faust_aiokafka.Consumer)
    True
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Mapping, MutableMapping
from dataclasses import dataclass
from typing import Any, ClassVar

import faust
from faust.transport.drivers import aiokafka as faust_aiokafka
from faust.types import TP, Message
from faust.types.tuples import ack_lock
from mode.utils.futures import notify

FAUST_VERSION = "0.15.3"


@dataclass(frozen=True)
class PrivateMember:
    """One private Faust member the adapter uses.

    ``owner``: ``"App"`` (``faust.App``), ``"Consumer"`` (``faust.transport.drivers.aiokafka.Consumer``),
    ``"Fetcher"`` (``faust.transport.consumer.Fetcher``) or ``"faust.types.tuples"`` (a module global).
    ``params``: a method's parameter names, ``self`` first; None for an attribute, whose value on a fresh instance
    must pass ``check``.
    """

    owner: str
    name: str
    why: str
    params: tuple[str, ...] | None = None
    check: Callable[[Any], bool] | None = None


def _is_event(x: Any) -> bool:
    return callable(getattr(x, "is_set", None))


PRIVATE_MEMBERS: tuple[PrivateMember, ...] = (
    PrivateMember("App", "_new_transport", "builds the app's consumer transport: the drain's, with its Consumer",
                  ("self",)),
    PrivateMember("Consumer", "_drain_messages", "the fetch loop Faust's Fetcher service awaits: replaced",
                  ("self", "fetcher")),
    PrivateMember("Consumer", "_wait_next_records", "one fetch ({tp: records}, active partitions) after Faust's "
                  "flow-control wait, without a Message per record", ("self", "timeout")),
    PrivateMember("Consumer", "_to_message", "a record of a topic outside the batch → the Message Faust's "
                  "per-message path takes", ("self", "tp", "record")),
    PrivateMember("Consumer", "_add_gap", "records an offset gap (compaction, transaction markers) so commits can "
                  "pass it", ("self", "tp", "offset_from", "offset_to")),
    PrivateMember("Consumer", "_read_offset", "{tp: last delivered offset}: re-fetched records below it are "
                  "dropped; advanced after the handler returns", check=lambda x: isinstance(x, MutableMapping)),
    PrivateMember("Consumer", "_buffered_partitions", "partitions delivered although not active (getmany's "
                  "check)", check=lambda x: isinstance(x, set)),
    PrivateMember("Consumer", "_committed_offset", "Consumer.ack's bookkeeping: offsets below it are not acked "
                  "again", check=lambda x: isinstance(x, Mapping)),
    PrivateMember("Consumer", "_acked_index", "Consumer.ack's bookkeeping: {tp: set of acked offsets}",
                  check=lambda x: isinstance(x, Mapping)),
    PrivateMember("Consumer", "_acked", "Consumer.ack's bookkeeping: {tp: acked offsets}, what commits read",
                  check=lambda x: isinstance(x, Mapping)),
    PrivateMember("Consumer", "_n_acked", "acks since the last commit (Consumer.ack's count)",
                  check=lambda x: type(x) is int),
    PrivateMember("Consumer", "_commit_every", "broker_commit_every: the loop commits after this many acks",
                  check=lambda x: x is None or type(x) is int),
    PrivateMember("Consumer", "_waiting_for_ack", "the future Consumer.ack notifies (a commit waiting for acks)",
                  check=lambda x: x is None or isinstance(x, asyncio.Future)),
    PrivateMember("Consumer", "_stopped", "mode Service flag: the consumer is stopping (the loop's exit)",
                  check=_is_event),
    PrivateMember("Fetcher", "_stopped", "mode Service flag: the fetcher is stopping (the loop's exit)",
                  check=_is_event),
    PrivateMember("faust.types.tuples", "ack_lock", "the lock Consumer.ack holds around its bookkeeping",
                  check=lambda x: callable(getattr(x, "acquire", None))),
)

# Public members the drain relies on (checked for presence too): (owner, name); "Consumer.app" is the app.
PUBLIC_MEMBERS: tuple[tuple[str, str], ...] = (
    ("Consumer", "callback"), ("Consumer", "wait_first"), ("Consumer", "suspend_flow"), ("Consumer", "flow_active"),
    ("Consumer", "getmany"), ("Consumer", "commit"), ("Consumer", "highwater"), ("Consumer", "sleep"),
    ("Consumer", "should_stop"), ("Consumer", "seek"), ("Consumer", "perform_seek"),
    ("App", "consumer_generation_id"), ("App", "topics"), ("App", "monitor"),
    ("Transport", "Consumer"),
)


def read_offsets(consumer: faust_aiokafka.Consumer) -> MutableMapping[TP, int | None]:
    """The consumer's ``{tp: last delivered offset}`` (``Consumer._read_offset``; after Faust's seek to the
    committed offsets it holds those offsets)."""
    offsets: MutableMapping[TP, int | None] = consumer._read_offset  # type: ignore[attr-defined]
    return offsets


class ConsumerInternals:
    """The private state of one Faust consumer that the batch drain reads and writes (see :data:`PRIVATE_MEMBERS`).

    Made once per fetch loop; its methods run once per fetch or per partition of a batch, never per record.
    """

    __slots__ = ("_c", "_fetcher", "read_offset")

    def __init__(self, consumer: faust_aiokafka.Consumer, fetcher: Any) -> None:
        self._c: Any = consumer
        self._fetcher: Any = fetcher
        self.read_offset: MutableMapping[TP, int | None] = read_offsets(consumer)  # {tp: last delivered offset}

    def stopping(self) -> bool:
        """The consumer or the fetcher service is stopping (Faust's loop condition)."""
        return bool(self._c._stopped.is_set() or self._fetcher._stopped.is_set())

    async def wait_next_records(self, timeout: float) -> tuple[Mapping[TP, list[Any]] | None, set[TP] | None]:
        """One fetch: ({tp: aiokafka records} or None, the active partitions or None for all)."""
        records, active = await self._c._wait_next_records(timeout)
        return records, active

    def buffered(self, tp: TP) -> bool:
        """``tp`` is delivered although not among the active partitions."""
        return tp in self._c._buffered_partitions

    def to_message(self, tp: TP, record: Any) -> Message:
        """A record as the Faust ``Message`` its per-message path takes."""
        message: Message = self._c._to_message(tp, record)
        return message

    async def add_gap(self, tp: TP, offset_from: int, offset_to: int) -> None:
        """Record that offsets ``offset_from..offset_to`` (inclusive) of ``tp`` never arrive."""
        await self._c._add_gap(tp, offset_from, offset_to)

    def ack_offsets(self, tp: TP, offsets: list[int]) -> None:
        """``Consumer.ack`` for many offsets of one partition at once: the same bookkeeping under one lock."""
        c = self._c
        with ack_lock:
            committed = c._committed_offset[tp]
            index, acked = c._acked_index[tp], c._acked[tp]
            n = 0
            for offset in offsets:
                if (committed is None or offset >= committed) and offset not in index:
                    index.add(offset)
                    acked.append(offset)
                    n += 1
            c._n_acked += n
            notify(c._waiting_for_ack)

    def take_commit_due(self) -> bool:
        """True, and the ack count reset, once ``broker_commit_every`` acks have accumulated (the caller then
        commits, as Faust's loop does)."""
        c = self._c
        if c._commit_every is not None and c._n_acked >= c._commit_every:
            c._n_acked = 0
            return True
        return False


class DrainHookConsumer(faust_aiokafka.Consumer):
    """Faust's aiokafka consumer whose fetch loop is :meth:`fetch_loop` (Faust's own unless a subclass overrides it)."""

    async def _drain_messages(self, fetcher: Any) -> None:  # pragma: no cover - Faust's Fetcher awaits it
        await self.fetch_loop(fetcher, ConsumerInternals(self, fetcher))

    async def fetch_loop(self, fetcher: Any, internals: ConsumerInternals) -> None:  # pragma: no cover
        """Read records until the consumer or ``fetcher`` stops; the default is Faust's per-message loop."""
        await super()._drain_messages(fetcher)


class DrainHookApp(faust.App):
    """A ``faust.App`` whose consumer transport is :attr:`transport_class` (the aiokafka one by default)."""

    transport_class: ClassVar[type[faust_aiokafka.Transport]] = faust_aiokafka.Transport

    def _new_transport(self) -> Any:
        return self.transport_class(self.conf.broker_consumer, self, loop=self.loop)
