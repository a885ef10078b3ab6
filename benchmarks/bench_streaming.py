"""Streaming worker throughput vs a raw aiokafka consume loop over the same topics, in the same run.

``.venv/bin/python -m benchmarks.bench_streaming [--events 200000] [--bootstrap HOST:PORT]``

1. produce N pre-encoded events (impressions + ~15% feedback, 4 scenarios, many users) to two P-partition topics;
2. raw: one AIOKafkaConsumer (getmany) reads both topics to the end, no processing → events/s;
3. core: the pure :class:`streaming.core.StreamCore` on the same events in memory (parse + join) → events/s;
4. Faust ceiling: a Faust agent with the worker's take_events batching over the same topics, doing nothing;
5. worker, agent delivery: ``python -m streaming worker --agent-delivery`` (events reach process_batch through the
   Faust agent's per-event stream);
6. worker: ``python -m streaming worker`` (one process, Faust, tables, outputs; whole fetches handed to the worker
   by :mod:`streaming.batch_drain`) consumes the same topics. Worker rates are taken from its Prometheus counters
   between the first processed batch and the last (start-up excluded); the mean batch size from its histogram.

Prints a table and writes ``reports/bench/streaming.json``. Without ``--bootstrap`` a local broker is started.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import random
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
OUT = REPO / "reports" / "bench" / "streaming.json"


def make_events(n: int, users: int, seed: int = 0) -> list[tuple[str, bytes, bytes]]:
    """(kind, key, value) in event-time order: impressions and feedback ~1.5 s of event time apart per event."""
    from streaming.events import Feedback, Impression, encode_event

    rng = random.Random(seed)
    out: list[tuple[str, bytes, bytes]] = []
    ts = 1.7e9
    k = 0
    pending: list[tuple[float, Feedback]] = []
    while len(out) < n:
        ts += rng.expovariate(1 / 0.05)
        while pending and pending[0][0] <= ts:
            _, fb = pending.pop(0)
            out.append(("feedback", fb.user_id.encode(), encode_event(fb)))
        u = f"u{rng.randrange(users)}"
        it = rng.randrange(5000)
        imp = Impression(f"i{k}", ts, u, f"s{rng.randrange(4)}", f"r{k // 8}", f"it{it}", position=k % 8,
                         item={"category": f"c{it % 50}", "brand": f"b{it % 300}"}, context={"hour": "3"},
                         user={"age": f"a{hash(u) % 5}"}, dense={"price": float(it % 97)})
        out.append(("impression", u.encode(), encode_event(imp)))
        if rng.random() < 0.15:
            fts = ts + rng.uniform(1, 600)
            pending.append((fts, Feedback(f"f{k}", fts, u, imp.scenario, imp.request_id, imp.item_id,
                                          rng.choice(("click", "click", "order")))))
            pending.sort(key=lambda x: x[0])
        k += 1
    return out[:n]


async def produce(bootstrap: str, topics: dict[str, str], events: list[tuple[str, bytes, bytes]]) -> None:
    from aiokafka import AIOKafkaProducer

    p = AIOKafkaProducer(bootstrap_servers=bootstrap, linger_ms=20, max_batch_size=512 * 1024)
    await p.start()
    try:
        futs = [await p.send(topics[kind], key=key, value=value) for kind, key, value in events]
        await asyncio.gather(*futs)
    finally:
        await p.stop()


async def raw_consume(bootstrap: str, topics: list[str], n: int) -> float:
    """Seconds for one AIOKafkaConsumer to read n records from the start (getmany, no processing)."""
    from aiokafka import AIOKafkaConsumer

    c = AIOKafkaConsumer(*topics, bootstrap_servers=bootstrap, auto_offset_reset="earliest",
                         enable_auto_commit=False, group_id=None)
    await c.start()
    try:
        got = 0
        t0 = None
        while got < n:
            batch = await c.getmany(timeout_ms=1000, max_records=10000)
            for recs in batch.values():
                if t0 is None:
                    t0 = time.perf_counter()
                got += len(recs)
        assert t0 is not None
        return time.perf_counter() - t0
    finally:
        await c.stop()


def core_rate(events: list[tuple[str, bytes, bytes]]) -> tuple[float, int]:
    import gc

    from streaming.core import StreamCore
    from streaming.events import parse_event

    core = StreamCore()
    old = gc.get_threshold()
    gc.set_threshold(50_000, 20, 100)  # as the worker does (python -m streaming worker --gc-gen0)
    t0 = time.perf_counter()
    n_samples = 0
    batch = []
    for kind, _, value in events:
        batch.append(parse_event(value, kind))  # type: ignore[arg-type]
        if len(batch) == 2000:
            n_samples += len(core.on_events(batch))
            batch = []
    n_samples += len(core.on_events(batch)) + len(core.flush_all())
    rate = len(events) / (time.perf_counter() - t0)
    gc.set_threshold(*old)
    return rate, n_samples


def scrape(port: int) -> dict[str, float]:
    text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5).read().decode()
    out: dict[str, float] = {}
    for line in text.splitlines():
        if line.startswith(("streamrec_stream_events_total", "streamrec_stream_deadletter_total",
                            "streamrec_stream_batch_events_sum", "streamrec_stream_batch_events_count")):
            name = line.split("{")[0].split(" ")[0]
            out[name] = out.get(name, 0.0) + float(line.rsplit(" ", 1)[1])
    return out


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def worker_rate(bootstrap: str, prefix: str, parts: int, n: int, batch_max: int, tmp: Path,
                profile: Path | None = None, app_id: str | None = None, repo: Path = REPO,
                agent_delivery: bool = False) -> dict[str, Any]:
    port = free_port()
    prof = ["-m", "cProfile", "-o", str(profile)] if profile is not None else []
    cmd = [sys.executable, *prof, "-m", "streaming", "worker", "--bootstrap", bootstrap,
           "--app-id", app_id or f"{prefix}app",
           "--impressions-topic", f"{prefix}impressions", "--feedback-topic", f"{prefix}feedback",
           "--samples-topic", f"{prefix}samples", "--deadletter-topic", f"{prefix}deadletter",
           "--user-state-topic", f"{prefix}user_state", "--partitions", str(parts), "--data-dir", str(tmp / "w"),
           "--metrics-port", str(port), "--batch-max", str(batch_max), "--log-level", "warning",
           *(["--agent-delivery"] if agent_delivery else [])]
    log = (tmp / "worker.log").open("wb")
    proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, cwd=repo, start_new_session=True)
    try:
        first: tuple[float, float] | None = None
        last = (0.0, 0.0)
        m: dict[str, float] = {}
        deadline = time.time() + 600
        while time.time() < deadline:
            time.sleep(0.2)
            if proc.poll() is not None:
                raise RuntimeError(f"worker exited {proc.returncode}: {(tmp / 'worker.log').read_text()[-2000:]}")
            try:
                m = scrape(port)
            except OSError:
                continue
            done = m.get("streamrec_stream_events_total", 0.0) + m.get("streamrec_stream_deadletter_total", 0.0)
            now = time.perf_counter()
            if done > 0 and first is None:
                first = (now, done)
            last = (now, done)
            if done >= n:
                break
        assert first is not None, "worker processed nothing"
        dt = last[0] - first[0]
        n_batches = m.get("streamrec_stream_batch_events_count", 0.0)
        return {"events": last[1], "seconds": dt, "events_per_s": (last[1] - first[1]) / dt if dt > 0 else 0.0,
                "mean_batch_events": m.get("streamrec_stream_batch_events_sum", 0.0) / n_batches if n_batches else 0.0}
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(20)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)


_NOOP_AGENT = """
import sys, time, faust
bootstrap, app_id, imp, fb, parts, batch_max, n, out = sys.argv[1:9]
app = faust.App(app_id, broker="kafka://" + bootstrap, store="memory://", web_enabled=False,
                topic_partitions=int(parts), stream_buffer_maxsize=max(4096, 2 * int(batch_max)))
