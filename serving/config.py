"""The serving worker's configuration: frozen dataclasses, built only in ``serving.__main__``.

One process serves one or more named models (:class:`ModelSource`: a snapshot directory, an optional announcement
topic and preset check, each hot-swapped on its own); :class:`Routes` picks the model of each request's scenario.

Example:
    >>> cfg = ServingConfig(port=8001, kafka_bootstrap=None)
    >>> cfg.host, cfg.max_candidates, [m.name for m in cfg.sources()], cfg.routing().as_dict()
    ('127.0.0.1', 500, ['default'], {'*': 'default'})
    >>> two = ServingConfig(models=(ModelSource("student", Path("s")), ModelSource("teacher", Path("t"))),
    ...                     routes=(("search", "teacher"),))
    >>> two.routing().model_for("search"), two.routing().model_for("home")
    ('teacher', 'student')
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from model.presets import PRESETS

MODEL_NAME = re.compile(r"[a-z0-9_-]+")
DEFAULT_MODEL = "default"  # the one model's name when no ModelSource is configured
ANY_SCENARIO = "*"  # the route of every scenario without its own


@dataclass(frozen=True, slots=True)
class ModelSource:
    """One served model: where its snapshots come from (``python -m serving --serve NAME=DIR,topic=T,preset=P``).

    Attributes:
        name: the model's name (``[a-z0-9_-]+``): routes, ``/v1/score``'s ``model_name``, ``/v1/model``'s ``models``
            and the ``model`` label of the per-model metrics.
        snapshot_dir: directory its trainer writes snapshots into (polled every ``snapshot_poll_s``).
        snapshots_topic: topic on which its trainer announces snapshots; None: the directory only.
        preset: serve only snapshots of this model preset (a key of :data:`model.PRESETS`); None: any.

    Example:
        >>> ModelSource("student", Path("runs/student"), preset="laptop").preset
        'laptop'
        >>> ModelSource("Student", Path("x"))
        Traceback (most recent call last):
        ...
        ValueError: model name 'Student' must match [a-z0-9_-]+
    """

    name: str
    snapshot_dir: Path
    snapshots_topic: str | None = None
    preset: str | None = None

    def __post_init__(self) -> None:
        if not MODEL_NAME.fullmatch(self.name):
            raise ValueError(f"model name {self.name!r} must match {MODEL_NAME.pattern}")
        if not str(self.snapshot_dir):
            raise ValueError(f"model {self.name}: empty snapshot directory")
        if self.snapshots_topic is not None and not self.snapshots_topic:
            raise ValueError(f"model {self.name}: empty snapshots topic (leave it out for the directory only)")
        if self.preset is not None and self.preset not in PRESETS:
            raise ValueError(f"model {self.name}: unknown preset {self.preset!r} (one of {', '.join(sorted(PRESETS))})")


@dataclass(frozen=True)
class Routes:
    """Scenario → model name; a scenario without its own route goes to ``default``.

    Example:
        >>> r = Routes({"search": "teacher"}, default="student")
        >>> r.model_for("search"), r.model_for("home"), sorted(r.names())
        ('teacher', 'student', ['student', 'teacher'])
    """

    by_scenario: Mapping[str, str]
    default: str

    def model_for(self, scenario: str) -> str:
        """The name of the model that scores ``scenario``'s requests."""
        return self.by_scenario.get(scenario, self.default)

    def names(self) -> frozenset[str]:
        """Every model some route names (the default included): readiness waits for each of them."""
        return frozenset(self.by_scenario.values()) | {self.default}

    def as_dict(self) -> dict[str, str]:
        """``{"*": default, scenario: name, ...}`` (``/v1/model``'s ``routes``)."""
        return {ANY_SCENARIO: self.default, **self.by_scenario}


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
        models: the served models; empty: one model named ``default`` from ``snapshot_dir``, ``snapshots_topic``
            and ``preset`` (which must then stay unset: each :class:`ModelSource` names its own).
        routes: ``(scenario, model name)`` pairs; scenario ``*`` is the default route (without one: the first
            model). Every named model must be served.
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
    models: tuple[ModelSource, ...] = ()
    routes: tuple[tuple[str, str], ...] = ()

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
        if self.preset is not None and self.preset not in PRESETS:
            raise ValueError(f"unknown preset {self.preset!r} (one of {', '.join(sorted(PRESETS))})")
        if self.models and self.preset is not None:
            raise ValueError("preset applies to the single default model; with models, give each its own preset")
        names = [m.name for m in self.sources()]
        dup = sorted({n for n in names if names.count(n) > 1})
        if dup:
            raise ValueError(f"model names must be unique: {', '.join(dup)} served twice")
        scenarios = [s for s, _ in self.routes]
        for scenario, name in self.routes:
            if not scenario:
                raise ValueError(f"route to {name}: empty scenario")
            if scenarios.count(scenario) > 1:
                raise ValueError(f"scenario {scenario!r} is routed twice")
            if name not in names:
                raise ValueError(f"route {scenario}={name}: no model named {name!r} is served "
                                 f"(served: {', '.join(names)})")

    def sources(self) -> tuple[ModelSource, ...]:
        """The served models: ``models``, or the one ``default`` model of the single-model fields."""
        if self.models:
            return self.models
        return (ModelSource(DEFAULT_MODEL, self.snapshot_dir, self.snapshots_topic, self.preset),)

    def routing(self) -> Routes:
        """The routes as a lookup: ``*`` (else the first model) is the default."""
        table = dict(self.routes)
        default = table.pop(ANY_SCENARIO, self.sources()[0].name)
        return Routes(table, default)
