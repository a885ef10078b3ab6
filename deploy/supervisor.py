"""A small process supervisor for the local cluster: Kafka, streaming worker, trainer, serving, Prometheus.

Each service is a subprocess in its own process group (``start_new_session``) with its output in
``<run_dir>/logs/<name>.log``; :meth:`Supervisor.stop` sends SIGTERM to every group (newest first), waits, then
SIGKILLs what is left, so Ctrl-C leaves no orphans. Readiness is an HTTP GET answering 2xx (:func:`http_get`,
polled with :func:`wait_until`).

Example (starts a worker that needs a broker, so not a doctest)::

    with Supervisor(Path("/tmp/demo")) as sup:
        sup.start(Service("worker", ("python", "-m", "streaming", "worker"),
                          ready_url="http://127.0.0.1:9101/metrics"))
        sup.wait_ready("worker", timeout_s=60)
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType

from deploy.kafka import REPO_ROOT


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



def python_module(module: str, *args: str) -> tuple[str, ...]:
    """argv for ``python -m module args`` with this interpreter (the project's .venv under make)."""
    return (sys.executable, "-m", module, *args)