topic = app.topic(imp, fb, key_type=bytes, value_type=bytes, key_serializer="raw", value_serializer="raw")
seen = [0, 0.0]

@app.agent(topic, concurrency=1)
async def noop(stream):
    async for events in stream.take_events(int(batch_max), within=0.2):
        now = time.perf_counter()
        if not seen[0]:
            seen[1] = now
        seen[0] += len(events)
        with open(out, "w") as f:
            f.write(f"{seen[0]} {now - seen[1]}")
        yield len(events)

sys.argv = [sys.argv[0], "worker", "-l", "warn"]
app.main()
"""


def faust_noop_rate(bootstrap: str, prefix: str, parts: int, n: int, batch_max: int, tmp: Path,
                    app_id: str | None = None) -> dict[str, Any]:
    """Faust's own delivery ceiling: the worker's topics, agent and take_events batching, no processing at all."""
    app_id = app_id or f"{prefix}noop"
    out = tmp / f"{app_id}.txt"
    cmd = [sys.executable, "-c", _NOOP_AGENT, bootstrap, app_id, f"{prefix}impressions", f"{prefix}feedback",
           str(parts), str(batch_max), str(n), str(out)]
    log = (tmp / "noop.log").open("wb")
    proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, cwd=tmp, start_new_session=True)
    try:
        deadline = time.time() + 300
        got, secs = 0, 0.0
        while time.time() < deadline and got < n:
            time.sleep(0.2)
            if proc.poll() is not None:
                raise RuntimeError(f"noop agent exited {proc.returncode}: {(tmp / 'noop.log').read_text()[-2000:]}")
            try:
                a, b = out.read_text().split()
                got, secs = int(a), float(b)
            except (OSError, ValueError):
                continue
        return {"events": got, "seconds": secs, "events_per_s": got / secs if secs > 0 else 0.0}
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(20)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m benchmarks.bench_streaming", description=__doc__.split("\n")[0])
    ap.add_argument("--events", type=int, default=200_000, help="input events to produce")
    ap.add_argument("--users", type=int, default=20_000, help="distinct users")
    ap.add_argument("--partitions", type=int, default=4, help="partitions of the input topics")
    ap.add_argument("--batch-max", type=int, default=5000, help="worker --batch-max")
    ap.add_argument("--rounds", type=int, default=1, help="alternating rounds of the Faust/worker runs (medians)")
    ap.add_argument("--bootstrap", default=None, help="use this broker instead of starting one")
    ap.add_argument("--out", type=Path, default=OUT, help="where to write the JSON report")
    ap.add_argument("--profile-worker", type=Path, default=None,
                    help="run the worker under cProfile and write its stats here (slows it down)")
    args = ap.parse_args(argv)

    sys.path.insert(0, str(REPO))
    from kafka.admin import KafkaAdminClient, NewTopic

    from deploy.kafka import BrokerConfig, KafkaBroker

    tmp = Path(tempfile.mkdtemp(prefix="bench-streaming-"))
    broker = None
    bootstrap = args.bootstrap
    if bootstrap is None:
        broker = KafkaBroker(BrokerConfig(state_dir=tmp / "kafka", port=0, heap="512m"))
        broker.start()
        bootstrap = broker.bootstrap
    try:
        prefix = f"bench{int(time.time())}-"
        topics = {"impression": f"{prefix}impressions", "feedback": f"{prefix}feedback"}
        admin = KafkaAdminClient(bootstrap_servers=bootstrap)
        admin.create_topics([NewTopic(t, args.partitions, 1) for t in topics.values()])
        admin.close()
        events = make_events(args.events, args.users)
        t0 = time.perf_counter()
        asyncio.run(produce(bootstrap, topics, events))
        produce_s = time.perf_counter() - t0
        raw_s = asyncio.run(raw_consume(bootstrap, list(topics.values()), len(events)))
        core_eps, n_out = core_rate(events)
        # Alternating rounds, each with a fresh consumer group reading the same backlog from the start; medians.
        noops, agents, workers = [], [], []
        for r in range(args.rounds):
            noops.append(faust_noop_rate(bootstrap, prefix, args.partitions, len(events), args.batch_max, tmp,
                                         app_id=f"{prefix}noop{r}"))
            agents.append(worker_rate(bootstrap, prefix, args.partitions, len(events), args.batch_max, tmp,
                                      app_id=f"{prefix}agent{r}", agent_delivery=True))
            workers.append(worker_rate(bootstrap, prefix, args.partitions, len(events), args.batch_max, tmp,
                                       args.profile_worker if r == 0 else None, app_id=f"{prefix}app{r}"))

        def med(runs: list[dict[str, Any]]) -> dict[str, Any]:
            return sorted(runs, key=lambda x: x["events_per_s"])[len(runs) // 2]

        noop, agent, w = med(noops), med(agents), med(workers)
        raw_eps = len(events) / raw_s
        result = {
            "machine": f"{platform.node()} {platform.processor() or platform.machine()}, {os.cpu_count()} cores, no GPU",
            "command": "python -m benchmarks.bench_streaming " + " ".join(argv or sys.argv[1:]),
            "events": len(events), "users": args.users, "partitions": args.partitions, "batch_max": args.batch_max,
            "produce_events_per_s": len(events) / produce_s,
            "raw_aiokafka_events_per_s": raw_eps,
            "core_only_events_per_s": core_eps, "core_outputs": n_out,
            "faust_noop_events_per_s": noop["events_per_s"],
            "worker_agent_delivery_events_per_s": agent["events_per_s"],
            "worker_agent_delivery_mean_batch": agent["mean_batch_events"],
            "worker_events_per_s": w["events_per_s"], "worker_seconds": w["seconds"],
            "worker_mean_batch": w["mean_batch_events"], "rounds": args.rounds,
            "all_rounds_events_per_s": {"faust_noop": [x["events_per_s"] for x in noops],
                                        "worker_agent_delivery": [x["events_per_s"] for x in agents],
                                        "worker": [x["events_per_s"] for x in workers]},
            "worker_vs_raw": w["events_per_s"] / raw_eps,
            "targets": {"worker_events_per_s": 25_000, "worker_vs_raw": 0.5},
        }
        print(f"{'measure':<32}{'events/s':>14}")
        for k in ("produce_events_per_s", "raw_aiokafka_events_per_s", "core_only_events_per_s",
                  "faust_noop_events_per_s", "worker_agent_delivery_events_per_s", "worker_events_per_s"):
            print(f"{k:<32}{result[k]:>14,.0f}")
        print(f"{'worker / raw':<32}{result['worker_vs_raw']:>14.3f}")
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(result, indent=2) + "\n")
        print(f"wrote {args.out}")
    finally:
        if broker is not None:
            broker.stop()
        shutil.rmtree(tmp, ignore_errors=True)  # the broker's logs and Faust data: GBs per run
    return 0


if __name__ == "__main__":
    sys.exit(main())
