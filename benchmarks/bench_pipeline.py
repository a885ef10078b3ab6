"""End-to-end pipeline benchmark: MovieLens-100K replayed through Kafka → worker → trainer → serving.

Runs the same cluster code as ``make demo`` and the deploy tests (deploy/pipeline.py) on a fresh local broker and
measures, from the services' /metrics and serving's /v1/model:

- replay (produce) rate, events/s;
- sustained rate of each stage between the moments it had done 10 % and 90 % of the work (worker: events read;
  trainer: impressions trained, also expressed as input events/s);
- end to end: all events / (replay start → every sample trained and a snapshot covering them served);
- freshness: for every ``stride``-th feedback event, wall seconds from being produced to the first served model
  whose snapshot's ``max_event_ts`` covers it (p50 / p99 / max, and how many no served model covered). While the
  trainer works through a backlog this is backlog / throughput; so phase 2 replays ``--paced-events`` more events
  (shifted in time, new ids) at ``--paced-rate`` events/s, which the trainer sustains: steady-state freshness.

    .venv/bin/python -m benchmarks.bench_pipeline                 # full MovieLens-100K (176,576 events)
    .venv/bin/python -m benchmarks.bench_pipeline --limit 50000

Writes reports/bench/pipeline.json and prints a table.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import platform
import statistics
import sys
import threading
import time
from pathlib import Path
from typing import Any

from deploy.freshness import FreshnessProbe, ReplayThread
from deploy.kafka import REPO_ROOT, BrokerConfig, KafkaBroker
from deploy.pipeline import LAPTOP_TRAINER_ARGS, Pipeline, PipelineConfig
from deploy.progress import Completion
from deploy.supervisor import Supervisor, wait_until

OUT = REPO_ROOT / "reports" / "bench" / "pipeline.json"


def _crossing(series: list[tuple[float, float]], level: float) -> float | None:
    """First time the sampled counter reached ``level`` (linear interpolation between samples)."""
    prev_t, prev_v = None, None
    for t, v in series:
        if v >= level:
            if prev_t is None or prev_v is None or v == prev_v:
                return t
            return prev_t + (t - prev_t) * (level - prev_v) / (v - prev_v)
        prev_t, prev_v = t, v
    return None


def sustained(series: list[tuple[float, float]], total: float) -> float | None:
    """Rate between 10 % and 90 % of ``total``."""
    a, b = _crossing(series, 0.1 * total), _crossing(series, 0.9 * total)
    if a is None or b is None or b <= a:
        return None
    return 0.8 * total / (b - a)


def _since(t: float | None, t0: float) -> float | None:
    return None if t is None else round(t - t0, 2)


def pct(xs: list[float], q: float) -> float:
    s = sorted(xs)
    return s[min(len(s) - 1, int(q * len(s)))]


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m benchmarks.bench_pipeline", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--limit", type=int, default=None, help="replay only the first N events (default: all)")
    ap.add_argument("--stride", type=int, default=20, help="measure freshness on every N-th feedback event")
    ap.add_argument("--paced-events", type=int, default=6000,
                    help="phase 2: events replayed again at a sustainable pace to measure steady-state freshness")
    ap.add_argument("--paced-rate", type=float, default=150.0, help="phase 2 pace, events/s")
    ap.add_argument("--timeout", type=float, default=1500.0, help="give up after this many seconds")
    ap.add_argument("--full-model", action="store_true",
                    help="python -m trainer's default ranker instead of the demo's laptop profile")
    ap.add_argument("--run-dir", type=Path, default=REPO_ROOT / "runs" / "bench-pipeline", help="scratch directory")
    ap.add_argument("--out", type=Path, default=OUT, help="JSON report path")
    args = ap.parse_args(argv)

    import shutil

    from streaming.datasets.movielens import DEFAULT_CACHE, ensure_movielens, load_movielens
    from streaming.replay import ReplayConfig

    events = load_movielens(ensure_movielens(REPO_ROOT / DEFAULT_CACHE))
    if args.limit:
        events = events[: args.limit]
    shutil.rmtree(args.run_dir, ignore_errors=True)
    broker = KafkaBroker(BrokerConfig(state_dir=args.run_dir / "kafka", port=0, heap="1g"))
    sup = Supervisor(args.run_dir)
    samples: list[tuple[float, Any]] = []
    stop = threading.Event()
    try:
        bootstrap = broker.start()
        pipe = Pipeline(PipelineConfig(run_dir=args.run_dir, worker_port=0, trainer_port=0, serving_port=0,
                                       with_prometheus=False, snapshot_every_s=2.0,
                                       trainer_args=() if args.full_model else LAPTOP_TRAINER_ARGS), bootstrap, sup)
        pipe.create_topics()
        pipe.start()

        def sample_loop() -> None:
            while not stop.is_set():
                samples.append((time.time(), pipe.progress()))
                stop.wait(0.5)

        sampler = threading.Thread(target=sample_loop, daemon=True)
        sampler.start()
        probe = FreshnessProbe(pipe.serving_url, interval_s=0.1)
        probe.start()
        rt = ReplayThread(events, ReplayConfig(bootstrap=bootstrap))
        t_start = time.time()
        rt.start()
        done = Completion()
        state: dict[str, Any] = {}

        def finished() -> bool:
            if rt.error is not None:
                raise RuntimeError(f"replay failed: {rt.error}")
            if done.replayed is None and not rt.is_alive() and rt.summary is not None:
                done.replayed = rt.summary.produced  # events + the replay's end-of-stream markers
            state["p"] = pipe.progress()
            return done.update(state["p"], time.time(), settle_s=5.0)

        wait_until(finished, args.timeout, 0.5, "the replay to be trained and served", alive=sup.check_alive)
        t_served = next((s.wall for s in probe.seen if float(s.version) >= state["p"].serving_version), time.time())
        stop.set()
        probe.stop()
        sampler.join(5)
        p = state["p"]
        n = len(rt.events)
        impressions = rt.summary.impressions
        worker_series = [(t, s.worker_events_in) for t, s in samples]
        trainer_series = [(t, s.trainer_impressions) for t, s in samples]
        worker_rate = sustained(worker_series, n)
        trainer_imp_rate = sustained(trainer_series, p.trainer_impressions)
        # freshness of feedback events only ("a feedback event produced → a served model that includes it")
        fresh, missing = _feedback_freshness(probe, rt, args.stride)

        # Phase 2, freshness at a sustainable rate: the first --paced-events events again, shifted past the
        # end-of-stream markers (new ids), paced at --paced-rate events/s, on the same warm cluster.
        shift = max(rt.ts) + 60 * 86400.0 - events[0].ts
        again = [dataclasses.replace(e, event_id=f"p2-{e.event_id}", request_id=f"p2-{e.request_id}", ts=e.ts + shift)
                 for e in events[: args.paced_events]]
        span = again[-1].ts - again[0].ts
        probe2 = FreshnessProbe(pipe.serving_url, interval_s=0.1)
        probe2.start()
        rt2 = ReplayThread(again, ReplayConfig(bootstrap=bootstrap, speedup=span / (len(again) / args.paced_rate)))
        rt2.start()
        rt2.join()
        if rt2.error is not None or rt2.summary is None:
            raise RuntimeError(f"paced replay failed: {rt2.error}")
        done2 = Completion(replayed=int(done.replayed or 0) + rt2.summary.produced)

        def finished2() -> bool:
            state["p2"] = pipe.progress()
            return done2.update(state["p2"], time.time(), settle_s=5.0)

        wait_until(finished2, args.timeout, 0.5, "the paced replay to be trained and served", alive=sup.check_alive)
        probe2.stop()
        fresh2, missing2 = _feedback_freshness(probe2, rt2, max(1, args.stride // 4))
        result: dict[str, Any] = {
            "machine": f"{platform.machine()} {platform.processor() or ''} ({_cores()} cores), no GPU",
            "command": "python -m benchmarks.bench_pipeline" + (f" --limit {args.limit}" if args.limit else "")
            + (" --full-model" if args.full_model else ""),
            "trainer_args": " ".join(() if args.full_model else LAPTOP_TRAINER_ARGS) or "(python -m trainer defaults)",
            "events": n,
            "impressions": impressions,
            "samples": p.trainer_samples,
            "replay_events_per_s": rt.summary.rate,
            "worker_sustained_events_per_s": worker_rate,
            "trainer_sustained_impressions_per_s": trainer_imp_rate,
            "trainer_sustained_events_per_s": trainer_imp_rate * n / impressions if trainer_imp_rate else None,
            # when each stage had done all of it, seconds after the replay started (sampled every 0.5 s)
            "stage_done_s": {"replay": round(rt.summary.seconds, 2),
                             "worker": _since(_crossing(worker_series, n), t_start),
                             "trainer": _since(_crossing(trainer_series, p.trainer_impressions), t_start),
                             "served": round(t_served - t_start, 2)},
            "end_to_end_seconds": t_served - t_start,
            "end_to_end_events_per_s": n / (t_served - t_start),
            "freshness_events_measured": len(fresh),
            "freshness_not_covered": missing,
            "freshness_p50_s": statistics.median(fresh) if fresh else None,
            "freshness_p99_s": pct(fresh, 0.99) if fresh else None,
            "freshness_max_s": max(fresh) if fresh else None,
            "model_swaps_seen": len(probe.seen),
            "paced_events": rt2.summary.events,
            "paced_events_per_s": rt2.summary.rate,
            "paced_freshness_events_measured": len(fresh2),
            "paced_freshness_not_covered": missing2,
            "paced_freshness_p50_s": statistics.median(fresh2) if fresh2 else None,
            "paced_freshness_p99_s": pct(fresh2, 0.99) if fresh2 else None,
            "final_model_version": p.serving_version,
            "target_events_per_s": 5000,
        }
    finally:
        stop.set()
        sup.stop()
        broker.stop()
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    from rich.console import Console
    from rich.table import Table

    table = Table(title=f"pipeline benchmark ({result['command']})")
    table.add_column("measure")
    table.add_column("value", justify="right")
    for k, v in result.items():
        if k in ("machine", "command"):
            continue
        table.add_row(k, f"{v:,.2f}" if isinstance(v, float) else str(v))
    Console().print(table)
    print(f"machine: {result['machine']}\nwrote {args.out}")
    return 0


def _feedback_freshness(probe: FreshnessProbe, rt: ReplayThread, stride: int) -> tuple[list[float], int]:
    """Freshness of every ``stride``-th feedback event ("a feedback produced → a served model including it")."""
    from streaming.events import Feedback

    fresh, missing = [], 0
    for i in [i for i, e in enumerate(rt.events) if isinstance(e, Feedback)][::stride]:
        f = _freshness_of(probe, rt, i)
        if f is None:
            missing += 1
        else:
            fresh.append(f)
    return fresh, missing


def _freshness_of(probe: FreshnessProbe, rt: ReplayThread, i: int) -> float | None:
    """Seconds from event ``i`` being produced to the first served model covering its ts (None: never)."""
    import bisect

    marks = rt.producer.marks if rt.producer else []
    k = bisect.bisect_left(marks, (i + 1, float("-inf")))
    if k >= len(marks):
        return None
    produced = marks[k][1]
    ts = rt.ts[i]
    for s in sorted(probe.seen, key=lambda s: s.wall):
        if s.max_event_ts >= ts:
            return max(0.0, s.wall - produced)
    return None


def _cores() -> int:
    import os

    return os.cpu_count() or 0


if __name__ == "__main__":
    sys.exit(main())
