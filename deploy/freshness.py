"""Wall-clock freshness of the pipeline: time from an event being produced to a served model whose snapshot's
``max_event_ts`` covers it. :class:`ReplayThread` replays in-process and keeps a produce timeline (so historical
timestamps still map to wall time); :class:`FreshnessProbe` polls serving's ``/v1/model`` and records each newly
served version (:class:`ServedVersion`); :meth:`FreshnessProbe.event_freshness` joins the two.

Example (needs a broker and the running pipeline, so not a doctest)::

    probe = FreshnessProbe("http://127.0.0.1:8000"); probe.start()
    rt = ReplayThread(events, ReplayConfig(bootstrap=bootstrap)); rt.start(); rt.join()
    probe.stop(); probe.join()
    seconds, missing = probe.event_freshness(rt)
"""

from __future__ import annotations

import bisect
import json
import math
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from deploy.supervisor import http_get


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
class ServedVersion:
    """A model version the probe saw served: when it was first seen and the newest event its snapshot covers.

    Example:
        >>> ServedVersion(wall=1700000000.0, version="7", max_event_ts=881250949.0).version
        '7'
    """

    wall: float  # when the probe first saw this version
    version: str
    max_event_ts: float


class FreshnessProbe(threading.Thread):
    """Polls serving's ``/v1/model`` and records each newly served version with the time it was first seen."""

    def __init__(self, serving_url: str, interval_s: float = 0.2) -> None:
        super().__init__(name="freshness-probe", daemon=True)
        self.url = f"{serving_url}/v1/model"
        self.interval_s = interval_s
        self.seen: list[ServedVersion] = []
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
                    self.seen.append(ServedVersion(time.time(), last, float(info["max_event_ts"])))
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
