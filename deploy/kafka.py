"""The real Apache Kafka broker, run from Maven Central jars (no Docker).

``fetch`` resolves ``org.apache.kafka:kafka_2.13`` (plus its logging backend) with Maven into a jar cache;
``start`` launches ``kafka.Kafka`` on 127.0.0.1 and waits until a client can talk to it; ``stop``/``status`` use the
pid file in the broker's state directory.

Data is kept across stop/start: the KRaft log directory ``<state_dir>/data`` (topics, committed offsets, the cluster
metadata log) and its cluster id (``data/meta.properties``) are formatted only the first time; ``start(fresh=True)``
(``--fresh``) wipes them. A restart on the same state directory reuses the recorded client and controller ports when
the configured ones are 0, so clients of the previous run reconnect to the same address (``restart()`` does both).

Example (needs Java and the jars, so not a doctest)::

    broker = KafkaBroker(BrokerConfig(state_dir=Path("/tmp/k"), port=0))
    broker.start()
    broker.bootstrap  # '127.0.0.1:40123'
"""

from __future__ import annotations

import contextlib
import json
import os
import shlex
import shutil
import signal
import socket
import subprocess
import time
import uuid
from base64 import urlsafe_b64encode
from dataclasses import dataclass, field
from pathlib import Path

KAFKA_VERSION = "3.9.1"
REPO_ROOT = Path(__file__).resolve().parent.parent
POM = Path(__file__).resolve().parent / "kafka" / "pom.xml"
DEFAULT_CACHE = Path(os.environ.get("STREAMREC_CACHE", REPO_ROOT / ".cache"))
DEFAULT_STATE = DEFAULT_CACHE / "kafka-broker"


class BrokerError(RuntimeError):
    """A broker command failed for a reason the user can act on (printed without a stack trace)."""


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def port_in_use(port: int, host: str = "127.0.0.1") -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.settimeout(0.5)
        return s.connect_ex((host, port)) == 0


def jars_dir(cache: Path = DEFAULT_CACHE) -> Path:
    return cache / f"kafka-{KAFKA_VERSION}" / "libs"


def fetch_jars(cache: Path = DEFAULT_CACHE, quiet: bool = True) -> Path:
    """Resolve the broker jars into ``cache`` (idempotent: a complete cache is reused offline)."""
    libs = jars_dir(cache)
    marker = libs / ".complete"
    if marker.exists():
        return libs
    mvn = shutil.which("mvn")
    if mvn is None:
        raise BrokerError("Maven (`mvn`) is not installed; install it (e.g. `apt-get install maven`) to fetch Kafka jars")
    if shutil.which("java") is None:
        raise BrokerError("Java is not installed; Kafka needs Java 17+ (e.g. `apt-get install openjdk-17-jre-headless`)")
    libs.mkdir(parents=True, exist_ok=True)
    cmd = [mvn, "-B", "-f", str(POM), "package", f"-Dkafka.version={KAFKA_VERSION}", f"-Dkafka.libs.dir={libs}"]
    if quiet:
        cmd.insert(2, "-q")
    # Extra Maven flags (a mirror's settings.xml, offline mode...): STREAMREC_MVN_ARGS="-s /path/settings.xml".
    cmd[1:1] = shlex.split(os.environ.get("STREAMREC_MVN_ARGS", ""))
    proc = subprocess.run(cmd, capture_output=True, text=True, cwd=POM.parent)
    if proc.returncode != 0:
        tail = "\n".join((proc.stdout + proc.stderr).strip().splitlines()[-15:])
        raise BrokerError(f"could not fetch Kafka {KAFKA_VERSION} jars from Maven Central:\n{tail}")
    shutil.rmtree(POM.parent / "target", ignore_errors=True)
    if not any(libs.glob("kafka_2.13-*.jar")):
        raise BrokerError(f"Maven finished but no kafka_2.13 jar is in {libs}")
    marker.write_text(KAFKA_VERSION)
    return libs


