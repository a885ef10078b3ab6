"""The HTTP API (FastAPI; OpenAPI at ``/openapi.json``, docs at ``/docs``).

Endpoints:
    ``POST /v1/score``  score candidates for one user in one scenario (user-level: the user is encoded once) with
                        the model the scenario is routed to (``model_name`` in the response).
    ``GET /v1/model``   the default route's snapshot (version, its times, model age and data freshness), every
                        served model's (``models``, null before its first snapshot) and the ``routes``.
    ``GET /healthz``    the process is up (always 200 while it answers).
    ``GET /readyz``     200 once every routed model has a snapshot loaded, else 503.
    ``GET /metrics``    Prometheus text exposition of the worker's registry.

Errors always have the body ``{"error": {"code", "message", "details"}}``: 400 malformed JSON or bad headers,
404/405 unknown routes, 413 body over the limit, 422 well-formed JSON that is not a valid request (wrong types,
empty or too many candidates, unbuildable features), 503 the routed model has no snapshot yet. Bad input is never
a 5xx.

Example:
    >>> app = create_app(ServingConfig(kafka_bootstrap=None), start_background=False)
    >>> sorted(r for r in app.openapi()["paths"])
    ['/healthz', '/metrics', '/readyz', '/v1/model', '/v1/score']
"""

from __future__ import annotations

import asyncio
import logging
import math
import time
from collections.abc import AsyncIterator, Awaitable, Callable, MutableMapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import asynccontextmanager
from functools import partial
from typing import Annotated, Any

import torch
from fastapi import APIRouter, FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.openapi.utils import get_openapi
from fastapi.responses import JSONResponse, PlainTextResponse, Response
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest
from pydantic import BaseModel, ConfigDict, Field, StrictFloat, StrictInt, StrictStr, StringConstraints
from starlette.exceptions import HTTPException as StarletteHTTPException

from serving.config import Routes, ServingConfig
from serving.hotswap import ModelHolder
from serving.metrics import ServingMetrics
from serving.scoring import InputError, NonFiniteScore, ScoreResult, ServedModel, score_request
from serving.user_state import UserStateReplica
from streaming.fastjson import dumps
from streaming.spec import SampleSpec, spec_topic
from streaming.user_state import Candidate

log = logging.getLogger(__name__)

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]

ENDPOINTS = frozenset({"/v1/score", "/v1/model", "/healthz", "/readyz", "/metrics", "/openapi.json", "/docs"})

# -- request/response models -----------------------------------------------------------------------------------
Id = Annotated[str, StringConstraints(min_length=1, max_length=256)]
Key = Annotated[str, StringConstraints(min_length=1, max_length=128)]
FeatureValue = Annotated[StrictStr, StringConstraints(max_length=1024)] | StrictInt | StrictFloat
FiniteFloat = Annotated[StrictFloat | StrictInt, Field(allow_inf_nan=False)]
MAX_FEATURES = 64


class CandidateIn(BaseModel):
    """One item to score. ``item``/``context`` values are categorical (numbers are used as their string form,
    like the event contract); ``dense`` values are finite numbers."""

    model_config = ConfigDict(strict=True)

    item_id: Id
    item: dict[Key, FeatureValue] = Field(default_factory=dict, max_length=MAX_FEATURES)
    context: dict[Key, FeatureValue] = Field(default_factory=dict, max_length=MAX_FEATURES)
    dense: dict[Key, FiniteFloat] = Field(default_factory=dict, max_length=MAX_FEATURES)


class ScoreRequest(BaseModel):
    """Score ``candidates`` for ``user_id`` in ``scenario``; ``context`` applies to every candidate (a candidate's
    own ``context`` keys win). The user's history comes from the streaming side's state, never from the client."""

    model_config = ConfigDict(strict=True, json_schema_extra={"examples": [{
        "user_id": "u1", "scenario": "home", "context": {"hour": "20"},
        "candidates": [{"item_id": "i1", "item": {"genre": "drama"}}, {"item_id": "i2"}]}]})

    user_id: Id
    scenario: Id
    candidates: list[CandidateIn] = Field(min_length=1)
    context: dict[Key, FeatureValue] = Field(default_factory=dict, max_length=MAX_FEATURES)


class CandidateScore(BaseModel):
    item_id: str
    scores: dict[str, float] = Field(description="probability per task, e.g. {'click': 0.12, 'conversion': 0.01}")


