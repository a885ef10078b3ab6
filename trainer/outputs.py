"""Where ``Trainer.run`` reports besides checkpoint and snapshot files: the JSONL metrics log and the snapshot
announcements on Kafka. Both are created closed with the trainer, opened by ``run`` and closed when it ends; while
closed, writes are dropped (``Trainer.snapshot()`` outside a run announces nothing).
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import time
from pathlib import Path
from typing import Any, TextIO

log = logging.getLogger(__name__)


def jsonable(x: Any) -> Any:
    """NaN/inf → None so the JSONL log stays strict JSON.

    >>> jsonable({"auc": float("nan"), "n": [1, 2.5]})
    {'auc': None, 'n': [1, 2.5]}
    """
    if isinstance(x, float):
        return x if math.isfinite(x) else None
    if isinstance(x, dict):
        return {str(k): jsonable(v) for k, v in x.items()}
    if isinstance(x, list | tuple):
        return [jsonable(v) for v in x]
    return x


class MetricsLog:
    """Append-only JSON lines ``{"ts": <epoch s>, "event": ..., ...}`` (``runs/metrics.jsonl``), flushed per line.

    Example:
        >>> import json, tempfile
        >>> tmp = tempfile.TemporaryDirectory()
        >>> m = MetricsLog()
        >>> m.write({"event": "dropped"})                   # closed: nothing written
        >>> m.open(Path(tmp.name) / "run" / "metrics.jsonl")
        >>> m.write({"event": "start", "auc": float("nan")})
        >>> m.close()
        >>> line = json.loads((Path(tmp.name) / "run" / "metrics.jsonl").read_text())
        >>> line["event"], line["auc"]
        ('start', None)
        >>> tmp.cleanup()
    """

    def __init__(self) -> None:
        self._file: TextIO | None = None

    def open(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        self._file = open(path, "a", encoding="utf-8")  # noqa: SIM115 (closed by close())

    def write(self, obj: dict[str, Any]) -> None:
        if self._file is None:
            return
        self._file.write(json.dumps(jsonable({"ts": time.time(), **obj})) + "\n")
        self._file.flush()

    def close(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None


class SnapshotAnnouncer:
    """Publishes each snapshot's JSON announcement on the snapshots topic (key ``trainer``), flushed per message.

    A failed send is logged, not raised: the snapshot already exists on disk and serving can also poll the directory.

    Example (needs a broker, so not a doctest)::

        a = SnapshotAnnouncer()
        a.open("127.0.0.1:9092", "snapshots", reconnect_backoff_max_ms=1000)
        a.announce({"version": 3, "path": "/abs/runs/snapshots/snapshot-000000000003", ...})
        a.close()
    """

    def __init__(self) -> None:
        self._producer: Any = None  # kafka.KafkaProducer while open
        self._topic = ""

    def open(self, bootstrap: str, topic: str, reconnect_backoff_max_ms: int) -> None:
        from kafka import KafkaProducer

        self._producer = KafkaProducer(bootstrap_servers=bootstrap, linger_ms=0,
                                       reconnect_backoff_max_ms=reconnect_backoff_max_ms)
        self._topic = topic

    def announce(self, announcement: dict[str, Any]) -> None:
        if self._producer is None:
            return
        try:
            self._producer.send(self._topic, key=b"trainer", value=json.dumps(announcement).encode())
            self._producer.flush(timeout=10)
        except Exception as e:  # the snapshot exists on disk; serving can also poll the directory
            log.warning("could not announce snapshot %s: %s", announcement.get("version"), e)

    def close(self) -> None:
        if self._producer is not None:
            with contextlib.suppress(Exception):
                self._producer.close(timeout=10)
            self._producer = None
