"""A small process supervisor for the local cluster: Kafka, streaming worker, trainer, serving, Prometheus.

Each service is a subprocess in its own process group (``start_new_session``) with its output in
``<run_dir>/logs/<name>.log``; :meth:`Supervisor.stop` sends SIGTERM to every group (newest first), waits, then
SIGKILLs what is left, so Ctrl-C leaves no orphans. :func:`scrape` reads a ``/metrics`` endpoint into a dict, which
is how the demo, the tests and the pipeline benchmark watch progress (the same numbers Prometheus sees).

Example (starts a worker that needs a broker, so not a doctest)::

    with Supervisor(Path("/tmp/demo")) as sup:
        sup.start(Service("worker", ("python", "-m", "streaming", "worker"),
                          ready_url="http://127.0.0.1:9101/metrics"))
        sup.wait_ready("worker", timeout_s=60)
"""

from __future__ import annotations

import bisect
import contextlib
import json
import math
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import Any

from prometheus_client.parser import text_string_to_metric_families

from deploy.kafka import REPO_ROOT, free_port, port_in_use

PROMETHEUS_DIR = REPO_ROOT / "deploy" / "prometheus"

# One scraped sample: (metric sample name, sorted label pairs) -> value.
MetricKey = tuple[str, tuple[tuple[str, str], ...]]


class ClusterError(RuntimeError):
    """A service did not start or died; the message names the service and its log file."""


@dataclass(frozen=True)
class Service:
    """How to run one service.

    Example:
        >>> Service("serving", ("python", "-m", "serving"), ready_url="http://127.0.0.1:8000/readyz").name
        'serving'
    """

    name: str
    argv: tuple[str, ...]
    ready_url: str | None = None  # HTTP GET answering 2xx = ready
    env: Mapping[str, str] = field(default_factory=dict)
    cwd: Path = REPO_ROOT


@dataclass
class Running:
    """A started service: its spec, process and log file."""

    service: Service
    proc: subprocess.Popen[bytes]
    log: Path

    def log_tail(self, n: int = 25) -> str:
        try:
            return "\n".join(self.log.read_text(errors="replace").splitlines()[-n:])
        except OSError:
            return ""


def http_get(url: str, timeout_s: float = 2.0) -> tuple[int, bytes]:
    """GET ``url``; returns (status, body); (0, b"") when nothing answers."""
    try:
        with urllib.request.urlopen(url, timeout=timeout_s) as r:
            return int(r.status), r.read()
    except urllib.error.HTTPError as e:
        return int(e.code), e.read()
    except (urllib.error.URLError, OSError, TimeoutError):
        return 0, b""


def scrape(url: str, timeout_s: float = 2.0) -> dict[MetricKey, float]:
    """Read a Prometheus text endpoint into ``{(sample_name, labels): value}``; empty when unreachable."""
    status, body = http_get(url, timeout_s)
    if status != 200:
        return {}
    out: dict[MetricKey, float] = {}
    for fam in text_string_to_metric_families(body.decode("utf-8", errors="replace")):
        for s in fam.samples:
            out[(s.name, tuple(sorted(s.labels.items())))] = float(s.value)
    return out


def metric_sum(samples: Mapping[MetricKey, float], name: str, **labels: str) -> float:
    """Sum of every sample called ``name`` whose labels include ``labels``."""
    total = 0.0
    for (n, lbls), v in samples.items():
        if n == name and all(dict(lbls).get(k) == val for k, val in labels.items()):
            total += v
    return total


def metric_by(samples: Mapping[MetricKey, float], name: str, *by: str) -> dict[tuple[str, ...], float]:
    """``name`` summed by the label values ``by`` (e.g. ``metric_by(s, "x_total", "scenario")``)."""
    out: dict[tuple[str, ...], float] = {}
    for (n, lbls), v in samples.items():
        if n == name:
            d = dict(lbls)
            key = tuple(d.get(b, "") for b in by)
            out[key] = out.get(key, 0.0) + v
    return out