class ScoreResponse(BaseModel):
    user_id: str
    scenario: str
    model_name: str = Field(description="the served model that scored this request (the scenario's route)")
    model_version: int | str
    request_ts: float = Field(description="the request time (epoch s) used for time gaps and cross features")
    cold_start: bool = Field(description="true when the user-state replica has no state for this user")
    candidates: list[CandidateScore]


class ModelInfo(BaseModel):
    """The served snapshot. Times are epoch seconds; all are wall clock except ``max_event_ts`` (event time: a
    replayed historical log's events may be decades old however fresh the model is)."""

    version: int | str
    path: str
    tasks: list[str]
    created_at: float = Field(description="when the trainer wrote the snapshot (trainer's wall clock)")
    max_event_ts: float = Field(description="largest event time in the samples trained on (event time)")
    max_produce_ts: float | None = Field(
        description="largest Kafka (produce-time) timestamp of the samples records trained on; null when the "
                    "snapshot does not record it")
    samples_trained: int
    loaded_at: float = Field(description="when this process swapped the snapshot in")
    seconds_since_update: float = Field(description="now − loaded_at")
    model_age_seconds: float = Field(description="now − created_at: how old the served model is")
    data_freshness_seconds: float | None = Field(
        description="loaded_at − max_produce_ts: wall seconds from the newest trained samples record being produced "
                    "to this model serving; null when unknown")


class ServedModels(ModelInfo):
    """``/v1/model``: the top-level fields are the default route's model; ``models`` has every served model."""

    models: dict[str, ModelInfo | None] = Field(
        description="every served model by name: its snapshot, or null while it has none loaded yet")
    routes: dict[str, str] = Field(description="scenario → model name; '*' is every other scenario")


class Health(BaseModel):
    status: str
    model_version: int | str | None
    user_states: int
    user_state_caught_up: bool


class Ready(BaseModel):
    ready: bool = Field(description="every model some route names has a snapshot loaded")
    model_version: int | str | None = Field(description="the default route's model's version")
    models: dict[str, int | str | None] = Field(description="every served model's version (null: none loaded yet)")


class ErrorBody(BaseModel):
    code: str
    message: str
    details: list[dict[str, Any]] = Field(default_factory=list)


class ErrorResponse(BaseModel):
    error: ErrorBody


ERRORS: dict[int | str, dict[str, Any]] = {
    400: {"model": ErrorResponse, "description": "malformed JSON or headers"},
    413: {"model": ErrorResponse, "description": "request body over the configured limit"},
    422: {"model": ErrorResponse, "description": "invalid request (types, empty or too many candidates)"},
}


def error_response(status: int, code: str, message: str, details: list[dict[str, Any]] | None = None) -> JSONResponse:
    return JSONResponse({"error": {"code": code, "message": message, "details": details or []}}, status_code=status)


# -- middleware: body limit + request metrics (pure ASGI, no per-request task) -----------------------------------
class LimitAndMeasure:
    """Reject bodies over ``max_body_bytes`` with 413 (checked on Content-Length and on the bytes actually read)
    and record every request's count and latency by endpoint and status."""

    def __init__(self, app: ASGIApp, max_body_bytes: int, metrics: ServingMetrics) -> None:
        self.app = app
        self.max_body = max_body_bytes
        self.metrics = metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        t0 = time.perf_counter()
        path = scope.get("path", "")
        endpoint = path if path in ENDPOINTS else "other"
        status = 500

        async def send_measured(msg: Message) -> None:
            nonlocal status
            if msg["type"] == "http.response.start":
                status = msg["status"]
            await send(msg)

        try:
            early = await self._read_body(scope, receive)
            if isinstance(early, Response):
                await early(scope, receive, send_measured)
                return
            await self.app(scope, early, send_measured)
        finally:
            dt = time.perf_counter() - t0
            self.metrics.requests.labels(endpoint=endpoint, status=str(status)).inc()
            self.metrics.request_latency.labels(endpoint=endpoint, status=str(status)).observe(dt)

    async def _read_body(self, scope: Scope, receive: Receive) -> Receive | Response:
        """Buffer the body (≤ limit) and return a replaying ``receive``, or the 4xx response to send instead."""
        headers = dict(scope.get("headers") or [])
        raw_len = headers.get(b"content-length")
        if raw_len is not None:
            try:
                declared = int(raw_len)
            except ValueError:
                self.metrics.bad_requests.labels(reason="bad_content_length").inc()
                return error_response(400, "bad_content_length", "Content-Length is not an integer")
            if declared > self.max_body:
                self.metrics.bad_requests.labels(reason="body_too_large").inc()
                return error_response(413, "body_too_large",
                                      f"request body is {declared} bytes; the limit is {self.max_body}")
        if scope.get("method") in ("GET", "HEAD", "OPTIONS") and raw_len is None:
            return receive
        chunks: list[bytes] = []
        size = 0
        while True:
            msg = await receive()
            if msg["type"] == "http.disconnect":
                chunks = []
                break
            body = msg.get("body", b"")
            size += len(body)
            if size > self.max_body:
                self.metrics.bad_requests.labels(reason="body_too_large").inc()
                return error_response(413, "body_too_large", f"request body exceeds the limit of {self.max_body} bytes")
            chunks.append(body)
            if not msg.get("more_body", False):
                break
        data = b"".join(chunks)
        sent = False

        async def replay() -> Message:
            nonlocal sent
            if not sent:
                sent = True
                return {"type": "http.request", "body": data, "more_body": False}
            return await receive()

        return replay


