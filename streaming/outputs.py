"""What the pure core emits besides :class:`streaming.sample.Sample`: late-label corrections and dead letters.

Late-positive policy (no silent loss): a feedback that arrives after its impression was released (the partition's
watermark already passed the impression's attribution window) cannot change the emitted sample. If it would have
made the impression positive for a task, the core emits a :class:`LateLabel` correction (and counts it in
``late_positives``); the worker writes it to the ``deadletter`` topic with reason ``late_positive`` so a consumer
may apply it (e.g. a delayed-label correction) or audit it. Like any late feedback that joins a released
impression (mapped action or not), it also becomes a history behavior of the user (``late_behaviors``), seen by
the samples emitted after it. Impressions that arrive at or below the watermark
(``late_impression``) and feedback that never matched an impression (``orphan_feedback``) become
:class:`DeadLetter` records. Everything is counted in :class:`streaming.core.CoreCounters`.

Example:
    >>> DeadLetter("orphan_feedback", "u1", "feedback", {"event_id": "f1"}).to_json()["reason"]
    'orphan_feedback'
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from streaming.sample import Sample


@dataclass(frozen=True, slots=True)
class LateLabel:
    """A positive label that arrived after its impression was released: a correction for ``sample_id``.

    ``sample_id`` is None when the impression's sample was not emitted yet (it will be emitted with the label it
    had at release; this record is the correction).
    """

    user_id: str
    impression_event_id: str
    impression_ts: float
    sample_id: str | None
    task: str
    action: str
    feedback_event_id: str
    feedback_ts: float
    reason: str = "late_positive"

    def to_json(self) -> dict[str, Any]:
        return {"reason": self.reason, "user_id": self.user_id, "impression_event_id": self.impression_event_id,
                "impression_ts": self.impression_ts, "sample_id": self.sample_id, "task": self.task,
                "action": self.action, "feedback_event_id": self.feedback_event_id, "feedback_ts": self.feedback_ts}


@dataclass(frozen=True, slots=True)
class DeadLetter:
    """An accepted-but-unusable event (``late_impression``, ``orphan_feedback``) with its canonical JSON."""

    reason: str
    user_id: str
    kind: str
    event: dict[str, Any] = field(default_factory=dict)
    detail: str = ""

    def to_json(self) -> dict[str, Any]:
        return {"reason": self.reason, "user_id": self.user_id, "kind": self.kind, "event": self.event,
                "detail": self.detail}


Output = Sample | LateLabel | DeadLetter
