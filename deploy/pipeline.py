"""The streamrec pipeline on one broker: worker → trainer → serving (+ Prometheus), as the demo, the deploy tests
and benchmarks/bench_pipeline.py run it. :class:`PipelineConfig` holds ports, topics and directories;
:class:`Pipeline` turns it into the services' command lines, starts them under a :class:`Supervisor` and reads their
progress.

Distillation mode (``PipelineConfig(distill=True)``, ``python -m deploy demo --distill``; ExFM, docs/trainer.md
"Distillation"): the trainer is the teacher and also publishes its leak-free scores on ``teacher-scores``; a second
trainer, the student (service and Prometheus job ``student``), trains on the same samples joined with those records
into its own run dir, snapshot dir and ``student-snapshots`` topic; serving serves both (``--serve student=...
--serve teacher=...``) and routes every scenario to the student.

Example (needs a broker, so not a doctest)::

    with Supervisor(Path("runs/demo")) as sup:
        p = Pipeline(PipelineConfig(trainer_args=LAPTOP_TRAINER_ARGS), "127.0.0.1:9092", sup)
        p.create_topics()
        p.start()
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass
from pathlib import Path

from deploy.kafka import REPO_ROOT, free_port, port_in_use
from deploy.progress import Progress, read_progress
from deploy.prometheus_server import prometheus_service
from deploy.supervisor import Running, Service, Supervisor, python_module

TOPICS = ("impressions", "feedback", "samples", "deadletter", "snapshots", "user_state")
DISTILL_TOPICS = ("teacher-scores", "student-snapshots")  # created too in distillation mode
SNAPSHOT_TOPICS = frozenset({"snapshots", "student-snapshots"})  # one partition: announcements stay in order


# The `python -m trainer` flags of the local pipeline (`make demo`, the pipeline benchmark): a named model preset
# (model/presets.py; `laptop` by default: width 32, one block, 32 history / 16 real-time tokens, tables capped
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

# The student's `python -m trainer` flags in distillation mode, next to its preset's: a batch waits up to 30 s for
# its samples' teacher records. Teacher and student read the same samples from the start of the topic, and on a
# busy laptop the teacher is often the slower one: with the trainer's default 2 s most samples would train on labels
# only. A sample whose record never comes (the teacher died) still trains, 30 s later. Its own init seed: with the
# teacher's preset (both `laptop` by default) it would otherwise start as an exact copy of the teacher.
STUDENT_DISTILL_ARGS: tuple[str, ...] = ("--distill-wait-s", "30", "--seed", "1")


def preset_of(args: tuple[str, ...]) -> str:
    """The value of ``--preset`` in trainer flags ``args``, "" when absent (serving then accepts any preset).

    Example:
        >>> preset_of(trainer_preset_args("base")), preset_of(("--threads", "1"))
        ('base', '')
    """
    found = ""
    for i, a in enumerate(args):  # the last one wins, as in argparse
        if a == "--preset" and i + 1 < len(args):
            found = args[i + 1]
        elif a.startswith("--preset="):
            found = a.removeprefix("--preset=")
    return found


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
    # Distillation mode: `trainer` is the teacher (--teacher-scores-topic teacher-scores) and a `student` trainer
    # runs with --distill-from teacher-scores, STUDENT_DISTILL_ARGS and student_args (its preset: e.g.
    # trainer_preset_args("laptop")); serving serves both, each expecting the --preset of its trainer's flags.
    distill: bool = False
    student_port: int = 9103
    student_args: tuple[str, ...] = ()

    def topic(self, name: str) -> str:
        return f"{self.topic_prefix}{name}"


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
        # Distillation mode: the student's port and directories (its run dir holds its metrics.jsonl).
        self.student_port = pick_port(config.student_port) if config.distill else 0
        self.student_dir = config.run_dir / "student"
        self.student_snapshot_dir = self.student_dir / "snapshots"
        self.student_checkpoint_dir = self.student_dir / "checkpoints"

    # -- addresses
    @property
    def worker_metrics(self) -> str:
        return f"http://127.0.0.1:{self.worker_port}/metrics"

    @property
    def trainer_metrics(self) -> str:
        return f"http://127.0.0.1:{self.trainer_port}/metrics"

    @property
    def student_metrics(self) -> str | None:
        """The student trainer's /metrics URL in distillation mode, else None."""
        return f"http://127.0.0.1:{self.student_port}/metrics" if self.config.distill else None

    @property
    def trainer_names(self) -> tuple[str, ...]:
        """The trainer services: ("trainer",), and "student" in distillation mode."""
        return ("trainer", "student") if self.config.distill else ("trainer",)

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
            for name in TOPICS + (DISTILL_TOPICS if self.config.distill else ()):
                cfg = {"cleanup.policy": "compact"} if name == "user_state" else {}
                parts = 1 if name in SNAPSHOT_TOPICS else self.config.partitions
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
        """The trainer; in distillation mode the teacher, publishing its scores on ``teacher-scores``."""
        c = self.config
        teacher = ("--teacher-scores-topic", c.topic("teacher-scores")) if c.distill else ()
        return Service("trainer", python_module(
            "trainer", "--bootstrap", self.bootstrap, "--topic", c.topic("samples"),
            "--deadletter-topic", c.topic("deadletter"), "--snapshots-topic", c.topic("snapshots"),
            "--run-dir", str(c.run_dir / "trainer"), "--snapshot-dir", str(self.snapshot_dir),
            "--checkpoint-dir", str(self.checkpoint_dir), "--snapshot-every-s", str(c.snapshot_every_s),
            "--snapshot-idle-s", str(c.snapshot_idle_s), "--metrics-port", str(self.trainer_port), *teacher,
            *c.trainer_args),
            ready_url=self.trainer_metrics)

    def student_service(self) -> Service:
        """The distillation student: the same samples joined with the teacher's records, its own directories and
        snapshots topic. It only counts undecodable samples (the teacher already dead-letters them)."""
        c = self.config
        return Service("student", python_module(
            "trainer", "--bootstrap", self.bootstrap, "--topic", c.topic("samples"), "--deadletter-topic", "",
            "--snapshots-topic", c.topic("student-snapshots"), "--run-dir", str(self.student_dir),
            "--snapshot-dir", str(self.student_snapshot_dir), "--checkpoint-dir", str(self.student_checkpoint_dir),
            "--snapshot-every-s", str(c.snapshot_every_s), "--snapshot-idle-s", str(c.snapshot_idle_s),
            "--metrics-port", str(self.student_port), "--distill-from", c.topic("teacher-scores"),
            *STUDENT_DISTILL_ARGS, *c.student_args),
            ready_url=f"http://127.0.0.1:{self.student_port}/metrics")

    def served_models(self) -> tuple[str, ...]:
        """Serving's model flags: the trainer's snapshots (directory and topic); in distillation mode
        ``--serve student=DIR,topic=T,preset=P --serve teacher=... --route '*=student'`` (every scenario scored by
        the student, as ExFM serves; each model expects the --preset of its trainer's flags, if any)."""
        c = self.config
        if not c.distill:
            return ("--snapshots-topic", c.topic("snapshots"), "--snapshot-dir", str(self.snapshot_dir))

        def serve(name: str, snapshot_dir: Path, topic: str, trainer_args: tuple[str, ...]) -> tuple[str, str]:
            preset = preset_of(trainer_args)
            return "--serve", f"{name}={snapshot_dir},topic={topic}" + (f",preset={preset}" if preset else "")

        return (*serve("student", self.student_snapshot_dir, c.topic("student-snapshots"), c.student_args),
                *serve("teacher", self.snapshot_dir, c.topic("snapshots"), c.trainer_args), "--route", "*=student")

    def serving_service(self) -> Service:
        c = self.config
        return Service("serving", python_module(
            "serving", "--bootstrap", self.bootstrap, "--port", str(self.serving_port), *self.served_models(),
            "--user-state-topic", c.topic("user_state"), "--log-level", "warning", *c.serving_args),
            ready_url=f"{self.serving_url}/healthz")

    def start(self) -> None:
        """Start every service and wait until each answers its readiness URL."""
        self.config.run_dir.mkdir(parents=True, exist_ok=True)
        services = [self.worker_service(), self.trainer_service()]
        if self.config.distill:
            services.append(self.student_service())
        services.append(self.serving_service())
        for svc in services:
            self.sup.start(svc)
        for svc in services:
            self.sup.wait_ready(svc.name, self.config.ready_timeout_s)
        if self.config.with_prometheus:
            targets = {"stream": f"127.0.0.1:{self.worker_port}", "trainer": f"127.0.0.1:{self.trainer_port}"}
            if self.config.distill:
                targets["student"] = f"127.0.0.1:{self.student_port}"
            targets["serving"] = f"127.0.0.1:{self.serving_port}"
            prom = prometheus_service(self.config.run_dir, targets, port=self.config.prometheus_port)
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
        """One reading of every service's /metrics (see :func:`deploy.progress.read_progress`)."""
        return read_progress(self.worker_metrics, self.trainer_metrics, self.serving_url, self.student_metrics)

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