# -- the app ---------------------------------------------------------------------------------------------------
def _model_info(served: ServedModel) -> dict[str, Any]:
    now = time.time()
    meta = served.meta
    t = served.times()
    freshness = t.data_freshness()
    return {
        "version": meta.version, "path": served.path, "tasks": list(served.tasks),
        "created_at": t.created_at, "max_event_ts": float(meta.max_event_ts), "max_produce_ts": t.max_produce_ts,
        "samples_trained": int(meta.samples_trained), "loaded_at": t.loaded_at,
        "seconds_since_update": t.since_update(now), "model_age_seconds": t.model_age(now),
        "data_freshness_seconds": None if math.isnan(freshness) else freshness,
    }


def _candidate(c: CandidateIn) -> Candidate:
    return Candidate(item_id=c.item_id, item={k: str(v) for k, v in c.item.items()},
                     context={k: str(v) for k, v in c.context.items()},
                     dense={k: float(v) for k, v in c.dense.items()})


def _scored_candidates(cands: list[Candidate], result: ScoreResult) -> list[dict[str, Any]]:
    """``[{item_id, scores: {task: p}}]`` in request order from ``result.scores`` (task → one score per candidate)."""
    tasks = list(result.scores)
    cols = [result.scores[t] for t in tasks]
    return [{"item_id": c.item_id, "scores": dict(zip(tasks, vals, strict=True))}
            for c, vals in zip(cands, zip(*cols, strict=True), strict=True)]


class ServingParts:
    """What one app owns: its metrics (in ``registry``), one model holder per served model (``holders``, in
    configuration order; ``holder`` is the default route's), the routes, the user-state replica and the scoring
    thread pool; :meth:`running` starts and stops them around the app's life."""

    def __init__(self, config: ServingConfig, registry: CollectorRegistry,
                 sample_spec: SampleSpec | None = None) -> None:
        self.config = config
        self.registry = registry
        self.metrics = ServingMetrics(registry)
        self.holders = {m.name: ModelHolder(self.metrics, preset=m.preset, sample_spec=sample_spec, name=m.name)
                        for m in config.sources()}
        self.routes: Routes = config.routing()
        self.holder = self.holders[self.routes.default]
        self.replica = UserStateReplica(self.metrics)
        self.executor = ThreadPoolExecutor(max_workers=config.scoring_workers, thread_name_prefix="score")

    def start(self, background: bool) -> None:
        """Set torch's thread count; with ``background`` also follow the user-state topic (when Kafka is configured)
        and start every model's snapshot loader/poller/follower."""
        cfg = self.config
        torch.set_num_threads(cfg.torch_threads)
        if not background:
            return
        if cfg.kafka_bootstrap is not None:
            self.replica.follow(cfg.kafka_bootstrap, cfg.user_state_topic)
        for source in cfg.sources():
            self.holders[source.name].start(source.snapshot_dir, cfg.snapshot_poll_s, cfg.kafka_bootstrap,
                                            source.snapshots_topic, spec_topic(cfg.samples_topic))

    def stop(self) -> None:
        """Stop the snapshot machinery and the replica; drop queued scoring work."""
        for holder in self.holders.values():
            holder.stop()
        self.replica.stop()
        self.executor.shutdown(wait=False, cancel_futures=True)

    @asynccontextmanager
    async def running(self, background: bool) -> AsyncIterator[None]:
        """The app's lifespan: :meth:`start` on startup, :meth:`stop` on shutdown."""
        self.start(background)
        try:
            yield
        finally:
            self.stop()


