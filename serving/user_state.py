"""The local read replica of the streaming worker's per-user state (the compacted ``user_state`` topic).

Mechanism: the streaming worker publishes each user's state (history, real-time behaviors, cross-feature
counters; :class:`streaming.user_state.UserState` JSON) to the compacted topic ``user_state`` with key = user_id,
every time it changes. Each serving process reads that topic from the beginning into an in-memory dict
(user_id → UserState) and keeps following it. Compaction keeps the topic about as large as the number of users,
so a (re)start replays one record per user; a tombstone (null value) deletes the user. Reads never leave the
process (no network hop per request) and any number of serving replicas can follow the same topic. Staleness is
the worker's publish delay plus the consume lag (milliseconds on a local broker). A user the replica has never
seen is a cold start: the request is scored with an empty history.

Example:
    >>> from prometheus_client import CollectorRegistry
    >>> from serving.metrics import ServingMetrics
    >>> r = UserStateReplica(ServingMetrics(CollectorRegistry()))
    >>> r.get("nobody") is None
    True
"""

from __future__ import annotations

import logging
import threading
from typing import Any

from serving.follow import TopicFollower
from serving.metrics import ServingMetrics
from streaming.user_state import UserState

log = logging.getLogger(__name__)


class UserStateReplica:
    """In-memory user_id → :class:`UserState`, fed by :meth:`apply` (from a :class:`TopicFollower` or a test).

    Records are decoded when they arrive (a bad record is counted and skipped, the previous state is kept), so a
    request only does a dict lookup. Dict reads and single-key writes are atomic under the GIL; no lock needed.
    """

    def __init__(self, metrics: ServingMetrics) -> None:
        self.metrics = metrics
        self._states: dict[str, UserState] = {}
        self._follower: TopicFollower | None = None
        metrics.user_states.set_function(lambda: len(self._states))

    def get(self, user_id: str) -> UserState | None:
        return self._states.get(user_id)

    def __len__(self) -> int:
        return len(self._states)

    @property
    def caught_up(self) -> bool:
        """True once the records present at start were applied (always True without Kafka)."""
        return self._follower is None or self._follower.caught_up.is_set()

    @property
    def caught_up_event(self) -> threading.Event | None:
        return None if self._follower is None else self._follower.caught_up

    def apply(self, key: bytes | None, value: bytes | None) -> None:
        """Apply one ``user_state`` record: a JSON state replaces the user's state; ``value=None`` deletes it."""
        if key is None:
            self.metrics.user_state_errors.labels(reason="no_key").inc()
            return
        try:
            user_id = key.decode()
        except UnicodeDecodeError:
            self.metrics.user_state_errors.labels(reason="bad_key").inc()
            return
        if value is None:
            self._states.pop(user_id, None)
            self.metrics.user_state_updates.inc()
            return
        try:
            state = UserState.from_json(value)
        except Exception as e:  # the streaming side owns the schema; any decode failure is one bad record
            self.metrics.user_state_errors.labels(reason="decode").inc()
            log.warning("user_state record for %r not decodable (%s: %s); keeping the previous state",
                        user_id, type(e).__name__, e)
            return
        self._states[user_id] = state
        self.metrics.user_state_updates.inc()

    def _on_record(self, rec: Any) -> None:
        self.apply(rec.key, rec.value)

    def follow(self, bootstrap: str, topic: str) -> None:
        """Start replaying and following ``topic`` in a background thread."""
        self._follower = TopicFollower(bootstrap, topic, self._on_record, start="beginning",
                                       on_error=lambda r: self.metrics.user_state_errors.labels(reason=r).inc())
        self._follower.start()

    def stop(self) -> None:
        if self._follower is not None:
            self._follower.stop()
