"""The Faust worker: a thin loop around :class:`streaming.core.StreamCore`, one core per input partition.

Topics: at start (:func:`ensure_topics`, before Faust runs) the worker creates its input, output and table changelog
topics with ``--partitions`` partitions (``user_state`` and the changelogs compacted), adopts existing ones with that
count, and refuses to start (:class:`TopicConflict`) when an existing one has another count. So it consumes from the
first event on instead of waiting for Faust's metadata refresh (its assignor ignores topics missing at start), and no
topic is auto-created by the broker with the broker's default partition count.

Topology: ONE agent (``concurrency=1``: faust-streaming #606 loses messages with more) subscribes to both input
topics (``impressions`` and ``feedback``, both keyed by user_id with the same partition count), so partition p of
both topics reaches the same core, whose watermark takes the minimum over the two streams. Events are taken in
batches (``Stream.take_events``); per batch:

1. parse (bad input → ``deadletter`` with reason, original bytes as base64, topic/partition/offset; never raises);
2. feed each partition's core (``StreamCore.on_events``: one watermark advance per batch);
3. produce samples (key user_id), corrections/dead letters and changed users' ``UserState``, and WAIT for the
   broker's acks;
4. append the batch's accepted events (one record per partition, chunked, with the partition's last processed input
   offsets) to the changelog-backed ``stream-log`` table and wait for the acks;
5. every ``snapshot_every_s``: write each user changed since the last snapshot (one JSON blob per user) to the
   ``stream-users`` table, then the partition meta (watermark inputs, the last logged batch seq, the last processed
   input offsets) to ``stream-meta``,
   then delete the log records the snapshot covers;
6. return, so Faust acks the batch's offsets (committed every ``broker_commit_interval``).

Why a log plus snapshots: writing every touched user's state every batch costs one serialization and one changelog
record per event when users are many (measured ~0.9k events/s); logging the batch is one record per partition.

Recovery (at-least-once, idempotent): a restarted worker restores the tables from their changelogs, loads the
snapshot, replays the logged batches after it through the same core (batch by batch, so the watermark sequence and
hence every decision is identical; replay outputs are dropped because they were durable before their batch was
logged), and resumes at the last committed offset. Records Kafka delivers again at offsets the restored state
already holds are skipped and counted ``redelivered`` (not ``duplicates``, which counts event_ids seen again at a new
offset: sent twice by a producer); records after the last logged batch are processed anew and re-emit the same
samples with the same ``sample_id`` (the core is deterministic). The dedup memory must cover the duplicates'
event-time distance (``late_horizon_s``).
"""

from __future__ import annotations

import asyncio
import base64
import logging
import math
import time
from collections import defaultdict
from collections.abc import Awaitable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import faust
import orjson
from faust.types import TP
from prometheus_client import CollectorRegistry

from streaming.batch_drain import BatchDrainApp
from streaming.config import CoreConfig, WorkerConfig  # WorkerConfig: imported from here too
from streaming.core import CoreCounters, StreamCore
from streaming.events import Event, EventError, EventKind, parse_event
from streaming.fastjson import dumps
from streaming.metrics import StreamMetrics
from streaming.outputs import DeadLetter, LateLabel, Output
from streaming.sample import Sample

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class TopicSpec:
    """A topic the worker needs: name, partition count and topic configs (e.g. ``cleanup.policy``).

    ``strict``: an existing topic must have exactly ``partitions`` (inputs and changelogs, whose partitions are the
    state's shards). An output topic (samples, dead letters, user states: keyed by user, read whole by consumers)
    is adopted with any partition count, e.g. one the broker auto-created when a consumer asked for it first.
    """

    name: str
    partitions: int
    config: Mapping[str, str] = field(default_factory=dict)
    strict: bool = True


class TopicConflict(Exception):
    """An existing topic has another partition count than the worker is configured for."""


class BrokerUnavailable(Exception):
    """The broker did not answer within ``connect_timeout_s`` at start."""


def ensure_topics(bootstrap: str, specs: Sequence[TopicSpec], timeout_s: float = 60.0) -> list[str]:
    """Create the missing ``specs`` and check the existing ones; returns the names created.

    Every existing topic is checked before anything is created, so a conflict creates nothing. A topic created
    concurrently by another worker is checked like an existing one.

    Raises:
        TopicConflict: ``topic X has N partitions, --partitions is M`` (the first conflicting topic).
        BrokerUnavailable: no broker answered within ``timeout_s``.
    """
    quiet = logging.getLogger("kafka")  # kafka-python logs every failed bootstrap attempt: the caller reports
    level = quiet.level
    quiet.setLevel(logging.CRITICAL)
    try:
        return _ensure_topics(bootstrap, specs, timeout_s)
    finally:
        quiet.setLevel(level)