NO_MODEL: dict[int | str, dict[str, Any]] = {
    503: {"model": ErrorResponse, "description": "the routed model has no snapshot loaded yet"}}


class Endpoints:
    """The route handlers over one app's :class:`ServingParts`, as bound methods: the hot path reads plain
    attributes (no dependency injection per request)."""

    def __init__(self, parts: ServingParts) -> None:
        self.config = parts.config
        self.registry = parts.registry
        self.metrics = parts.metrics
        self.holders = parts.holders
        self.routes = parts.routes
        self.holder = parts.holder
        self.replica = parts.replica
        self.executor = parts.executor

    def router(self) -> APIRouter:
        """The five endpoints, in the order the OpenAPI spec lists them."""
        router = APIRouter()
        router.add_api_route("/v1/score", self.score, methods=["POST"], response_model=ScoreResponse,
                             responses={**ERRORS, **NO_MODEL})
        router.add_api_route("/v1/model", self.model_info, methods=["GET"], response_model=ServedModels,
                             responses=NO_MODEL)
        router.add_api_route("/healthz", self.healthz, methods=["GET"], response_model=Health)
        router.add_api_route("/readyz", self.readyz, methods=["GET"], response_model=Ready,
                             responses={503: {"model": Ready, "description": "a routed model has no snapshot yet"}})
        router.add_api_route("/metrics", self.prometheus_metrics, methods=["GET"], response_class=PlainTextResponse)
        return router

    async def score(self, req: ScoreRequest) -> Response:
        """Score every candidate for every task with the scenario's routed model (the user is encoded once)."""
        n = len(req.candidates)
        if n > self.config.max_candidates:
            self.metrics.bad_requests.labels(reason="too_many_candidates").inc()
            return error_response(422, "too_many_candidates",
                                  f"{n} candidates; at most {self.config.max_candidates} per request")
        holder = self.holders[self.routes.model_for(req.scenario)]
        served = holder.current  # one read: this request uses this model to the end, whatever is swapped in
        if served is None:
            return error_response(503, "no_model", f"model {holder.name} (scenario {req.scenario!r}'s route) has "
                                                   "no snapshot loaded yet; see /readyz")
        state = self.replica.get(req.user_id)
        if state is None:
            self.metrics.cold_starts.inc()
        self.metrics.candidates.observe(n)
        cands = [_candidate(c) for c in req.candidates]
        context = {k: str(v) for k, v in req.context.items()}
        now = time.time()
        loop = asyncio.get_running_loop()
        try:
            result = await loop.run_in_executor(self.executor, score_request, served, state, req.user_id,
                                                req.scenario, cands, context, now, holder.user_cache)
        except InputError as e:
            self.metrics.bad_requests.labels(reason=e.reason).inc()
            return error_response(422, e.reason, e.detail)
        except NonFiniteScore as e:
            log.error("%s", e)
            return error_response(500, "nonfinite_score", str(e))
        self.metrics.scoring_latency.observe(result.build_s + result.model_s)
        body = {
            "user_id": req.user_id, "scenario": req.scenario, "model_name": holder.name,
            "model_version": served.meta.version,
            "request_ts": now, "cold_start": state is None, "candidates": _scored_candidates(cands, result),
        }
        return Response(dumps(body), media_type="application/json")  # orjson: ~4x faster than JSONResponse here

    async def model_info(self) -> Response:
        """The default route's snapshot and how old it is, every served model's and the routes."""
        served = self.holder.current
        models = {name: None if h.current is None else _model_info(h.current) for name, h in self.holders.items()}
        if served is None:
            loaded = [{"model": n, "loaded": m is not None} for n, m in models.items()]
            return error_response(503, "no_model", f"model {self.holder.name} (the default route) has no snapshot "
                                                   "loaded yet", loaded)
        return JSONResponse({**_model_info(served), "models": models, "routes": self.routes.as_dict()})

    async def healthz(self) -> Health:
        """Liveness: 200 whenever the process answers."""
        served = self.holder.current
        return Health(status="ok", model_version=None if served is None else served.meta.version,
                      user_states=len(self.replica), user_state_caught_up=self.replica.caught_up)

    async def readyz(self) -> JSONResponse:
        """Readiness: 200 only once every model some route names has a snapshot loaded."""
        versions = {n: None if h.current is None else h.current.meta.version for n, h in self.holders.items()}
        ready = all(self.holders[n].current is not None for n in self.routes.names())
        body = {"ready": ready, "model_version": versions[self.holder.name], "models": versions}
        return JSONResponse(body, status_code=200 if ready else 503)

    async def prometheus_metrics(self) -> Response:
        """Prometheus text exposition (``streamrec_serving_*``)."""
        return Response(generate_latest(self.registry), media_type=CONTENT_TYPE_LATEST)


