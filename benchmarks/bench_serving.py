"""Serving benchmark: user-level scoring latency/throughput on one CPU core, the user-level vs per-candidate ratio,
and (when the whole pipeline exists) freshness from a produced feedback event to a served model that includes it.

Workload: one user with a 256-behavior history (and cross counters) in the user-state replica, 200 candidates per
request, the default :class:`FeatureSpec` and :class:`RankerConfig` (what ``python -m trainer`` ships).

1. **core**: :func:`serving.scoring.score_request` in this process (pinned to one core, ``torch.set_num_threads(1)``):
   p50/p99, split into sample build + collate vs model time, interleaved request by request with the path as it was
   before the CPU fast paths (``collate_reference`` + ``Kernel.REFERENCE``, see :func:`score_request_before`), so
   the before/after ratio is measured side by side under the same machine load (``before_*`` keys). ``core_*`` is
   the cold path (``user_cache=None``: the user is encoded on every request); ``*_warm_user_cache`` a repeat
   request served from :class:`serving.scoring.UserCacheLRU` (same scores, asserted). HTTP runs the server's
   default (the LRU on), so its repeated identical requests are warm.
2. **HTTP**: ``python -m serving`` as a subprocess pinned to one core (``--torch-threads 1 --scoring-workers 1``) on a
   real local broker (the user's state arrives through the compacted ``user_state`` topic); the client (pinned to
   another core when there is one) sends requests one at a time (latency) and then 4 at a time (requests/s).
3. **ratio**: the same 200 candidates scored user-level (encode the user once, one pass) vs each candidate as its own
   request (200 × encode + score), side by side in one run.
4. **freshness**: a steady live stream of impressions and feedback (ts = now) through the streaming worker, the
   trainer and serving (deploy.pipeline.Pipeline) with a short attribution window; for each sampled feedback event,
   the wall seconds from produced to the first served model whose snapshot's ``max_event_ts`` covers it.

    .venv/bin/python -m benchmarks.bench_serving                    # everything
    .venv/bin/python -m benchmarks.bench_serving --no-freshness     # skip the pipeline part

Writes reports/bench/serving.json and prints a table.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
OUT = REPO / "reports" / "bench" / "serving.json"


def pct(xs: list[float], q: float) -> float:
    s = sorted(xs)
    return s[min(len(s) - 1, int(q * len(s)))]


def summary_ms(xs: list[float]) -> dict[str, float]:
    return {"p50_ms": 1e3 * statistics.median(xs), "p99_ms": 1e3 * pct(xs, 0.99), "mean_ms": 1e3 * statistics.fmean(xs),
            "min_ms": 1e3 * min(xs), "n": len(xs)}


def cores() -> list[int]:
    return sorted(os.sched_getaffinity(0))


def make_state(user_id: str, n: int, now: float) -> Any:
    from streaming.cross import CrossCounters
    from streaming.sample import Behavior
    from streaming.user_state import UserState

    counters = CrossCounters()
    behaviors = []
    for i in range(n):
        ts = now - (n - i) * 60.0
        scen, cat = ("home", "search", "cart", "detail")[i % 4], f"c{i % 20}"
        behaviors.append(Behavior(f"item{i * 7 % 5000}", scen, ("click", "like", "order")[i % 3], ts,
                                  {"category": cat, "brand": f"b{i % 50}"}))
        counters.add("imp", scen, cat, ts - 5.0)
        counters.add("click", scen, cat, ts)
    return UserState(user_id, user={"age": "25-34", "gender": "f", "city": "c7"}, behaviors=behaviors,
                     counters=counters, history_len=n, updated_ts=now)


def candidates_json(n: int) -> list[dict[str, Any]]:
    return [{"item_id": f"cand{i}", "item": {"category": f"c{i % 20}", "brand": f"b{i % 50}"},
             "context": {"slot": str(i % 10)}, "dense": {"price": 10.0 + i, "ctr_7d": 0.01 * (i % 7)}}
            for i in range(n)]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


# -- 1 + 3: in-process core and the ratio ------------------------------------------------------------------------
def bench_core(snapshot: Path, history: int, n_cands: int, iters: int) -> dict[str, Any]:
    import torch
    from prometheus_client import CollectorRegistry

    from model.batch import collate
    from serving.hotswap import ModelHolder
    from serving.metrics import ServingMetrics
    from serving.scoring import score_request
    from streaming.user_state import Candidate, build_request_sample

    holder = ModelHolder(ServingMetrics(CollectorRegistry()))
    assert holder.load_one(str(snapshot)), "benchmark snapshot did not verify"
    served = holder.current
    assert served is not None
    now = time.time()
    state = make_state("bench-user", history, now)
    cands = [Candidate(c["item_id"], c["item"], c["context"], c["dense"]) for c in candidates_json(n_cands)]
    ctx = {"hour": "20"}
    for _ in range(10):
        score_request(served, state, "bench-user", "home", cands, ctx, now)
        score_request(served, state, "bench-user", "home", cands, ctx, now, user_cache=None)
        score_request_before(served, state, "bench-user", "home", cands, ctx, now)
    # Interleaved A/B in one process: the current path vs the pre-optimisation one (collate_reference + the
    # reference attention / Group LayerNorm / merged-keys target layers), same inputs, alternating requests.
    # "cold" = no user cache (every request encodes the user: a user's first request, or a changed state);
    # "warm" = the serving default, a repeat request whose user encoding is in the LRU (only candidates are scored).
    total, build, model = [], [], []
    w_total, w_model = [], []
    b_total, b_build, b_model = [], [], []
    max_diff = 0.0
    for _ in range(iters):
        t0 = time.perf_counter()
        r = score_request(served, state, "bench-user", "home", cands, ctx, now, user_cache=None)
        total.append(time.perf_counter() - t0)
        build.append(r.build_s)
        model.append(r.model_s)
        t0 = time.perf_counter()
        rw = score_request(served, state, "bench-user", "home", cands, ctx, now)
        w_total.append(time.perf_counter() - t0)
        w_model.append(rw.model_s)
        assert rw.scores == r.scores, "the user cache changed the scores"
        t0 = time.perf_counter()
        rb = score_request_before(served, state, "bench-user", "home", cands, ctx, now)
        b_total.append(time.perf_counter() - t0)
        b_build.append(rb.build_s)
        b_model.append(rb.model_s)
        max_diff = max(max_diff, *(abs(a - b) for t in r.scores for a, b in zip(r.scores[t], rb.scores[t], strict=True)))

    # Ratio, side by side: user-level (one request, all candidates) vs one request per candidate.
    user_level, per_cand, full_fwd = [], [], []
    for _ in range(5):
        t0 = time.perf_counter()
        score_request(served, state, "bench-user", "home", cands, ctx, now, user_cache=None)
        user_level.append(time.perf_counter() - t0)
        t0 = time.perf_counter()
        for c in cands:
            score_request(served, state, "bench-user", "home", [c], ctx, now, user_cache=None)
        per_cand.append(time.perf_counter() - t0)
        t0 = time.perf_counter()
        with torch.inference_mode():
            served.model(collate([build_request_sample(state, "bench-user", "home", cands, ctx, now)], served.spec))
        full_fwd.append(time.perf_counter() - t0)
    ul, pc, ff = statistics.median(user_level), statistics.median(per_cand), statistics.median(full_fwd)
    return {
        "core_latency": summary_ms(total), "core_build_collate": summary_ms(build), "core_model": summary_ms(model),
        "core_latency_warm_user_cache": summary_ms(w_total), "core_model_warm_user_cache": summary_ms(w_model),
        "before_core_latency": summary_ms(b_total), "before_core_build_collate": summary_ms(b_build),
        "before_core_model": summary_ms(b_model), "before_after_max_abs_score_diff": max_diff,
        "ratio": {"user_level_ms": 1e3 * ul, "per_candidate_total_ms": 1e3 * pc,
                  "full_forward_no_cache_ms": 1e3 * ff, "speedup_user_level_vs_per_candidate": pc / ul,
                  "target": 10.0},
    }


def score_request_before(served: Any, state: Any, user_id: str, scenario: str, cands: Any, ctx: dict[str, str],
                         now: float) -> Any:
    """The serving path as it was before the CPU fast paths (the A of the A/B): per-token ``collate_reference`` and
    the reference attention / Group LayerNorm (``Kernel.REFERENCE``, which also turns off the model's target-layer
    fast path); same sample build, same cached encode + score as :func:`serving.scoring.score_request`."""
    import torch

    from kernels.dispatch import Kernel, get_kernel, set_kernel
    from model.reference import collate_reference
    from serving.scoring import ScoreResult, build_batch_sample

    t0 = time.perf_counter()
    batch = collate_reference([build_batch_sample(state, user_id, scenario, cands, ctx, now)], served.spec)
    t1 = time.perf_counter()
    prev = get_kernel()
    set_kernel(Kernel.REFERENCE)
    try:
        with torch.inference_mode():
            cache = served.model.encode_user(batch)
            logits = served.model.score_candidates(cache, batch)
    finally:
        set_kernel(prev)
    scores = {task: torch.sigmoid(v.float()).tolist() for task, v in logits.items()}
    return ScoreResult(scores=scores, build_s=t1 - t0, model_s=time.perf_counter() - t1)


# -- 2: real HTTP on a real broker ---------------------------------------------------------------------------------
@contextlib.contextmanager
def serving_process(snapshot_dir: Path, bootstrap: str, topics: tuple[str, str], core: int,
                    log: Path) -> Iterator[str]:
    port = free_port()
    cmd = [sys.executable, "-m", "serving", "--port", str(port), "--bootstrap", bootstrap,
           "--snapshots-topic", topics[0], "--user-state-topic", topics[1], "--snapshot-dir", str(snapshot_dir),
           "--torch-threads", "1", "--scoring-workers", "1", "--log-level", "warning"]
    with log.open("wb") as f:
        proc = subprocess.Popen(cmd, cwd=REPO, stdout=f, stderr=subprocess.STDOUT,
                                preexec_fn=lambda: os.sched_setaffinity(0, {core}))
    url = f"http://127.0.0.1:{port}"
    try:
        import httpx

        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            if proc.poll() is not None:
                raise RuntimeError(f"serving exited: {log.read_text()[-2000:]}")
            with contextlib.suppress(httpx.HTTPError):
                if httpx.get(url + "/readyz", timeout=2).status_code == 200:
                    break
            time.sleep(0.2)
        else:
            raise RuntimeError("serving did not become ready")
        yield url
    finally:
        proc.terminate()
        try:
            proc.wait(15)
        except subprocess.TimeoutExpired:
            proc.kill()


def bench_http(snapshot_dir: Path, history: int, n_cands: int, iters: int, seconds: float) -> dict[str, Any]:
    import httpx
    from kafka import KafkaProducer
    from kafka.admin import KafkaAdminClient, NewTopic

    from deploy.kafka import BrokerConfig, KafkaBroker

    cs = cores()
    server_core, client_cores = cs[0], (set(cs[1:]) or {cs[0]})
    os.sched_setaffinity(0, client_cores)
    tmp = Path(tempfile.mkdtemp(prefix="bench-serving-"))
    broker = KafkaBroker(BrokerConfig(state_dir=tmp / "kafka", port=0, heap="512m"))
    try:
        bootstrap = broker.start()
        topics = ("bench-snapshots", "bench-user_state")
        admin = KafkaAdminClient(bootstrap_servers=bootstrap)
        admin.create_topics([NewTopic(topics[0], 1, 1),
                             NewTopic(topics[1], 1, 1, topic_configs={"cleanup.policy": "compact"})])
        admin.close()
        producer = KafkaProducer(bootstrap_servers=bootstrap)
        producer.send(topics[1], key=b"bench-user", value=make_state("bench-user", history, time.time()).encode())
        producer.flush(30)
        producer.close()
        body = {"user_id": "bench-user", "scenario": "home", "context": {"hour": "20"},
                "candidates": candidates_json(n_cands)}
        with serving_process(snapshot_dir, bootstrap, topics, server_core, tmp / "serving.log") as url, \
                httpx.Client(timeout=30) as client:
            deadline = time.monotonic() + 60
            while client.post(url + "/v1/score", json=body).json()["cold_start"]:
                if time.monotonic() > deadline:
                    raise RuntimeError("the user's state never reached the serving replica")
                time.sleep(0.1)
            for _ in range(20):
                client.post(url + "/v1/score", json=body).raise_for_status()
            lat = []
            # the body is encoded once: the client's own JSON work is not the server's latency
            payload, headers = json.dumps(body).encode(), {"content-type": "application/json"}
            for _ in range(iters):
                t0 = time.perf_counter()
                r = client.post(url + "/v1/score", content=payload, headers=headers)
                lat.append(time.perf_counter() - t0)
                assert r.status_code == 200 and len(r.json()["candidates"]) == n_cands
            done, errors = 0, 0
            stop_at = time.perf_counter() + seconds
            lock = threading.Lock()

            def worker() -> None:
                nonlocal done, errors
                with httpx.Client(timeout=30) as c:
                    while time.perf_counter() < stop_at:
                        ok = c.post(url + "/v1/score", content=payload, headers=headers).status_code == 200
                        with lock:
                            done += ok
                            errors += not ok

            t0 = time.perf_counter()
            with ThreadPoolExecutor(4) as ex:
                for f in [ex.submit(worker) for _ in range(4)]:
                    f.result()
            rps = done / (time.perf_counter() - t0)
        return {"http_latency": summary_ms(lat), "http_requests_per_s_4_in_flight": rps, "http_errors": errors,
                "server_cores": [server_core], "client_cores": sorted(client_cores), "target_p99_ms": 20.0}
    finally:
        broker.stop()
        os.sched_setaffinity(0, set(cs))
        shutil.rmtree(tmp, ignore_errors=True)


# -- 4: freshness through the whole pipeline -----------------------------------------------------------------------
def pipeline_available() -> str | None:
    """None when the streaming worker and trainer CLIs exist, else why not."""
    out = subprocess.run([sys.executable, "-m", "streaming", "worker", "--help"], cwd=REPO, capture_output=True,
                         text=True, timeout=120)
    if out.returncode != 0 or "--bootstrap" not in out.stdout:
        return "the streaming worker (python -m streaming worker) does not exist yet"
    try:
        import deploy.pipeline  # noqa: F401
    except ImportError as e:
        return f"deploy.pipeline is not importable: {e}"
    return None


def bench_freshness(seconds: float, rate: float, window_s: float) -> dict[str, Any]:
    """Live events (ts = now) at ``rate`` events/s for ``seconds`` through worker → trainer → serving."""
    import httpx
    from kafka import KafkaProducer

    from deploy.kafka import BrokerConfig, KafkaBroker
    from deploy.pipeline import Pipeline, PipelineConfig
    from deploy.supervisor import Service, Supervisor
    from streaming.events import Feedback, Impression, encode_event

    run_dir = Path(tempfile.mkdtemp(prefix="bench-serving-fresh-"))
    broker = KafkaBroker(BrokerConfig(state_dir=run_dir / "kafka", port=0, heap="512m"))
    sup = Supervisor(run_dir)
    try:
        bootstrap = broker.start()
        pipe = Pipeline(PipelineConfig(run_dir=run_dir, worker_port=0, trainer_port=0, serving_port=0,
                                       with_prometheus=False, snapshot_every_s=1.0), bootstrap, sup)
        pipe.create_topics()
        worker = pipe.worker_service()
        # Live timestamps: a label is final only after its attribution window, and a sample is flushed when the
        # watermark passes its span; both short here (the defaults, 30 min each, suit historical replays).
        worker_args = (*worker.argv, "--window-s", str(window_s), "--lateness-s", "0", "--span-s", "1")
        sup.start(Service("worker", worker_args, ready_url=worker.ready_url))
        sup.start(pipe.trainer_service())
        sup.start(pipe.serving_service())
        for name in ("worker", "trainer", "serving"):
            sup.wait_ready(name, 180)
        producer = KafkaProducer(bootstrap_servers=bootstrap, linger_ms=5)
        sent: list[tuple[float, float]] = []  # (feedback ts, wall time produced)
        seen: list[tuple[float, float, float]] = []  # (wall time first seen, max_event_ts, snapshot created_at)
        stop = threading.Event()

        def probe() -> None:
            last = None
            with httpx.Client(timeout=5) as c:
                while not stop.is_set():
                    with contextlib.suppress(httpx.HTTPError, KeyError, ValueError):
                        info = c.get(pipe.serving_url + "/v1/model").json()
                        if info["version"] != last:
                            last = info["version"]
                            seen.append((time.time(), float(info["max_event_ts"]), float(info["created_at"])))
                    stop.wait(0.05)

        prober = threading.Thread(target=probe, daemon=True)
        prober.start()
        users = [f"u{i}" for i in range(200)]

        def emit(n: int, record: bool) -> None:
            now = time.time()
            u = users[n % len(users)]
            scen = ("home", "search")[n % 2]
            imp = Impression(f"e{n}", now, u, scen, f"r{n}", f"i{n % 997}", item={"category": f"c{n % 13}"})
            producer.send(pipe.config.topic("impressions"), key=u.encode(), value=encode_event(imp))
            if n % 3 == 0:
                fb = Feedback(f"f{n}", now + 0.01, u, scen, f"r{n}", f"i{n % 997}", "click")
                producer.send(pipe.config.topic("feedback"), key=u.encode(), value=encode_event(fb))
                if record:
                    sent.append((fb.ts, time.time()))
            time.sleep(max(0.0, 1.0 / rate - (time.time() - now)))

        n, t_end = 0, time.time() + seconds
        while time.time() < t_end:
            emit(n, record=True)
            n += 1
        # Keep the same stream going (unmeasured) so every partition's watermark passes the last measured windows,
        # until a served model covers the last measured feedback (or 120 s).
        drain_until = time.time() + 120
        while time.time() < drain_until and (not seen or seen[-1][1] < sent[-1][0]):
            emit(n, record=False)
            n += 1
        producer.flush(30)
        stop.set()
        prober.join(5)
        producer.close()
        fresh, missing = [], 0
        for ts, produced in sent:
            first = next((wall for wall, mts, _ in seen if mts >= ts), None)
            if first is None:
                missing += 1
            else:
                fresh.append(max(0.0, first - produced))
        # serving's own share: snapshot written by the trainer → first seen served (announce + load + verify + swap)
        swap_delay = [wall - created for wall, _, created in seen[1:]]
        return {"swap_delay_p50_s": statistics.median(swap_delay) if swap_delay else None,
                "swap_delay_max_s": max(swap_delay) if swap_delay else None,
                "events_produced": n, "feedback_measured": len(fresh), "feedback_not_covered": missing,
                "rate_events_per_s": rate, "attribution_window_s": window_s, "model_swaps_seen": len(seen),
                "freshness_p50_s": statistics.median(fresh) if fresh else None,
                "freshness_p99_s": pct(fresh, 0.99) if fresh else None,
                "target_p50_s": 10.0, "target_p99_s": 30.0}
    finally:
        sup.stop()
        broker.stop()
        shutil.rmtree(run_dir, ignore_errors=True)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m benchmarks.bench_serving", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--history", type=int, default=256, help="behaviors in the user's history (default 256)")
    ap.add_argument("--candidates", type=int, default=200, help="candidates per request (default 200)")
    ap.add_argument("--iters", type=int, default=300, help="timed requests per latency measurement")
    ap.add_argument("--seconds", type=float, default=10.0, help="duration of the requests/s measurement")
    ap.add_argument("--no-http", action="store_true", help="skip the HTTP part (needs Java for the broker)")
    ap.add_argument("--no-freshness", action="store_true", help="skip the whole-pipeline freshness part")
    ap.add_argument("--freshness-seconds", type=float, default=60.0, help="live stream duration for freshness")
    ap.add_argument("--freshness-rate", type=float, default=50.0, help="events/s of the live stream")
    ap.add_argument("--freshness-window-s", type=float, default=2.0,
                    help="the worker's attribution window for the freshness run (labels are final after it)")
    ap.add_argument("--out", type=Path, default=OUT, help="JSON report path")
    args = ap.parse_args(argv)

    import torch

    from model.features import FeatureSpec
    from model.ranker import Ranker, RankerConfig
    from model.snapshot import SnapshotMeta, save_snapshot

    torch.manual_seed(0)
    torch.set_num_threads(1)
    all_cores = cores()
    snap_dir = Path(tempfile.mkdtemp(prefix="bench-serving-snap-"))
    spec, rcfg = FeatureSpec(max_history=args.history), RankerConfig()
    snapshot = save_snapshot(snap_dir, Ranker(spec, rcfg).eval(),
                             SnapshotMeta(1, time.time(), time.time(), 0))
    result: dict[str, Any] = {
        "machine": f"{platform.machine()} {platform.processor() or ''} ({os.cpu_count()} cores, shared), no GPU",
        "command": "python -m benchmarks.bench_serving " + " ".join(argv if argv is not None else sys.argv[1:]),
        "workload": {"history": args.history, "candidates": args.candidates, "torch_threads": 1,
                     "model": json.loads(rcfg.to_json()), "feature_spec_max_history": spec.max_history},
    }
    os.sched_setaffinity(0, {all_cores[0]})
    try:
        result.update(bench_core(snapshot, args.history, args.candidates, args.iters))
    finally:
        os.sched_setaffinity(0, set(all_cores))
    if not args.no_http:
        result.update(bench_http(snap_dir, args.history, args.candidates, args.iters, args.seconds))
    if args.no_freshness:
        result["freshness"] = {"measured": False, "why": "skipped (--no-freshness)"}
    else:
        why = pipeline_available()
        if why is None:
            result["freshness"] = {"measured": True, **bench_freshness(args.freshness_seconds, args.freshness_rate,
                                                                       args.freshness_window_s)}
        else:
            result["freshness"] = {"measured": False, "why": why}
    shutil.rmtree(snap_dir, ignore_errors=True)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")

    from rich.console import Console
    from rich.table import Table

    table = Table(title="serving benchmark (1 user, "
                        f"{args.history} history, {args.candidates} candidates, 1 core, torch threads 1)")
    table.add_column("measure")
    table.add_column("value", justify="right")
    for key in ("core_latency", "core_build_collate", "core_model", "core_latency_warm_user_cache",
                "core_model_warm_user_cache", "http_latency"):
        if key in result:
            r = result[key]
            before = result.get(f"before_{key}")
            was = f"  (before: {before['p50_ms']:.2f} / {before['p99_ms']:.2f} / {before['min_ms']:.2f} ms)" \
                if before else ""
            table.add_row(f"{key} p50 / p99 / min", f"{r['p50_ms']:.2f} / {r['p99_ms']:.2f} / {r['min_ms']:.2f} ms{was}")
    if "before_after_max_abs_score_diff" in result:
        table.add_row("max |score after - score before|", f"{result['before_after_max_abs_score_diff']:.2e}")
    if "http_requests_per_s_4_in_flight" in result:
        table.add_row("HTTP requests/s (4 in flight, server on 1 core)", f"{result['http_requests_per_s_4_in_flight']:.1f}")
    r = result["ratio"]
    table.add_row("user-level request (200 cands)", f"{r['user_level_ms']:.2f} ms")
    table.add_row("one request per candidate (200 requests)", f"{r['per_candidate_total_ms']:.2f} ms")
    table.add_row("full forward, no user cache (200 cands)", f"{r['full_forward_no_cache_ms']:.2f} ms")
    table.add_row("speed-up user-level vs per-candidate", f"{r['speedup_user_level_vs_per_candidate']:.1f}x")
    f = result["freshness"]
    if f.get("measured"):
        table.add_row("freshness p50 / p99", f"{f['freshness_p50_s']} / {f['freshness_p99_s']} s")
    else:
        table.add_row("freshness", f"not measured: {f['why']}")
    Console().print(table)
    print(f"machine: {result['machine']}\nwrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