def _ensure_topics(bootstrap: str, specs: Sequence[TopicSpec], timeout_s: float) -> list[str]:
    from kafka.admin import KafkaAdminClient
    from kafka.errors import KafkaError, TopicAlreadyExistsError

    try:
        admin = KafkaAdminClient(bootstrap_servers=bootstrap, client_id="streamrec-worker-topics",
                                 bootstrap_timeout_ms=int(timeout_s * 1000))
    except KafkaError as e:
        raise BrokerUnavailable(f"no Kafka broker answered at {bootstrap} within {timeout_s:g}s") from e

    def check(names: list[str]) -> None:
        by_name = {t["name"]: t for t in admin.describe_topics(names)}
        for spec in specs:
            t = by_name.get(spec.name)
            if t is not None and spec.name in names and not t.get("error_code"):
                n = len(t["partitions"])
                if n != spec.partitions and not spec.strict:
                    log.warning("output topic %s has %d partitions (--partitions is %d): adopted as is",
                                spec.name, n, spec.partitions)
                elif n != spec.partitions:
                    raise TopicConflict(f"topic {spec.name} has {n} partitions, --partitions is {spec.partitions}")

    try:
        existing = set(admin.list_topics())
        check([s.name for s in specs if s.name in existing])
        missing = [s for s in specs if s.name not in existing]
        created: list[str] = []
        for spec in missing:
            try:
                admin.create_topics({spec.name: {"num_partitions": spec.partitions, "replication_factor": -1,
                                                 "configs": dict(spec.config)}})
                created.append(spec.name)
            except TopicAlreadyExistsError:  # another worker of the group was faster
                check([spec.name])
        if created:
            admin.wait_for_topics(created, timeout_ms=int(timeout_s * 1000))
        return created
    finally:
        admin.close()


def _dead_raw(reason: str, detail: str, topic: str, partition: int, offset: int, key: bytes | None,
              value: bytes | None) -> bytes:
    return dumps({
        "reason": reason, "detail": detail, "topic": topic, "partition": partition, "offset": offset,
        "key_b64": None if key is None else base64.b64encode(key).decode(),
        "value_b64": None if value is None else base64.b64encode(value).decode(),
    })


@dataclass(slots=True)
class _BatchWork:
    """One batch's working state, handed from step to step of :meth:`StreamWorker._process`."""

    futs: list[Awaitable[Any]] = field(default_factory=list)  # broker acks of the batch's outputs, awaited at once
    events: dict[int, list[Event]] = field(default_factory=lambda: defaultdict(list))  # partition -> parsed events
    lines: dict[int, list[str]] = field(default_factory=lambda: defaultdict(list))  # partition -> "i{json}"/"f{json}"
    fresh: set[int] = field(default_factory=set)  # partitions with records not yet in their state
    dead_counts: dict[str, int] = field(default_factory=lambda: defaultdict(int))  # dead-letter reason -> records


def _json(v: Any) -> Any:
    # Table values are our JSON bytes; be liberal in what comes back from recovery (bytes, str or decoded).
    return orjson.loads(v) if isinstance(v, bytes | bytearray | str) else v