# -- errors: every one as {"error": {"code", "message", "details"}} ------------------------------------------
def invalid_request_response(errors: Sequence[Any], metrics: ServingMetrics) -> JSONResponse:
    """400 ``invalid_json`` when the body does not parse, else 422 ``invalid_request`` (first 50 errors listed)."""
    if any(e.get("type") == "json_invalid" for e in errors):
        metrics.bad_requests.labels(reason="invalid_json").inc()
        return error_response(400, "invalid_json", "request body is not valid JSON",
                              [{"loc": list(e.get("loc", ())), "msg": str(e.get("msg", ""))} for e in errors])
    metrics.bad_requests.labels(reason="invalid_request").inc()
    details = [{"loc": [str(x) for x in e.get("loc", ())], "msg": str(e.get("msg", "")),
                "type": str(e.get("type", ""))} for e in errors[:50]]
    first = details[0] if details else {"loc": [], "msg": "invalid request"}
    return error_response(422, "invalid_request", f"{'.'.join(first['loc'])}: {first['msg']}", details)


async def on_http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
    """Starlette's own errors (unknown route, wrong method, unreadable body) in the error shape."""
    code = {400: "invalid_body", 404: "not_found", 405: "method_not_allowed"}.get(exc.status_code, "http_error")
    return error_response(exc.status_code, code, str(exc.detail))


async def on_error(request: Request, exc: Exception) -> JSONResponse:
    """500 for an unhandled exception: a bug, never the client's input."""
    log.exception("unhandled %s on %s %s", type(exc).__name__, request.method, request.url.path)
    return error_response(500, "internal_error", f"internal error ({type(exc).__name__})")


def add_error_handlers(app: FastAPI, metrics: ServingMetrics) -> None:
    """Install the handlers above on ``app`` (validation errors are counted in ``metrics``)."""

    async def on_invalid(request: Request, exc: RequestValidationError) -> JSONResponse:
        return invalid_request_response(exc.errors(), metrics)

    app.exception_handler(RequestValidationError)(on_invalid)
    app.exception_handler(StarletteHTTPException)(on_http_error)
    app.exception_handler(Exception)(on_error)


def openapi_with_limits(app: FastAPI, max_candidates: int) -> dict[str, Any]:
    """FastAPI's generated spec plus the configured candidate limit (so clients and fuzzers see it); built once and
    kept in ``app.openapi_schema`` like FastAPI's own."""
    if app.openapi_schema is None:
        spec = get_openapi(title=app.title, version=app.version, description=app.description, routes=app.routes)
        spec["components"]["schemas"]["ScoreRequest"]["properties"]["candidates"]["maxItems"] = max_candidates
        app.openapi_schema = spec
    return app.openapi_schema


def create_app(config: ServingConfig, registry: CollectorRegistry | None = None, *,
               start_background: bool = True, sample_spec: SampleSpec | None = None) -> FastAPI:
    """Build the serving app. With ``start_background`` the lifespan starts every model's snapshot
    loader/poller/follower and the user-state replica (and stops them on shutdown); tests may drive
    ``app.state.holders`` (``app.state.holder``: the default route's) themselves.
    ``sample_spec``: the streaming worker's, read at start (snapshots trained on other samples are rejected)."""
    parts = ServingParts(config, registry if registry is not None else CollectorRegistry(), sample_spec)
    app = FastAPI(title="streamrec serving", version="1", lifespan=lambda _app: parts.running(start_background),
                  description="User-level scoring with hot-swapped snapshots of the streamrec ranker.")
    app.state.config = config
    app.state.metrics = parts.metrics
    app.state.holder = parts.holder
    app.state.holders = parts.holders
    app.state.replica = parts.replica
    app.state.registry = parts.registry
    add_error_handlers(app, parts.metrics)
    app.include_router(Endpoints(parts).router())
    app.openapi = partial(openapi_with_limits, app, config.max_candidates)  # type: ignore[method-assign]
    app.add_middleware(LimitAndMeasure, max_body_bytes=config.max_body_bytes, metrics=parts.metrics)
    return app