def wait_until(cond: Callable[[], bool], timeout_s: float, interval_s: float = 0.25,
               what: str = "condition", alive: Callable[[], None] | None = None) -> None:
    """Poll ``cond`` until true; ``alive`` may raise (e.g. a service died). Raises TimeoutError with ``what``."""
    deadline = time.monotonic() + timeout_s
    while True:
        if cond():
            return
        if alive is not None:
            alive()
        if time.monotonic() > deadline:
            raise TimeoutError(f"timed out after {timeout_s:.0f}s waiting for {what}")
        time.sleep(interval_s)


class Supervisor:
    """Starts services as process groups, checks readiness, and stops them all (SIGTERM → SIGKILL).

    Example:
        >>> Supervisor(Path("/tmp/x")).names()
        []
    """

    def __init__(self, run_dir: Path, stop_timeout_s: float = 20.0) -> None:
        self.run_dir = run_dir
        self.log_dir = run_dir / "logs"
        self.stop_timeout_s = stop_timeout_s
        self.procs: dict[str, Running] = {}

    def names(self) -> list[str]:
        return list(self.procs)

    def __enter__(self) -> Supervisor:
        return self

    def __exit__(self, t: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None) -> None:
        self.stop()

    def start(self, service: Service) -> Running:
        if service.name in self.procs and self.procs[service.name].proc.poll() is None:
            raise ClusterError(f"{service.name} is already running")
        self.log_dir.mkdir(parents=True, exist_ok=True)
        log = self.log_dir / f"{service.name}.log"
        env = {**os.environ, "PYTHONUNBUFFERED": "1", **service.env}
        with log.open("ab") as out:
            out.write(f"\n==> {time.strftime('%Y-%m-%d %H:%M:%S')} {' '.join(service.argv)}\n".encode())
            out.flush()
            proc = subprocess.Popen(
                list(service.argv), cwd=service.cwd, env=env, stdout=out, stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL, start_new_session=True,
            )
        running = Running(service, proc, log)
        self.procs[service.name] = running
        return running

    def check_alive(self, *names: str) -> None:
        """Raise :class:`ClusterError` if one of ``names`` (default: all) has exited with an error."""
        for name in names or tuple(self.procs):
            r = self.procs[name]
            rc = r.proc.poll()
            if rc is not None and rc != 0:
                raise ClusterError(f"{name} exited with code {rc}; log {r.log}:\n{r.log_tail()}")

    def exited(self, name: str) -> int | None:
        return self.procs[name].proc.poll()

    def wait_ready(self, name: str, timeout_s: float = 90.0) -> None:
        r = self.procs[name]
        url = r.service.ready_url
        if url is None:
            return

        def alive() -> None:
            if r.proc.poll() is not None:
                raise ClusterError(f"{name} exited with code {r.proc.returncode} before it was ready; "
                                   f"log {r.log}:\n{r.log_tail()}")

        try:
            wait_until(lambda: 200 <= http_get(url, 1.0)[0] < 300, timeout_s, 0.3, f"{name} at {url}", alive)
        except TimeoutError as e:
            raise ClusterError(f"{e}; log {r.log}:\n{r.log_tail()}") from None

    def wait_exit(self, name: str, timeout_s: float) -> int:
        r = self.procs[name]
        try:
            return r.proc.wait(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            raise ClusterError(f"{name} still running after {timeout_s:.0f}s; log {r.log}") from None

    def stop_one(self, name: str, timeout_s: float | None = None) -> int | None:
        """SIGTERM the service's process group, wait, SIGKILL it if needed; returns the exit code."""
        r = self.procs.get(name)
        if r is None:
            return None
        timeout_s = self.stop_timeout_s if timeout_s is None else timeout_s
        pgid = r.proc.pid  # start_new_session: the group id is the leader's pid
        if r.proc.poll() is None:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(pgid, signal.SIGTERM)
            with contextlib.suppress(subprocess.TimeoutExpired):
                r.proc.wait(timeout=timeout_s)
        # Children of the leader may outlive it (e.g. a uvicorn worker): kill what remains of the group.
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(pgid, signal.SIGKILL)
        if r.proc.poll() is None:
            r.proc.wait(timeout=5)
        return r.proc.returncode

    def stop(self) -> dict[str, int | None]:
        """Stop every service, newest first (serving before trainer before worker before the broker)."""
        codes: dict[str, int | None] = {}
        for name in reversed(list(self.procs)):
            codes[name] = self.stop_one(name)
        return codes


@contextlib.contextmanager
def signals_raise_keyboard_interrupt() -> Iterator[None]:
    """Turn SIGTERM (and SIGHUP) into KeyboardInterrupt while inside, so one ``finally`` stops everything."""

    def handler(signum: int, frame: object) -> None:
        raise KeyboardInterrupt(f"signal {signum}")

    old = {s: signal.getsignal(s) for s in (signal.SIGTERM, signal.SIGHUP)}
    for s in old:
        signal.signal(s, handler)
    try:
        yield
    finally:
        for s, h in old.items():
            signal.signal(s, h)


def prometheus_service(
    run_dir: Path,
    targets: Mapping[str, str],
    port: int = 9090,
    binary: str | None = None,
    scrape_interval: str = "2s",
) -> Service | None:
    """A Prometheus that scrapes ``targets`` ({job: "host:port"}) with the project's alert rules, or None if
    no ``prometheus`` binary is installed. Port 0 (or a taken port) picks a free one.

    The config is written as JSON (valid YAML) to ``run_dir/prometheus.yml``; the jobs and labels match
    deploy/prometheus/prometheus.yml so the dashboards and alerts work unchanged.
    """
    binary = binary or shutil.which("prometheus")
    if binary is None:
        return None
    if port == 0 or port_in_use(port):
        port = free_port()
    services = {"stream": "streaming-worker", "trainer": "trainer", "serving": "serving"}
    config = {
        "global": {"scrape_interval": scrape_interval, "evaluation_interval": scrape_interval,
                   "external_labels": {"project": "streamrec"}},
        "rule_files": [str(PROMETHEUS_DIR / "alerts.yml")],
        "scrape_configs": [
            {"job_name": job, "metrics_path": "/metrics",
             "static_configs": [{"targets": [addr], "labels": {"service": services.get(job, job)}}]}
            for job, addr in targets.items()
        ],
    }
    run_dir.mkdir(parents=True, exist_ok=True)
    cfg = run_dir / "prometheus.yml"
    cfg.write_text(json.dumps(config, indent=2))
    data = run_dir / "prometheus-data"
    shutil.rmtree(data, ignore_errors=True)
    return Service(
        "prometheus",
        (binary, f"--config.file={cfg}", f"--storage.tsdb.path={data}", f"--web.listen-address=127.0.0.1:{port}",
         "--storage.tsdb.retention.time=1d", "--web.enable-lifecycle"),
        ready_url=f"http://127.0.0.1:{port}/-/ready",
    )


def python_module(module: str, *args: str) -> tuple[str, ...]:
    """argv for ``python -m module args`` with this interpreter (the project's .venv under make)."""
    return (sys.executable, "-m", module, *args)


# ---------------------------------------------------------------------------------------------------------------
# The streamrec pipeline on one broker: worker → trainer → serving (+ Prometheus), as used by the demo, the
# deploy tests and benchmarks/bench_pipeline.py.

# Dead-letter reasons the join core emits for events it had accepted (and counted in streamrec_stream_events_total);
# every other reason is a message the parser rejected.
CORE_DEADLETTER_REASONS = frozenset({"late_impression", "orphan_feedback", "late_positive"})
TOPICS = ("impressions", "feedback", "samples", "deadletter", "snapshots", "user_state")


# The `python -m trainer` flags of the local pipeline (`make demo`, the pipeline benchmark): a named model preset
# (trainer/model/presets.py; `laptop` by default: width 32, one block, 32 history / 16 real-time tokens, tables capped
# at 32,768 rows, so a 2-core CPU keeps up with MovieLens-100K in minutes), 64-sample batches, and one torch thread:
# with the worker and the broker on the other cores, a second OpenMP thread waits at every op's barrier for a core
# that is busy elsewhere (measured 10-40x slower steps on 2 busy cores than with 1 thread).
PIPELINE_RUNTIME_ARGS: tuple[str, ...] = ("--batch-samples", "64", "--threads", "1")


def trainer_preset_args(preset: str) -> tuple[str, ...]:
    """``python -m trainer`` flags of the local pipeline for model preset ``preset``.

    Example:
        >>> trainer_preset_args("laptop")
        ('--preset', 'laptop', '--batch-samples', '64', '--threads', '1')
    """
    return ("--preset", preset, *PIPELINE_RUNTIME_ARGS)


LAPTOP_TRAINER_ARGS: tuple[str, ...] = trainer_preset_args("laptop")


def pick_port(preferred: int, host: str = "127.0.0.1") -> int:
    """``preferred`` if nothing listens there (and it is not 0), else a free port."""
    return preferred if preferred and not port_in_use(preferred, host) else free_port()


@dataclass(frozen=True)
class PipelineConfig:
    """Ports, topics and directories of one local pipeline (ports taken by something else are replaced by free ones).

    Example:
        >>> PipelineConfig(topic_prefix="t1-").topic("samples")
        't1-samples'
    """

    run_dir: Path = REPO_ROOT / "runs" / "demo"
    topic_prefix: str = ""
    worker_port: int = 9101
    trainer_port: int = 9102
    serving_port: int = 8000
    prometheus_port: int = 9090
    with_prometheus: bool = True
    snapshot_every_s: float = 5.0
    snapshot_idle_s: float = 1.0  # also snapshot once the trainer has caught up (at most once a second)
    ready_timeout_s: float = 120.0
    partitions: int = 4  # of every topic but snapshots (the worker's tables use the same count)
    trainer_args: tuple[str, ...] = ()  # extra `python -m trainer` flags (e.g. trainer_preset_args("laptop"))
    worker_args: tuple[str, ...] = ()
    serving_args: tuple[str, ...] = ()  # extra `python -m serving` flags (e.g. --preset laptop)

    def topic(self, name: str) -> str:
        return f"{self.topic_prefix}{name}"


@dataclass
class Progress:
    """One reading of every service's /metrics (what the demo shows and the tests wait on)."""

    worker_events_in: float = 0.0
    worker_deadletter: float = 0.0
    worker_samples_out: float = 0.0
    worker_targets_out: float = 0.0
    trainer_samples: float = 0.0
    trainer_impressions: float = 0.0
    trainer_skipped: float = 0.0
    trainer_snapshot_version: float = 0.0
    trainer_last_snapshot_ts: float = 0.0
    trainer_lag: float = float("nan")
    # (scenario, task) -> windowed AUC; scenario None = overall (every scenario name, "all" included, is a scenario)
    auc: dict[tuple[str | None, str], float] = field(default_factory=dict)
    gauc: dict[tuple[str | None, str], float] = field(default_factory=dict)
    serving_version: float = 0.0
    serving_samples_trained: float = 0.0  # of the served snapshot (GET /v1/model)
    serving_model_age_s: float = float("nan")
    serving_since_update_s: float = float("nan")


@dataclass
class Completion:
    """Tracks the stages of a finite replay from the services' metrics (used by the demo, tests and the bench)."""

    replayed: int | None = None  # events the replay produced (known once it exited)
    consumed_at: float | None = None  # wall time the worker had read them all
    samples_stable_since: float | None = None
    last_samples_out: float = -1.0
    trained_at: float | None = None  # wall time the trainer had trained every sample written
    served_version: float | None = None  # the served version whose snapshot holds every trained sample

    def update(self, p: Progress, now: float, settle_s: float) -> bool:
        """Advance with a new reading taken at time ``now`` (seconds); True when the whole replay is served."""
        if self.replayed is None:
            return False
        if self.consumed_at is None and p.worker_events_in >= self.replayed:
            self.consumed_at = now
        if self.consumed_at is None:
            return False
        # The worker releases its last impressions once the end-of-stream markers move the watermark: wait until
        # the samples count stops moving for settle_s.
        if p.worker_samples_out != self.last_samples_out:
            self.last_samples_out, self.samples_stable_since = p.worker_samples_out, now
            self.trained_at = None
            return False
        assert self.samples_stable_since is not None
        if now - self.samples_stable_since < settle_s:
            return False
        if p.worker_samples_out > 0 and p.trainer_samples + p.trainer_skipped >= p.worker_samples_out:
            if self.trained_at is None:
                self.trained_at = now
            # served = the model in serving was trained on every sample the trainer has trained
            if p.serving_samples_trained >= p.trainer_samples and p.serving_version >= p.trainer_snapshot_version > 0:
                self.served_version = p.serving_version
                return True
        return False


class Pipeline:
    """Starts the streaming worker, trainer and serving (and Prometheus if installed) against ``bootstrap``.

    Example (needs a broker, so not a doctest)::

        with Supervisor(Path("runs/demo")) as sup:
            p = Pipeline(PipelineConfig(), "127.0.0.1:9092", sup)
            p.start()
            p.replay(["--dataset", "movielens", "--limit", "20000"])
    """

    def __init__(self, config: PipelineConfig, bootstrap: str, supervisor: Supervisor) -> None:
        self.config = config
        self.bootstrap = bootstrap
        self.sup = supervisor
        self.worker_port = pick_port(config.worker_port)
        self.trainer_port = pick_port(config.trainer_port)
        self.serving_port = pick_port(config.serving_port)
        self.prometheus_url: str | None = None
        self.snapshot_dir = config.run_dir / "snapshots"
        self.checkpoint_dir = config.run_dir / "checkpoints"

    # -- addresses
    @property
    def worker_metrics(self) -> str:
        return f"http://127.0.0.1:{self.worker_port}/metrics"

    @property
    def trainer_metrics(self) -> str:
        return f"http://127.0.0.1:{self.trainer_port}/metrics"

    @property
    def serving_url(self) -> str:
        return f"http://127.0.0.1:{self.serving_port}"

    def create_topics(self) -> None:
        """Create the pipeline's topics up front (``user_state`` compacted, ``snapshots`` one partition) so every
        service sees the same partitions from its first poll; existing topics are kept."""
        from kafka.admin import KafkaAdminClient, NewTopic
        from kafka.errors import TopicAlreadyExistsError

        admin = KafkaAdminClient(bootstrap_servers=self.bootstrap, client_id="streamrec-cluster")
        try:
            for name in TOPICS:
                cfg = {"cleanup.policy": "compact"} if name == "user_state" else {}
                parts = 1 if name == "snapshots" else self.config.partitions
                topic = NewTopic(self.config.topic(name), parts, 1, topic_configs=cfg)
                with contextlib.suppress(TopicAlreadyExistsError):
                    admin.create_topics([topic])
        finally:
            admin.close()

    # -- services
    def worker_service(self) -> Service:
        c = self.config
        return Service("worker", python_module(
            "streaming", "worker", "--bootstrap", self.bootstrap,
            "--impressions-topic", c.topic("impressions"), "--feedback-topic", c.topic("feedback"),
            "--samples-topic", c.topic("samples"), "--deadletter-topic", c.topic("deadletter"),
            "--user-state-topic", c.topic("user_state"),
            "--app-id", f"{c.topic_prefix}streamrec-worker", "--data-dir", str(c.run_dir / "worker"),
            "--partitions", str(c.partitions), "--metrics-port", str(self.worker_port), "--log-level", "warning",
            *c.worker_args), ready_url=self.worker_metrics)

    def trainer_service(self) -> Service:
        c = self.config
        return Service("trainer", python_module(
            "trainer", "--bootstrap", self.bootstrap, "--topic", c.topic("samples"),
            "--deadletter-topic", c.topic("deadletter"), "--snapshots-topic", c.topic("snapshots"),
            "--run-dir", str(c.run_dir / "trainer"), "--snapshot-dir", str(self.snapshot_dir),
            "--checkpoint-dir", str(self.checkpoint_dir), "--snapshot-every-s", str(c.snapshot_every_s),
            "--snapshot-idle-s", str(c.snapshot_idle_s), "--metrics-port", str(self.trainer_port), *c.trainer_args),
            ready_url=self.trainer_metrics)

    def serving_service(self) -> Service:
        c = self.config
        return Service("serving", python_module(
            "serving", "--bootstrap", self.bootstrap, "--port", str(self.serving_port),
            "--snapshots-topic", c.topic("snapshots"), "--user-state-topic", c.topic("user_state"),
            "--snapshot-dir", str(self.snapshot_dir), "--log-level", "warning", *c.serving_args),
            ready_url=f"{self.serving_url}/healthz")

    def start(self) -> None:
        """Start every service and wait until each answers its readiness URL."""
        self.config.run_dir.mkdir(parents=True, exist_ok=True)
        for svc in (self.worker_service(), self.trainer_service(), self.serving_service()):
            self.sup.start(svc)
        for name in ("worker", "trainer", "serving"):
            self.sup.wait_ready(name, self.config.ready_timeout_s)
        if self.config.with_prometheus:
            prom = prometheus_service(
                self.config.run_dir, {"stream": f"127.0.0.1:{self.worker_port}",
                                      "trainer": f"127.0.0.1:{self.trainer_port}",
                                      "serving": f"127.0.0.1:{self.serving_port}"},
                port=self.config.prometheus_port)
            if prom is not None:
                self.sup.start(prom)
                self.sup.wait_ready("prometheus", 60)
                assert prom.ready_url is not None
                self.prometheus_url = prom.ready_url.removesuffix("/-/ready")

    def replay(self, dataset_args: list[str], name: str = "replay") -> Running:
        """Start ``python -m streaming.replay`` with ``dataset_args`` (e.g. ``--dataset movielens --limit N``)."""
        c = self.config
        return self.sup.start(Service(name, python_module(
            "streaming.replay", "--bootstrap", self.bootstrap, "--impressions-topic", c.topic("impressions"),
            "--feedback-topic", c.topic("feedback"), "--no-progress", *dataset_args)))

    def end_of_stream(self, after_ts: float, margin_s: float = 30 * 86400.0) -> int:
        """Send the end-of-stream markers of :func:`streaming.replay.end_of_stream_events` (one impression and one
        feedback per input partition, ``after_ts + margin_s``) for a replay that did not send them itself. Their ids
        are deterministic, so markers a replay already sent come back as duplicates. Returns how many were sent."""
        from streaming.replay import ReplayConfig, close_producer, make_producer, send_end_of_stream

        c = self.config
        rc = ReplayConfig(bootstrap=self.bootstrap, impressions_topic=c.topic("impressions"),
                          feedback_topic=c.topic("feedback"), eos_margin_s=margin_s)
        prod = make_producer(rc)
        try:
            n = send_end_of_stream(prod, rc, after_ts, partitions=c.partitions)
            prod.flush(30)
        finally:
            close_producer(prod, 10.0)
        return n

    # -- observation
    def progress(self) -> Progress:
        w, t = scrape(self.worker_metrics), scrape(self.trainer_metrics)
        v = scrape(f"{self.serving_url}/metrics")
        p = Progress(
            worker_events_in=metric_sum(w, "streamrec_stream_events_total") + sum(
                v for (r,), v in metric_by(w, "streamrec_stream_deadletter_total", "reason").items()
                if r not in CORE_DEADLETTER_REASONS),
            worker_deadletter=metric_sum(w, "streamrec_stream_deadletter_total"),
            worker_samples_out=metric_sum(w, "streamrec_stream_samples_total"),
            worker_targets_out=metric_sum(w, "streamrec_stream_targets_per_sample_sum"),
            trainer_samples=metric_sum(t, "streamrec_trainer_samples_total"),
            trainer_impressions=metric_sum(t, "streamrec_trainer_impressions_total"),
            trainer_skipped=metric_sum(t, "streamrec_trainer_skipped_total"),
            trainer_snapshot_version=metric_sum(t, "streamrec_trainer_snapshot_version"),
            trainer_last_snapshot_ts=metric_sum(t, "streamrec_trainer_last_snapshot_timestamp_seconds"),
            trainer_lag=metric_sum(t, "streamrec_trainer_consumer_lag_records") if t else float("nan"),
            serving_version=metric_sum(v, "streamrec_serving_model_version"),
            serving_model_age_s=metric_sum(v, "streamrec_serving_model_age_seconds") if v else float("nan"),
            serving_since_update_s=metric_sum(v, "streamrec_serving_since_last_update_seconds") if v else float("nan"),
        )
        status, body = http_get(f"{self.serving_url}/v1/model")
        if status == 200:
            with contextlib.suppress(ValueError, KeyError, TypeError):
                p.serving_samples_trained = float(json.loads(body)["samples_trained"])
        for (name, lbls), val in t.items():
            d = dict(lbls)
            if d.get("window") == "window" and name in ("streamrec_trainer_auc", "streamrec_trainer_gauc"):
                scen = None if d.get("scope") == "overall" else d.get("scenario", "")
                (p.auc if name.endswith("_auc") and not name.endswith("gauc") else p.gauc)[(scen, d.get("task", ""))] = val
        return p

    def topic_end_offsets(self, *names: str) -> int:
        """Sum of the log-end offsets of ``names`` (e.g. how many events the replay has produced)."""
        from kafka import KafkaConsumer, TopicPartition

        consumer = KafkaConsumer(bootstrap_servers=self.bootstrap, request_timeout_ms=5000)
        try:
            parts = []
            for n in names:
                for p in consumer.partitions_for_topic(self.config.topic(n)) or ():
                    parts.append(TopicPartition(self.config.topic(n), p))
            return int(sum(consumer.end_offsets(parts).values())) if parts else 0
        finally:
            consumer.close()


# ---------------------------------------------------------------------------------------------------------------
# In-process replay with a produce timeline, and the serving-side freshness probe (wall-clock freshness: time from
# an event being produced to a served model whose snapshot's max_event_ts covers it).


class _RecordingProducer:
    """Wraps a kafka-python producer: remembers the wall time of every ``every``-th send (send index → time)."""

    def __init__(self, inner: Any, every: int = 256) -> None:
        self.inner = inner
        self.every = every
        self.n = 0
        self.marks: list[tuple[int, float]] = []  # (events sent before this mark, wall time)

    def send(self, *args: Any, **kwargs: Any) -> Any:
        fut = self.inner.send(*args, **kwargs)
        self.n += 1
        if self.n % self.every == 1:
            self.marks.append((self.n - 1, time.time()))
        return fut

    def partitions_for(self, topic: str) -> Any:
        return self.inner.partitions_for(topic)

    def flush(self, timeout: float | None = None) -> None:
        self.inner.flush(timeout=timeout)
        self.marks.append((self.n, time.time()))

    def close(self, timeout: float | None = None) -> None:
        self.inner.close(timeout=timeout)


class ReplayThread(threading.Thread):
    """Replays ``events`` (event-time order) with :func:`streaming.replay.replay` in a background thread and keeps
    a produce timeline, so freshness can be measured in wall-clock time even for historical timestamps.

    Example (needs a broker, so not a doctest)::

        t = ReplayThread(events, ReplayConfig(bootstrap=bootstrap))
        t.start(); t.join(); t.summary.events  # 176576
    """

    def __init__(self, events: Sequence[Any], config: Any) -> None:
        super().__init__(name="replay", daemon=True)
        self.events = events[: config.limit] if config.limit is not None else events
        self.config = config
        self.ts = [float(e.ts) for e in self.events]
        self.summary: Any = None
        self.error: BaseException | None = None
        self.started_wall: float = 0.0
        self.producer: _RecordingProducer | None = None
        self._stop_event = threading.Event()

    @property
    def sent(self) -> int:
        """Records handed to the producer so far: events, then the end-of-stream markers."""
        return self.producer.n if self.producer else 0

    @property
    def events_sent(self) -> int:
        """Dataset events handed to the producer so far (markers excluded)."""
        return min(self.sent, len(self.events))

    def stop(self, timeout_s: float = 15.0) -> None:
        """End the replay early and wait until its producer is closed (call it before stopping the broker: a
        producer left open would try to flush from an ``atexit`` handler, against a broker that is gone)."""
        self._stop_event.set()
        if self.is_alive():
            self.join(timeout_s)

    def run(self) -> None:
        from streaming.replay import close_producer, make_producer, replay

        try:
            self.producer = _RecordingProducer(make_producer(self.config))
            self.started_wall = time.time()
            try:
                self.summary = replay(self.events, self.config, producer=self.producer, progress=False,
                                      stop=self._stop_event)
            finally:
                close_producer(self.producer, 2.0 if self._stop_event.is_set() else 10.0)
        except BaseException as e:  # reported by the caller
            self.error = e

    def produced_at(self, event_ts: float) -> float | None:
        """Wall time by which every event with ts ≤ ``event_ts`` had been handed to the producer (None: not yet)."""
        idx = bisect.bisect_right(self.ts, event_ts)  # events[:idx] have ts <= event_ts
        if idx == 0 or self.producer is None:
            return None
        marks = self.producer.marks
        k = bisect.bisect_left(marks, (idx, -math.inf))  # first mark with count >= idx
        return marks[k][1] if k < len(marks) else None


@dataclass
class ServedModel:
    wall: float  # when the probe first saw this version
    version: str
    max_event_ts: float


class FreshnessProbe(threading.Thread):
    """Polls serving's ``/v1/model`` and records each newly served version with the time it was first seen."""

    def __init__(self, serving_url: str, interval_s: float = 0.2) -> None:
        super().__init__(name="freshness-probe", daemon=True)
        self.url = f"{serving_url}/v1/model"
        self.interval_s = interval_s
        self.seen: list[ServedModel] = []
        self._stop_event = threading.Event()

    def stop(self) -> None:
        self._stop_event.set()

    def run(self) -> None:
        last: str | None = None
        while not self._stop_event.is_set():
            status, body = http_get(self.url, 2.0)
            if status == 200:
                info = json.loads(body)
                if str(info["version"]) != last:
                    last = str(info["version"])
                    self.seen.append(ServedModel(time.time(), last, float(info["max_event_ts"])))
            self._stop_event.wait(self.interval_s)

    def event_freshness(self, replay: ReplayThread, stride: int = 1) -> tuple[list[float], int]:
        """Per event (every ``stride``-th): seconds from produced to first served model covering its ts; and the
        number of events no served model covered."""
        out: list[float] = []
        missing = 0
        marks = replay.producer.marks if replay.producer else []
        seen = sorted(self.seen, key=lambda s: s.wall)
        # running max of max_event_ts over served versions, in serve order
        cover: list[tuple[float, float]] = []
        best = -math.inf
        for s in seen:
            best = max(best, s.max_event_ts)
            cover.append((best, s.wall))
        covers = [c[0] for c in cover]
        for i in range(0, len(replay.ts), stride):
            k = bisect.bisect_left(marks, (i + 1, -math.inf))
            if k >= len(marks):
                missing += 1
                continue
            produced = marks[k][1]
            j = bisect.bisect_left(covers, replay.ts[i])
            if j >= len(cover):
                missing += 1
                continue
            out.append(max(0.0, cover[j][1] - produced))
        return out, missing