class StreamWorker:
    """Owns the Faust app, its topics and tables, and one :class:`StreamCore` per input partition.

    Example (no broker needed to build it):
        >>> w = StreamWorker(WorkerConfig(bootstrap="127.0.0.1:1"), CoreConfig(), CollectorRegistry())
        >>> w.agent.name.endswith("join")
        True
    """

    def __init__(self, cfg: WorkerConfig, core_cfg: CoreConfig, registry: CollectorRegistry) -> None:
        self.cfg = cfg
        self.core_cfg = core_cfg
        self.metrics = StreamMetrics(registry)
        self.app = BatchDrainApp(
            cfg.app_id,
            broker=f"kafka://{cfg.bootstrap}",
            store=cfg.store,
            datadir=cfg.data_dir,
            web_enabled=False,
            web_host="127.0.0.1",
            topic_partitions=cfg.partitions,
            broker_commit_interval=cfg.commit_interval_s,
            broker_session_timeout=cfg.session_timeout_s,
            broker_heartbeat_interval=min(3.0, cfg.session_timeout_s / 3),
            producer_acks=-1,
            stream_buffer_maxsize=max(4096, 2 * cfg.batch_max),
            table_cleanup_interval=3600.0,
        )
        raw: dict[str, Any] = {"key_type": bytes, "value_type": bytes, "key_serializer": "raw",
                               "value_serializer": "raw"}
        self.inputs = self.app.topic(cfg.impressions_topic, cfg.feedback_topic, partitions=cfg.partitions, **raw)
        self.samples_out = self.app.topic(cfg.samples_topic, partitions=cfg.partitions, **raw)
        self.dead_out = self.app.topic(cfg.deadletter_topic, partitions=cfg.partitions, **raw)
        self.state_out = self.app.topic(cfg.user_state_topic, partitions=cfg.partitions, compacting=True, **raw)
        # user_id -> JSON blob {"p": partition, "m": UserMachine.to_json()}; "p<N>" -> partition meta
        schema: Any = faust.Schema(key_type=str, value_type=bytes, key_serializer="raw", value_serializer="raw")
        self.users = self.app.Table("stream-users", partitions=cfg.partitions, schema=schema)
        self.meta = self.app.Table("stream-meta", partitions=cfg.partitions, schema=schema)
        # "<p>:<seq>:<part>" -> the accepted events of one processed batch: JSON list of kind letter + event JSON
        self.log = self.app.Table("stream-log", partitions=cfg.partitions, schema=schema)
        self._seq: dict[int, int] = {}
        # input partition -> {input topic: last offset whose record is in the partition's state (logged/snapshotted)}
        self._offsets: dict[int, dict[str, int]] = {}
        self._snap_dirty: dict[int, set[str]] = {}
        self._last_snap = time.time()
        self.cores: dict[int, StreamCore] = {}
        self._loaded = False
        self._declared = False
        self._counts: dict[int, CoreCounters] = {}
        self.agent = self.app.agent(self.inputs, name="join", concurrency=1)(self._agent)
        if cfg.batch_drain:  # the agent subscribes the inputs; whole fetches bypass its per-event stream
            self.app.drain_batches(self.inputs.topics, self._drained, cfg.batch_max, cfg.batch_within_s)
        self._busy = asyncio.Lock()  # one batch at a time; a revocation waits for the batch in flight

        @self.app.on_partitions_revoked.connect  # type: ignore[arg-type]
        async def _on_revoked(sender: Any, revoked: Any, **kwargs: Any) -> None:
            # Drop in-memory cores; the next batch reloads them from the (recovered) tables.
            async with self._busy:
                self._reset()

    def topic_specs(self) -> list[TopicSpec]:
        """Every topic the worker reads or writes, all with ``partitions`` partitions (see :func:`ensure_topics`):
        the inputs, the outputs (``user_state`` compacted) and the tables' changelogs (compacted, as Faust makes
        them)."""
        n = self.cfg.partitions
        compact = {"cleanup.policy": "compact"}
        specs = [TopicSpec(t, n) for t in (self.cfg.impressions_topic, self.cfg.feedback_topic)]
        specs += [TopicSpec(self.samples_out.get_topic_name(), n, strict=False),
                  TopicSpec(self.dead_out.get_topic_name(), n, strict=False),
                  TopicSpec(self.state_out.get_topic_name(), n, compact, strict=False)]
        specs += [TopicSpec(t.changelog_topic.get_topic_name(), n, compact) for t in (self.users, self.meta, self.log)]
        return specs

    def _reset(self) -> None:
        self.cores.clear()
        self._counts.clear()
        self._seq.clear()
        self._offsets.clear()
        self._snap_dirty.clear()
        self._loaded = False

    # ------------------------------------------------------------------ loop
    async def _agent(self, stream: Any) -> Any:
        await self._declare_outputs()
        async for events in stream.take_events(self.cfg.batch_max, within=self.cfg.batch_within_s):
            await self.process_batch([ev.message for ev in events])
            yield len(events)

    async def _declare_outputs(self) -> None:
        if not self._declared:
            for topic in (self.samples_out, self.dead_out, self.state_out):
                await topic.maybe_declare()
            self._declared = True

    async def _drained(self, messages: Sequence[Any]) -> None:
        """The batch-drain path (:mod:`streaming.batch_drain`): one fetch of input records, in chunks of batch_max."""
        await self._declare_outputs()
        step = self.cfg.batch_max
        for i in range(0, len(messages), step):
            await self.process_batch(messages[i:i + step])

    def _load(self) -> None:
        """Rebuild the cores from the recovered tables: snapshot, then replay the logged batches after it.

        Outputs of the replay are dropped: they were durable before their batch was logged.
        """
        by_p: dict[int, list[dict[str, Any]]] = defaultdict(list)
        for _, blob in list(self.users.data.items()):
            d = _json(blob)
            by_p[int(d["p"])].append(d["m"])
        metas = {int(str(k)[1:]): _json(v) for k, v in list(self.meta.data.items())}
        logs: dict[int, dict[int, list[tuple[int, Any]]]] = defaultdict(lambda: defaultdict(list))
        for k, v in list(self.log.data.items()):
            if v is None:
                continue
            p, seq, part = (int(x) for x in str(k).split(":"))
            logs[p][seq].append((part, v))
        n_replayed = 0
        owned = self._owned_partitions()
        for p in set(by_p) | set(metas) | set(logs):
            if owned is not None and p not in owned:
                # a partition another worker owns now (its rows stay in this process's table memory): loading
                # it would snapshot stale state over the owner's in the changelog
                continue
            core = self.cores[p] = StreamCore(self.core_cfg)
            meta = metas.get(p)
            core.restore(None if meta is None else meta["core"], by_p.get(p, []))
            snap_seq = -1 if meta is None else int(meta["snap_seq"])
            offsets = self._offsets[p] = {} if meta is None else {str(t): int(o) for t, o in
                                                                 meta.get("offsets", {}).items()}
            seqs = sorted(q for q in logs[p] if q > snap_seq)
            for q in seqs:
                evs: list[Event] = []
                for _, v in sorted(logs[p][q], key=lambda x: x[0]):
                    batch_evs, batch_offsets = _decode_log(v)
                    evs += batch_evs
                    for t, o in batch_offsets.items():
                        offsets[t] = max(o, offsets.get(t, -1))
                core.on_events(evs)
                n_replayed += len(evs)
            self._seq[p] = max([snap_seq, *logs[p]]) + 1
            self._snap_dirty[p] = core.take_dirty()
            core.take_behavior_users()
            self._counts[p] = core.counters
        self._loaded = True
        log.info("loaded %d users on %d partitions, replayed %d logged events", sum(map(len, by_p.values())),
                 len(self.cores), n_replayed)

    def _owned_partitions(self) -> set[int] | None:
        """Input partitions assigned to this worker now; None when unknown (no consumer, e.g. ``test_context``)."""
        try:
            tps = self.app.consumer.assignment()
        except Exception:  # no consumer yet
            return None
        owned = {tp.partition for tp in tps if tp.topic in self.inputs.topics}
        return owned or None

    def _recreated(self, topic: str, partition: int, last: int) -> bool:
        """True if the topic's partition now ends at or below ``last`` (deleted and created again: its offsets
        restarted), so ``last`` is forgotten; False when the high watermark is unknown (no consumer)."""
        try:
            hw = self.app.consumer.highwater(TP(topic, partition))
        except Exception:  # no consumer (test_context) / partition not assigned
            return False
        if hw is None or hw > last:
            return False
        log.warning("%s[%d] ends at offset %d, below the %d already processed: the topic was recreated; "
                    "processing its records as new", topic, partition, hw, last)
        self._offsets[partition].pop(topic, None)
        return True

    async def _send(self, topic: str, key: bytes | None, value: bytes | None,
                    partition: int | None = None) -> Awaitable[Any]:
        """Hand one record to the producer; returns the future of its broker ack (awaited once per batch).

        Goes straight to the transport producer rather than Faust's one-message-at-a-time send buffer: the
        record is appended to the producer's batch now, so a batch's records leave in a few produce requests.
        Table writes keep Faust's ``send_changelog`` (its recovery relies on its own changelog bookkeeping).
        """
        return await self.app.producer.send(topic, key, value, partition, None, None)

    async def process_batch(self, messages: Sequence[Any]) -> None:
        """Process one batch of input records (Faust ``Message``s or aiokafka ``ConsumerRecord``s: topic, partition,
        offset, key, value)."""
        async with self._busy:
            await self._process(messages)

    async def _process(self, messages: Sequence[Any]) -> None:
        """One batch, steps 1–6 of the module doc; each step's records are durable before the next starts."""
        t0 = time.perf_counter()
        if not self._loaded:
            self._load()
        work = _BatchWork()
        await self._decode(messages, work)
        outputs = self._run_cores(work)
        await self._produce(outputs, work)
        await self._log_batch(work)
        now = time.time()
        if now - self._last_snap >= self.cfg.snapshot_every_s:
            self._last_snap = now
            await self._snapshot()
        self._observe_batch(messages, now, t0)

    async def _decode(self, messages: Sequence[Any], work: _BatchWork) -> None:
        """Step 1: skip redelivered records, parse the rest into ``work.events`` by partition, send bad input to
        ``deadletter`` (its acks join ``work.futs``); counts events per (kind, scenario) and redeliveries."""
        m = self.metrics
        send = self._send
        futs, by_p, raw_p, fresh, dead_counts = work.futs, work.events, work.lines, work.fresh, work.dead_counts
        imp_topic = self.cfg.impressions_topic
        dead_topic = self.dead_out.get_topic_name()
        counts: dict[tuple[str, str], int] = defaultdict(int)
        done = self._offsets
        redelivered = jumps = 0
        # nanoGPT style: this loop runs once per input event
        for msg in messages:
            p_done = done.get(msg.partition)
            if p_done is None:
                p_done = done[msg.partition] = {}
            last = p_done.get(msg.topic, -1)
            if msg.offset <= last and not self._recreated(msg.topic, msg.partition, last):
                redelivered += 1  # already in the partition's state: Kafka delivered it again
                continue
            if 0 <= last < msg.offset - 1:
                jumps += 1
                log.warning("%s[%d]: offset %d follows %d, the last one processed: records in between were never "
                            "processed", msg.topic, msg.partition, msg.offset, last)
            p_done[msg.topic] = msg.offset
            fresh.add(msg.partition)
            kind: EventKind = "impression" if msg.topic == imp_topic else "feedback"
            value = msg.value
            try:
                if value is None:
                    raise EventError("null_value", "message has no value")
                e = parse_event(value, kind)
            except EventError as err:
                dead_counts[err.reason] += 1
                futs.append(await send(dead_topic, msg.key, _dead_raw(err.reason, err.detail, msg.topic,
                                                                      msg.partition, msg.offset, msg.key, value)))
                continue
            counts[(kind, e.scenario)] += 1
            by_p[msg.partition].append(e)
            raw_p[msg.partition].append(("i" if kind == "impression" else "f") + value.decode())
        for (typ, scenario), n in counts.items():
            m.event_counter(typ, scenario).inc(n)
        if redelivered:
            m.redelivered.inc(redelivered)
        if jumps:
            m.offset_jumps.inc(jumps)

    def _run_cores(self, work: _BatchWork) -> list[tuple[int, Output]]:
        """Step 2: each partition's events through its core → (partition, output); a core is made for every
        partition with new records, even all bad ones, so its offsets reach the snapshot meta."""
        for p in work.fresh:
            if p not in self.cores:
                core = self.cores[p] = StreamCore(self.core_cfg)
                self._counts[p] = core.counters
        outputs: list[tuple[int, Output]] = []
        for p, evs in work.events.items():
            outputs += [(p, o) for o in self.cores[p].on_events(evs)]
        return outputs

    async def _produce(self, outputs: list[tuple[int, Output]], work: _BatchWork) -> None:
        """Step 3: send samples, corrections/dead letters and the changed users' states without waiting per
        record, then wait once for every ack of the batch (step 1's dead letters included)."""
        m = self.metrics
        send = self._send
        futs, dead_counts = work.futs, work.dead_counts
        samples_topic = self.samples_out.get_topic_name()
        dead_topic = self.dead_out.get_topic_name()
        state_users: dict[int, set[str]] = defaultdict(set)
        n_samples = 0
        for p, o in outputs:
            if isinstance(o, Sample):
                futs.append(await send(samples_topic, o.user_id.encode(), o.encode()))
                n_samples += 1
                m.targets_per_sample.observe(len(o.targets))
                state_users[p].add(o.user_id)
            else:
                assert isinstance(o, LateLabel | DeadLetter)
                dead_counts[o.reason] += 1
                futs.append(await send(dead_topic, o.user_id.encode(), dumps(o.to_json())))
        if n_samples:
            m.samples.inc(n_samples)
        for reason, n in dead_counts.items():
            m.deadletter_counter(reason).inc(n)
        if self.cfg.publish_user_state:
            state_topic = self.state_out.get_topic_name()
            n_states = 0
            for p, core in self.cores.items():
                for uid in state_users.get(p, set()) | core.take_behavior_users():  # once per user per batch
                    st = core.encode_user_state(uid)
                    if st is not None:
                        futs.append(await send(state_topic, uid.encode(), st))
                        n_states += 1
            if n_states:
                m.user_states.inc(n_states)
        if futs:
            await asyncio.gather(*futs)

    async def _log_batch(self, work: _BatchWork) -> None:
        """Step 4 (after the outputs are durable): append each fresh partition's accepted events and last offsets
        to ``stream-log`` (a partition whose new records were all bad input logs its offsets alone), mark the
        cores' changed users for the next snapshot, and wait for the changelog acks."""
        futs: list[Awaitable[Any]] = []
        for p in work.fresh:
            seq = self._seq.get(p, 0)
            self._seq[p] = seq + 1
            for part, chunk in enumerate(_chunks(work.lines.get(p, []), self.cfg.log_chunk_bytes)):
                lkey = f"{p}:{seq}:{part}"
                blob = dumps({"o": self._offsets[p], "e": chunk})  # JSON: Faust's recovery decodes it
                self.log.data[lkey] = blob
                futs.append(self.log.send_changelog(p, lkey, blob))
        for p, core in self.cores.items():
            self._snap_dirty.setdefault(p, set()).update(core.take_dirty())
        if futs:
            await asyncio.gather(*futs)

    def _observe_batch(self, messages: Sequence[Any], now: float, t0: float) -> None:
        """Metrics after a batch: core counters, watermark lag (at ``now``), consumer lag, batch size and time."""
        m = self.metrics
        for p, core in self.cores.items():
            after = core.counters
            m.observe_core(self._counts[p], after)
            self._counts[p] = after
            if math.isfinite(core.watermark):
                m.watermark_lag.labels(partition=str(p)).set(now - core.watermark)
        self._observe_lag(messages)
        m.batch_events.observe(len(messages))
        m.batch_seconds.observe(time.perf_counter() - t0)

    def _observe_lag(self, messages: Sequence[Any]) -> None:
        """Consumer lag per input partition: high watermark − (last processed offset + 1); never raises."""
        last: dict[TP, int] = {}
        for msg in messages:
            last[TP(msg.topic, msg.partition)] = msg.offset
        for tp, offset in last.items():
            try:
                hw = self.app.consumer.highwater(tp)
            except Exception:  # consumer not ready / partition revoked: skip this reading
                continue
            if hw is not None:
                self.metrics.consumer_lag.labels(topic=tp.topic, partition=str(tp.partition)).set(
                    max(0, int(hw) - offset - 1))

    async def _snapshot(self) -> None:
        futs: list[Awaitable[Any]] = []
        for p, core in self.cores.items():
            for uid in self._snap_dirty.pop(p, set()):
                d = core.user_to_json(uid)
                if d is None:
                    continue
                blob = dumps({"p": p, "m": d})
                self.users.data[uid] = blob
                futs.append(self.users.send_changelog(p, uid, blob))
        if futs:
            await asyncio.gather(*futs)
        futs = []
        for p, core in self.cores.items():
            snap_seq = self._seq.get(p, 0) - 1
            mb = dumps({"core": core.meta_to_json(), "snap_seq": snap_seq, "offsets": self._offsets.get(p, {})})
            self.meta.data[f"p{p}"] = mb
            futs.append(self.meta.send_changelog(p, f"p{p}", mb))
        if futs:
            await asyncio.gather(*futs)
        futs = []
        for key in [k for k in self.log.data if int(str(k).split(":")[1]) < self._seq.get(int(str(k).split(":")[0]), 0)]:
            p = int(str(key).split(":")[0])
            del self.log.data[key]
            futs.append(self.log.send_changelog(p, key, None))
        if futs:
            await asyncio.gather(*futs)
        self.metrics.snapshots.inc()


def _chunks(lines: list[str], max_bytes: int) -> list[list[str]]:
    out: list[list[str]] = [[]]
    size = 0
    for line in lines:
        if out[-1] and size + len(line) > max_bytes:
            out.append([])
            size = 0
        out[-1].append(line)
        size += len(line) + 1
    return out


def _decode_log(v: Any) -> tuple[list[Event], dict[str, int]]:
    """A ``stream-log`` record → (events, {input topic: last processed offset}).

    Format ``{"o": offsets, "e": ["i{...}" | "f{...}", ...]}``; a bare list of lines (no offsets) is read too.
    """
    d = _json(v)
    lines, offsets = (d, {}) if isinstance(d, list) else (d["e"], d["o"])
    evs = [parse_event(line[1:], "impression" if line[0] == "i" else "feedback") for line in lines]
    return evs, {str(t): int(o) for t, o in offsets.items()}