@dataclass(frozen=True)
class BrokerConfig:
    """Where and how the single-node KRaft broker runs.

    Example:
        >>> BrokerConfig(port=9092).host
        '127.0.0.1'
    """

    state_dir: Path = DEFAULT_STATE
    port: int = 9092  # 0 = the port of the previous start on this state_dir if free, else a free port
    controller_port: int = 0  # 0 = likewise
    host: str = "127.0.0.1"
    heap: str = "512m"
    num_partitions: int = 4
    cache: Path = DEFAULT_CACHE
    ready_timeout_s: float = 90.0
    extra: dict[str, str] = field(default_factory=dict)


class KafkaBroker:
    """Start/stop/status of one local broker; state (logs, data, pid, port) lives in ``config.state_dir``.

    Example:
        >>> b = KafkaBroker(BrokerConfig(state_dir=Path("/tmp/kb")))
        >>> b.running()
        False
    """

    def __init__(self, config: BrokerConfig) -> None:
        self.config = config
        self.state_dir = config.state_dir
        self.data_dir = self.state_dir / "data"
        self.pid_file = self.state_dir / "broker.pid"
        self.info_file = self.state_dir / "broker.json"
        self.log_file = self.state_dir / "logs" / "broker.out"

    @property
    def bootstrap(self) -> str:
        info = self._info()
        if not info:
            raise BrokerError(f"no broker recorded in {self.state_dir}; run `python -m deploy kafka start`")
        return f"{self.config.host}:{info['port']}"

    def _info(self) -> dict[str, int] | None:
        try:
            data: dict[str, int] = json.loads(self.info_file.read_text())
            return data
        except (OSError, ValueError):
            return None

    def pid(self) -> int | None:
        """The broker's pid if the pid file names a live ``kafka.Kafka`` process (not a recycled pid)."""
        try:
            pid = int(self.pid_file.read_text().strip())
        except (OSError, ValueError):
            return None
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return None
        except PermissionError:
            return pid
        with contextlib.suppress(ChildProcessError, OSError):  # an exited child of ours is a zombie: reap it
            if os.waitpid(pid, os.WNOHANG)[0] == pid:
                return None
        try:
            cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
        except OSError:  # no /proc (macOS): trust the live pid
            return pid
        return pid if b"kafka.Kafka" in cmdline else None

    def running(self) -> bool:
        return self.pid() is not None

    def formatted(self) -> bool:
        """True once the log directory holds a formatted KRaft store (``meta.properties``)."""
        return (self.data_dir / "meta.properties").is_file()

    def cluster_id(self) -> str | None:
        """The cluster id in ``data/meta.properties`` (None before the first start)."""
        try:
            text = (self.data_dir / "meta.properties").read_text()
        except OSError:
            return None
        for line in text.splitlines():
            key, _, value = line.partition("=")
            if key.strip() == "cluster.id":
                return value.strip()
        return None

    def wipe(self) -> None:
        """Delete the broker's data (every topic, offset and the cluster id); refuses while it runs."""
        if self.running():
            raise BrokerError(f"the broker in {self.state_dir} is running (pid {self.pid()}); stop it before wiping")
        shutil.rmtree(self.data_dir, ignore_errors=True)

    def _write_configs(self, port: int, cport: int) -> Path:
        cfg_dir = self.state_dir / "config"
        cfg_dir.mkdir(parents=True, exist_ok=True)
        h = self.config.host
        props = {
            "process.roles": "broker,controller",
            "node.id": "1",
            "controller.quorum.voters": f"1@{h}:{cport}",
            "listeners": f"PLAINTEXT://{h}:{port},CONTROLLER://{h}:{cport}",
            "advertised.listeners": f"PLAINTEXT://{h}:{port}",
            "controller.listener.names": "CONTROLLER",
            "inter.broker.listener.name": "PLAINTEXT",
            "listener.security.protocol.map": "CONTROLLER:PLAINTEXT,PLAINTEXT:PLAINTEXT",
            "log.dirs": str(self.data_dir),
            "num.partitions": str(self.config.num_partitions),
            "offsets.topic.replication.factor": "1",
            "offsets.topic.num.partitions": "4",
            "transaction.state.log.replication.factor": "1",
            "transaction.state.log.min.isr": "1",
            "transaction.state.log.num.partitions": "4",
            "share.coordinator.state.topic.replication.factor": "1",
            "share.coordinator.state.topic.min.isr": "1",
            "min.insync.replicas": "1",
            "default.replication.factor": "1",
            "group.initial.rebalance.delay.ms": "0",
            "auto.create.topics.enable": "true",
            "log.cleaner.dedupe.buffer.size": str(16 * 1024 * 1024),
            "log.retention.hours": "168",
            "message.max.bytes": str(8 * 1024 * 1024),
            **self.config.extra,
        }
        server = cfg_dir / "server.properties"
        server.write_text("".join(f"{k}={v}\n" for k, v in props.items()))
        (cfg_dir / "log4j.properties").write_text(
            "log4j.rootLogger=INFO, file\n"
            "log4j.appender.file=org.apache.log4j.RollingFileAppender\n"
            f"log4j.appender.file.File={self.state_dir / 'logs' / 'server.log'}\n"
            "log4j.appender.file.MaxFileSize=20MB\nlog4j.appender.file.MaxBackupIndex=2\n"
            "log4j.appender.file.layout=org.apache.log4j.PatternLayout\n"
            "log4j.appender.file.layout.ConversionPattern=[%d] %p %m (%c)%n\n"
            "log4j.logger.kafka=INFO\nlog4j.logger.org.apache.kafka=INFO\n"
        )
        return server

    def _java(self, libs: Path, heap: str) -> list[str]:
        java = shutil.which("java")
        if java is None:
            raise BrokerError("Java is not installed; Kafka needs Java 17+ (e.g. `apt-get install openjdk-17-jre-headless`)")
        return [
            java,
            f"-Xmx{heap}",
            f"-Xms{heap}",
            "-server",
            "-XX:+UseG1GC",
            "-XX:MaxGCPauseMillis=20",
            "-Djava.awt.headless=true",
            f"-Dkafka.logs.dir={self.state_dir / 'logs'}",
            f"-Dlog4j.configuration=file:{self.state_dir / 'config' / 'log4j.properties'}",
            "-cp",
            f"{libs}/*",
        ]

    def _pick_ports(self) -> tuple[int, int]:
        """(client port, controller port): the configured ones, else the previous start's when free, else free."""
        info = self._info() or {}

        def pick(configured: int, key: str) -> int:
            if configured:
                return configured
            previous = int(info.get(key, 0))
            return previous if previous and not port_in_use(previous, self.config.host) else free_port()

        return pick(self.config.port, "port"), pick(self.config.controller_port, "controller_port")

    def start(self, fresh: bool = False) -> str:
        """Start the broker (or find it already running) and return its bootstrap address once a client can connect.

        The data in ``state_dir/data`` is kept: storage is formatted only when it is not formatted yet.
        ``fresh=True`` wipes it first (refused while the broker runs).
        """
        if self.running():
            if fresh:
                raise BrokerError(f"the broker in {self.state_dir} is running (pid {self.pid()}); "
                                  "stop it before starting fresh")
            info = self._info()
            if not info:
                raise BrokerError(f"a broker runs (pid {self.pid()}) but {self.info_file} is unreadable; stop it")
            self._wait_ready(int(info["port"]), None)
            return self.bootstrap
        libs = fetch_jars(self.config.cache)
        port, cport = self._pick_ports()
        if port_in_use(port, self.config.host):
            raise BrokerError(
                f"port {port} on {self.config.host} is already in use; choose another with --port or --port 0 for a free one"
            )
        if fresh:
            self.wipe()
        (self.state_dir / "logs").mkdir(parents=True, exist_ok=True)
        server = self._write_configs(port, cport)
        if not self.formatted():
            shutil.rmtree(self.data_dir, ignore_errors=True)  # a half-formatted directory from an interrupted format
            cluster_id = "-"
            while cluster_id.startswith("-"):  # argparse4j would read a leading '-' as an option (1 start in 64)
                cluster_id = urlsafe_b64encode(uuid.uuid4().bytes).decode().rstrip("=")
            fmt = subprocess.run(
                [*self._java(libs, "256m"), "kafka.tools.StorageTool", "format", "-t", cluster_id, "-c", str(server)],
                capture_output=True,
                text=True,
            )
            if fmt.returncode != 0:
                raise BrokerError(f"formatting Kafka storage failed:\n{(fmt.stdout + fmt.stderr)[-2000:]}")
        out = self.log_file.open("ab")
        proc = subprocess.Popen(
            [*self._java(libs, self.config.heap), "kafka.Kafka", str(server)],
            stdout=out,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
        )
        self.pid_file.write_text(str(proc.pid))
        self.info_file.write_text(json.dumps({"port": port, "controller_port": cport, "pid": proc.pid}))
        self._wait_ready(port, proc)
        return f"{self.config.host}:{port}"

    def _wait_ready(self, port: int, proc: subprocess.Popen[bytes] | None) -> None:
        """Wait until a metadata request on ``port`` succeeds; a broker that dies or never answers raises."""
        deadline = time.monotonic() + self.config.ready_timeout_s
        while time.monotonic() < deadline:
            if proc is not None and proc.poll() is not None:
                raise BrokerError(f"broker exited with code {proc.returncode}; see {self.log_file}\n{self._log_tail()}")
            if proc is None and not self.running():
                raise BrokerError(f"broker exited; see {self.log_file}\n{self._log_tail()}")
            if port_in_use(port, self.config.host) and self._metadata_ok(port):
                return
            time.sleep(0.25)
        if proc is not None:
            self.stop()
        raise BrokerError(f"broker not ready after {self.config.ready_timeout_s:.0f}s; see {self.log_file}")

    def restart(self, down_s: float = 0.0) -> str:
        """Stop the broker cleanly (SIGTERM), stay down ``down_s`` seconds, start it again on the same port with the
        same data; returns the bootstrap address (unchanged when the configured port is 0 or fixed)."""
        self.stop()
        if down_s > 0:
            time.sleep(down_s)
        return self.start()

    def _metadata_ok(self, port: int) -> bool:
        """True once the broker answers a metadata request (a listening socket is not enough in KRaft)."""
        try:
            from kafka import KafkaAdminClient

            admin = KafkaAdminClient(
                bootstrap_servers=f"{self.config.host}:{port}", request_timeout_ms=3000, client_id="readiness"
            )
            try:
                admin.list_topics()
                return True
            finally:
                admin.close()
        except Exception:
            return False

    def _log_tail(self, n: int = 20) -> str:
        try:
            return "\n".join(self.log_file.read_text(errors="replace").splitlines()[-n:])
        except OSError:
            return ""

    def stop(self, timeout_s: float = 30.0) -> bool:
        """Stop the broker (SIGTERM, then SIGKILL after ``timeout_s``); False if none was running."""
        pid = self.pid()
        if pid is None:
            self.pid_file.unlink(missing_ok=True)
            return False
        with contextlib.suppress(ProcessLookupError):
            os.killpg(pid, signal.SIGTERM)
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline and self._alive(pid):
            time.sleep(0.2)
        if self._alive(pid):
            with contextlib.suppress(ProcessLookupError):
                os.killpg(pid, signal.SIGKILL)
        self.pid_file.unlink(missing_ok=True)
        return True

    @staticmethod
    def _alive(pid: int) -> bool:
        try:
            # Reap it if it is our child; otherwise just probe.
            with contextlib.suppress(ChildProcessError):
                done, _ = os.waitpid(pid, os.WNOHANG)
                if done == pid:
                    return False
            os.kill(pid, 0)
            return True
        except ProcessLookupError:
            return False

    def status(self) -> dict[str, object]:
        info = self._info() or {}
        return {
            "running": self.running(),
            "bootstrap": f"{self.config.host}:{info['port']}" if info else None,
            "pid": self.pid(),
            "state_dir": str(self.state_dir),
            "data_dir": str(self.data_dir),
            "cluster_id": self.cluster_id(),
            "log": str(self.log_file),
            "kafka_version": KAFKA_VERSION,
        }
