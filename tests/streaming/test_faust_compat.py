"""The installed Faust still has every private member :mod:`streaming.faust_compat` uses, as the adapter expects.

No broker: a consumer and a fetcher are built, never started. Each test collects every mismatch and fails once with
all of them, naming the member, what the installed Faust has and what the adapter expects.
"""

from __future__ import annotations

import importlib.metadata
import inspect
import re
from pathlib import Path
from typing import Any

import faust
import faust.tables.recovery
import faust.types.tuples
import pytest
from faust.transport.consumer import Fetcher
from faust.transport.drivers import aiokafka as faust_aiokafka
from faust.types import TP, Message

from streaming.batch_drain import BatchDrainApp, BatchDrainConsumer
from streaming.faust_compat import (
    FAUST_VERSION,
    PRIVATE_MEMBERS,
    PUBLIC_MEMBERS,
    ConsumerInternals,
    DrainHookConsumer,
)

ROOT = Path(__file__).resolve().parents[2]
UPGRADE = ("streaming/faust_compat.py was written against faust-streaming {want}; adapt it to the installed Faust "
           "and raise FAUST_VERSION (see its module doc)")


def _app() -> BatchDrainApp:
    return BatchDrainApp("compat-test", broker="kafka://127.0.0.1:1", web_enabled=False)


def _consumer() -> Any:  # typed Any: the tests read the private bookkeeping
    return _app().consumer


def _fail(problems: list[str]) -> None:
    if problems:
        pytest.fail("\n".join([f"faust-streaming {importlib.metadata.version('faust-streaming')}:", *problems,
                               UPGRADE.format(want=FAUST_VERSION)]), pytrace=False)


def test_pinned_faust_is_the_version_the_adapter_was_written_for() -> None:
    pins = re.findall(r"^faust-streaming==(\S+)", (ROOT / "requirements/base.txt").read_text(), re.MULTILINE)
    installed = importlib.metadata.version("faust-streaming")
    problems = []
    if pins != [FAUST_VERSION]:
        problems.append(f"requirements/base.txt pins faust-streaming {pins or 'nowhere'}, the adapter expects "
                        f"=={FAUST_VERSION}")
    if installed != FAUST_VERSION:
        problems.append(f"faust-streaming {installed} is installed, the adapter expects {FAUST_VERSION}")
    _fail(problems)


def test_every_private_member_is_there_with_the_expected_signature_and_value() -> None:
    app = _app()
    owners: dict[str, tuple[Any, Any]] = {  # owner -> (class, for methods; instance, for attributes)
        "App": (faust.App, app),
        "Consumer": (faust_aiokafka.Consumer, app.consumer),
        "Fetcher": (Fetcher, Fetcher(app)),
        "faust.types.tuples": (faust.types.tuples, faust.types.tuples),
    }
    assert isinstance(app.consumer, BatchDrainConsumer)
    problems = []
    for m in PRIVATE_MEMBERS:
        cls, obj = owners[m.owner]
        where = f"{m.owner}.{m.name} ({m.why})"
        if m.params is not None:
            fn = getattr(cls, m.name, None)
            if not callable(fn):
                problems.append(f"{where}: no such method")
                continue
            params = tuple(inspect.signature(fn).parameters)
            if params != m.params:
                problems.append(f"{where}: parameters {params}, the adapter expects {m.params}")
        elif not hasattr(obj, m.name):
            problems.append(f"{where}: no such attribute")
        elif m.check is not None and not m.check(getattr(obj, m.name)):
            problems.append(f"{where}: unexpected value {getattr(obj, m.name)!r}")
    _fail(problems)


def test_every_public_member_the_drain_uses_is_there() -> None:
    app = _app()
    owners = {"App": app, "Consumer": app.consumer, "Transport": faust_aiokafka.Transport}
    _fail([f"{owner}.{name}: missing" for owner, name in PUBLIC_MEMBERS if not hasattr(owners[owner], name)])


def test_faust_still_calls_the_two_hooks() -> None:
    """Faust's Fetcher awaits ``consumer._drain_messages(fetcher)`` and the app builds its transport with
    ``_new_transport()``: if either call moved, the overrides would be dead code and the worker would silently take
    the per-event path. Its recovery seeks the stream partitions with ``consumer.perform_seek()`` (the drain's
    override marks the generation as sought)."""
    problems = []
    if "consumer._drain_messages(self)" not in inspect.getsource(Fetcher):
        problems.append("Fetcher no longer awaits consumer._drain_messages(self): the batch fetch loop is never run")
    transport = inspect.getsource(inspect.unwrap(faust.App.transport.fget))  # type: ignore[attr-defined]
    if "self._new_transport()" not in transport:
        problems.append("App.transport no longer calls self._new_transport(): the drain's consumer is never built")
    recovery = inspect.getsource(faust.tables.recovery.Recovery)
    if recovery.count("consumer.perform_seek()") < 2:
        problems.append("Recovery no longer seeks the stream partitions with consumer.perform_seek() after a "
                        "rebalance: the drain would never learn that this generation's seek happened")
    app = _app()
    if type(app.transport).Consumer is not BatchDrainConsumer:
        problems.append(f"the app's transport is {type(app.transport).__name__}, not BatchDrainTransport")
    if type(_consumer())._drain_messages is not DrainHookConsumer._drain_messages:
        problems.append("BatchDrainConsumer._drain_messages is not the adapter's hook")
    _fail(problems)


@pytest.mark.parametrize("committed", [None, 5])
def test_ack_offsets_leaves_what_consumer_ack_leaves(committed: int | None) -> None:
    """The batch ack (one lock, many offsets) and Faust's ``Consumer.ack`` per message end in the same bookkeeping:
    acked offsets in order, the index, the ack count; offsets below the committed one and repeats are skipped."""
    tp = TP("t", 0)
    offsets = [3, 5, 6, 6, 8, 7, 9]
    batch, faust_acks = _consumer(), _consumer()
    for c in (batch, faust_acks):
        c._committed_offset[tp] = committed
        c.app.topics.acks_enabled_for = lambda topic: True  # the conductor learns it when an agent subscribes
    ConsumerInternals(batch, Fetcher(batch.app)).ack_offsets(tp, offsets)
    for o in offsets:
        faust_acks.ack(Message("t", 0, o, 0.0, 0, None, None, b"v", None, tp=tp))
    got = (list(batch._acked[tp]), set(batch._acked_index[tp]), batch._n_acked)
    want = (list(faust_acks._acked[tp]), set(faust_acks._acked_index[tp]), faust_acks._n_acked)
    assert got == want
    assert got[2] == (6 if committed is None else 5)


def test_commit_is_due_after_broker_commit_every_acks() -> None:
    c = _consumer()
    internals = ConsumerInternals(c, Fetcher(c.app))
    c._commit_every = 3
    internals.ack_offsets(TP("t", 0), [0, 1])
    assert not internals.take_commit_due() and c._n_acked == 2
    internals.ack_offsets(TP("t", 0), [2])
    assert internals.take_commit_due() and c._n_acked == 0
    c._commit_every = None
    internals.ack_offsets(TP("t", 0), [3, 4, 5, 6])
    assert not internals.take_commit_due()
