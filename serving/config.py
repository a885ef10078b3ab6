"""The serving worker's configuration: one frozen dataclass, built only in ``serving.__main__``.

Example:
    >>> cfg = ServingConfig(port=8001, kafka_bootstrap=None)
    >>> cfg.host, cfg.max_candidates
    ('127.0.0.1', 500)
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Literal


@dataclass(frozen=True, slots=True)
class ServingConfig:
    """Everything ``python -m serving`` can be told; defaults run on a CPU laptop against a local broker.

    Attributes:
        host / port: HTTP bind address (127.0.0.1:8000 by default; /metrics is served on the same port).
        kafka_bootstrap: ``host:port`` of Kafka, or None to run without Kafka (snapshot directory polling only,
            every user is a cold start).
        snapshots_topic: topic on which the trainer announces snapshots (JSON {version, path, ...}).
        user_state_topic: compacted topic with the streaming worker's per-user state (key = user_id).
        snapshot_dir: directory the trainer writes snapshots into.
        snapshot_poll_s: seconds between scans of ``snapshot_dir`` (0 disables polling: announcements only).
        max_candidates: most candidates one /v1/score request may carry (more → 422).
        max_body_bytes: largest accepted request body (more → 413).
        torch_threads: intra-op threads torch uses for scoring (``torch.set_num_threads``).
        scoring_workers: threads that run scoring off the event loop.
        keep_alive_s: idle HTTP keep-alive timeout; keep it above clients' pool expiry (httpx: 5 s) so a client
            never reuses a connection the server is closing.
        log_level: level of the ``serving`` loggers (libraries log at WARNING).
        preset: serve only snapshots of this model preset (``RankerConfig.preset``, a key of
            :data:`model.PRESETS`); others are rejected (``wrong_preset``). None serves any snapshot.
        samples_topic: the streaming worker's samples topic; its sample spec is read from ``<samples_topic>.spec``
            (snapshots trained on other samples are rejected, ``wrong_sample_spec``).
        sample_spec_wait_s: at start, how long to wait for that spec (0: take what is there; it is followed later).
    """

    host: str = "127.0.0.1"
    port: int = 8000
    kafka_bootstrap: str | None = "127.0.0.1:9092"
    snapshots_topic: str = "snapshots"
    user_state_topic: str = "user_state"
    snapshot_dir: Path = Path("runs/snapshots")
    snapshot_poll_s: float = 2.0
    max_candidates: int = 500
    max_body_bytes: int = 2 * 1024 * 1024
    torch_threads: int = 1
    scoring_workers: int = 2
    keep_alive_s: int = 15
    log_level: Literal["debug", "info", "warning", "error"] = "info"
    preset: str | None = None
    samples_topic: str = "samples"
    sample_spec_wait_s: float = 0.0

    def __post_init__(self) -> None:
        if not 0 <= self.port <= 65535:
            raise ValueError(f"port must be in [0, 65535], got {self.port}")
        if self.max_candidates < 1:
            raise ValueError(f"max_candidates must be >= 1, got {self.max_candidates}")
        if self.max_body_bytes < 1024:
            raise ValueError(f"max_body_bytes must be >= 1024, got {self.max_body_bytes}")
        if self.torch_threads < 1 or self.scoring_workers < 1 or self.keep_alive_s < 1:
            raise ValueError("torch_threads, scoring_workers and keep_alive_s must be >= 1")
        if self.sample_spec_wait_s < 0:
            raise ValueError(f"sample_spec_wait_s must be >= 0, got {self.sample_spec_wait_s}")
        if self.snapshot_poll_s < 0:
            raise ValueError(f"snapshot_poll_s must be >= 0, got {self.snapshot_poll_s}")
