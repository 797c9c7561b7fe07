"""The FastAPI app: routes and wiring only, for an OpenAI-compatible guard proxy in front of any
chat-completions endpoint.

Endpoints: POST /v1/chat/completions (guarded, streaming or not), GET /v1/models (proxied),
POST /v1/guard (check a given answer, no upstream call), GET /health (ready = models loaded and
upstream answering; details only with a key), GET /metrics (Prometheus), GET /playground (a page to try
the guard in a browser; `mllm-protector playground` serves it without an upstream: guard, page, /health
and /metrics only). Every error the proxy produces has the OpenAI shape
`{"error": {"message", "type", "param", "code"}}`. The layers below:
protocol.py (request/response models), deps.py (auth, limits, body), upstream.py (the client),
chat.py (the chat service), guard.py (the Protector behind asyncio).
"""

from __future__ import annotations

import asyncio
import logging
import re
import time
import uuid
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any, Optional

import httpx
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.openapi.utils import get_openapi
from fastapi.responses import JSONResponse, Response
from starlette.exceptions import HTTPException as StarletteHTTPException

from ..errors import ProtectorError
from ..protector import Protector
from .audit import AuditLog
from .chat import ChatContext, ChatService
from .config import ProxyConfig
from .deps import ERROR_RESPONSES, ApiError, Gate, check_images_or_400, error_json, validate
from .guard import AsyncGuard, protector_from_config, verdict_info
from .metrics import Metrics
from .playground import install_playground
from .protocol import (
    ChatCompletionRequest,
    ErrorResponse,
    GuardRequest,
    GuardResponse,
    GuardWindow,
    detector_query,
    openapi_body,
    openapi_components,
)
from .screen import screen_request
from .upstream import Upstream

logger = logging.getLogger(__name__)

ENDPOINTS = ("/v1/chat/completions", "/v1/models", "/v1/guard", "/health", "/metrics", "/playground")
#: What a proxy without an upstream serves.
GUARD_ONLY = ("/v1/guard", "/health", "/metrics", "/playground")
_REQUEST_ID = re.compile(r"^[A-Za-z0-9._:-]{1,64}$")
#: Query parameters that may carry a key (clients sometimes send ?api_key=); masked before access logging.
_SECRET_PARAM = re.compile(rb"(?i)((?:^|(?<=&))(?:api[_-]?key|key|token|access[_-]?token|auth\w*))=[^&]*")


@dataclass
class ProxyState:
    """Everything the handlers share; one per app."""

    config: ProxyConfig
    metrics: Metrics
    gate: Gate
    upstream: Upstream
    chat: ChatService
    with_upstream: bool = True
    guard: Optional[AsyncGuard] = None
    load_error: Optional[str] = None
    audit_log: Optional[AuditLog] = None
    health_cache: tuple[float, dict[str, Any]] = (0.0, {})

    def audit(self, record: dict[str, Any]) -> None:
        """One audit line, when the audit log is on; a failed write is logged, never fatal."""
        if self.audit_log is not None:
            try:
                self.audit_log.write(record)
            except OSError as exc:
                logger.warning("audit log write failed: %s", exc)

    def ready_guard(self) -> AsyncGuard:
        """The guard, or 503 while the models load (or after they failed to)."""
        if self.guard is None:
            if self.load_error:
                raise ApiError(503, f"the guard models failed to load: {self.load_error}", "server_error", "guard_unavailable")
            raise ApiError(503, "the guard models are still loading; retry in a few seconds", "server_error",
                           "guard_loading", headers={"Retry-After": "5"})
        return self.guard


class RequestContext:
    """ASGI middleware: request id (kept from `x-request-id` when sane), key-like query parameters masked
    (the access log prints them), in-flight gauge, request counter."""

    def __init__(self, app: Any, metrics: Metrics):
        self.app = app
        self.metrics = metrics

    async def __call__(self, scope: dict, receive: Callable, send: Callable) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope.get("headers", [])}
        incoming = headers.get("x-request-id", "")
        rid = incoming if _REQUEST_ID.match(incoming) else uuid.uuid4().hex[:20]
        scope.setdefault("state", {})["request_id"] = rid
        if scope.get("query_string"):  # the server's access log prints this scope's query string
            scope["query_string"] = _SECRET_PARAM.sub(rb"\1=***", scope["query_string"])
        endpoint = scope["path"] if scope["path"] in ENDPOINTS else "other"
        status = {"code": 500}

        async def send_with_id(message: dict) -> None:
            if message["type"] == "http.response.start":
                status["code"] = message["status"]
                message.setdefault("headers", [])
                message["headers"] = list(message["headers"]) + [(b"x-request-id", rid.encode())]
            await send(message)

        self.metrics.in_flight.inc()
        try:
            await self.app(scope, receive, send_with_id)
        finally:
            self.metrics.in_flight.dec()
            self.metrics.requests.labels(endpoint, str(status["code"])).inc()


def create_app(config: ProxyConfig, protector: Optional[Protector] = None,
               transport: Optional[httpx.AsyncBaseTransport] = None, with_upstream: bool = True) -> FastAPI:
    """Build the proxy. Without `protector`, the models of `config.guard` load in the background
    (requests get 503 and /health says `unavailable` until they are ready). `with_upstream=False` serves
    only the guard and the playground (no chat, no model list, /health asks no upstream)."""
    metrics = Metrics()
    upstream = Upstream(config.upstream, metrics, transport)
    state = ProxyState(config=config, metrics=metrics, gate=Gate(config), upstream=upstream,
                       chat=ChatService(config, upstream, metrics, lambda record: state.audit(record)),
                       with_upstream=with_upstream)
    if protector is not None:
        state.guard = AsyncGuard(protector, config.guard, metrics, config.stream)
    if config.server.audit_log:
        state.audit_log = AuditLog(config.server.audit_log, config.server.audit_include_text)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        loader = asyncio.create_task(_load_guard(state)) if state.guard is None else None
        if state.guard is not None:
            state.guard.start()
        try:
            yield
        finally:
            if loader is not None:
                loader.cancel()
            await upstream.aclose()
            if state.guard is not None:
                await state.guard.aclose()
            if state.audit_log is not None:
                state.audit_log.close()

    app = FastAPI(title="mllm-protector guard proxy", version="0.1.0", lifespan=lifespan,
                  description="OpenAI-compatible proxy that checks every answer with MLLM-Protector's harm "
                              "detector and detoxifies harmful ones.")
    app.state.proxy = state
    app.add_middleware(RequestContext, metrics=metrics)
    _install_routes(app, state)
    install_playground(app)
    _install_error_handlers(app, ENDPOINTS if with_upstream else GUARD_ONLY)
    _install_openapi(app)
    return app


def _install_routes(app: FastAPI, state: ProxyState) -> None:
    if state.with_upstream:
        _install_upstream_routes(app, state)
    _install_guard_routes(app, state)


def _install_upstream_routes(app: FastAPI, state: ProxyState) -> None:
    config, gate = state.config, state.gate

    @app.post("/v1/chat/completions", openapi_extra=openapi_body(ChatCompletionRequest), responses=ERROR_RESPONSES,
              summary="Chat completion, guarded (OpenAI-compatible; stream=true supported)")
    async def chat_completions(request: Request) -> Response:
        rid = request.state.request_id
        key_id = gate.authenticate(request)
        release = gate.acquire(key_id)
        streaming = False
        try:
            guard = state.ready_guard()
            body = await gate.read_json(request)
            req = validate(ChatCompletionRequest, body)
            if any(isinstance(m.content, list) for m in req.messages):
                await asyncio.to_thread(check_images_or_400, req, config)
            if req.stream and (req.n or 1) > 1:
                raise ApiError(400, "n > 1 is not supported with stream=true by the guard proxy", param="n",
                               code="unsupported_parameter")
            payload = dict(body)
            payload["model"] = config.upstream.model_map.get(req.model, req.model)
            ctx = ChatContext(rid=rid, key_id=key_id, model=req.model, query=detector_query(req, config.guard.query),
                              t0=time.perf_counter())
            blocked = await screen_request(state.chat, guard, req, ctx)
            if blocked is not None:
                return blocked
            if req.stream:
                response = await state.chat.stream(guard, payload, ctx, release)
                streaming = True
                return response
            return await state.chat.complete(guard, payload, ctx)
        finally:
            if not streaming:
                release()

    @app.get("/v1/models", responses=ERROR_RESPONSES, summary="Models of the upstream (proxied), plus model_map aliases")
    async def list_models(request: Request) -> Response:
        gate.authenticate(request)
        models = await state.upstream.models(request.state.request_id)
        known = {m.get("id") for m in models if isinstance(m, dict)}
        for alias, target in config.upstream.model_map.items():
            if alias not in known:
                models.append({"id": alias, "object": "model", "created": 0, "owned_by": "mllm-protector", "root": target})
        return JSONResponse({"object": "list", "data": models})


def _install_guard_routes(app: FastAPI, state: ProxyState) -> None:
    config, gate, metrics = state.config, state.gate, state.metrics

    @app.post("/v1/guard", openapi_extra=openapi_body(GuardRequest), responses=ERROR_RESPONSES,
              response_model=GuardResponse, summary="Check (and detoxify) one answer without calling the upstream")
    async def guard_endpoint(request: Request) -> Response:
        t0 = time.perf_counter()
        rid = request.state.request_id
        key_id = gate.authenticate(request)
        release = gate.acquire(key_id)
        try:
            guard = state.ready_guard()
            req = validate(GuardRequest, await gate.read_json(request))
            gate.within_budget(req.response, req.query)
            verdict = await guard.protect(req.query, req.response, req.category, req.detoxify, owner=key_id)
        finally:
            release()
        metrics.verdicts.labels(verdict.action, "guard").inc()
        metrics.guard_seconds.labels("guard").observe(time.perf_counter() - t0)
        state.audit({"request_id": rid, "endpoint": "/v1/guard", "key": key_id, "status": 200, **verdict_info(verdict),
                     "latency_ms": round((time.perf_counter() - t0) * 1000, 1),
                     "query": req.query, "original": req.response, "text": verdict.text})
        result = GuardResponse(id=f"guard-{rid}", text=verdict.text, harmful=verdict.harmful, score=verdict.score,
                               final_score=verdict.final_score, threshold=guard.threshold, action=verdict.action,
                               rounds=verdict.rounds, timings={k: round(v, 2) for k, v in verdict.timings.items()},
                               error=verdict.error, category=verdict.category)
        found = verdict.detection
        if found is not None and (not config.server.api_keys or gate.has_valid_key(request)):
            result.parts = found.parts
            result.windows = [GuardWindow(part=p, start=a, end=b, score=round(s, 4))
                              for (p, a, b), s in zip(found.window_spans, found.window_scores, strict=True)]
        return JSONResponse(result.model_dump())

    @app.get("/health", summary="Ready when the guard models are loaded and the upstream answers; details only with a key")
    async def health(request: Request) -> Response:
        gate.authenticate(request, public=config.server.public_health)
        now = time.monotonic()
        cached_at, upstream = state.health_cache
        if not state.with_upstream:
            upstream = {"ok": True, "note": "no upstream: this proxy serves only the guard and the playground"}
        elif now - cached_at > 2.0 or not upstream:
            upstream = await state.upstream.probe()
            state.health_cache = (now, upstream)
        guard_status = "ready" if state.guard is not None else ("error" if state.load_error else "loading")
        ok = guard_status == "ready" and upstream["ok"]
        body: dict[str, Any] = {"status": "ok" if ok else "unavailable"}
        if gate.has_valid_key(request):
            body.update(guard=guard_status, upstream=upstream)
            if state.load_error:
                body["error"] = state.load_error
        return JSONResponse(body, status_code=200 if ok else 503)

    @app.get("/metrics", summary="Prometheus metrics")
    async def metrics_endpoint(request: Request) -> Response:
        gate.authenticate(request, public=config.server.public_health)
        return Response(metrics.render(), media_type="text/plain; version=0.0.4; charset=utf-8")


async def _load_guard(state: ProxyState) -> None:
    """Load the models in a thread; a failure is kept for /health and the 503s instead of crashing the server."""
    try:
        protector = await asyncio.to_thread(protector_from_config, state.config.guard, state.config.stream)
    except ProtectorError as exc:
        state.load_error = str(exc)
        logger.error("guard models failed to load: %s", exc)
        return
    except Exception as exc:  # any load failure is reported the same way
        state.load_error = f"{type(exc).__name__}: {exc}"
        logger.error("guard models failed to load: %s", state.load_error)
        return
    state.guard = AsyncGuard(protector, state.config.guard, state.metrics, state.config.stream)
    state.guard.start()
    logger.info("guard models loaded (threshold %.3f)", state.guard.threshold)


# --- app-wide handlers -------------------------------------------------------------------------

def _install_error_handlers(app: FastAPI, endpoints: tuple[str, ...]) -> None:
    @app.exception_handler(ApiError)
    async def api_error(request: Request, exc: ApiError) -> JSONResponse:
        return error_json(exc.status, exc.message, exc.type, exc.code, exc.param, exc.headers)

    @app.exception_handler(RequestValidationError)
    async def validation_error(request: Request, exc: RequestValidationError) -> JSONResponse:
        first = exc.errors()[0] if exc.errors() else {"loc": (), "msg": "invalid request"}
        return error_json(400, f"invalid request: {'.'.join(str(p) for p in first['loc'])}: {first['msg']}",
                          "invalid_request_error", "invalid_request")

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        if exc.status_code == 404:
            message = f"unknown path {request.url.path}; this proxy serves {', '.join(endpoints)}"
        elif exc.status_code == 405:
            message = f"method {request.method} is not allowed on {request.url.path}"
        else:
            message = str(exc.detail)
        return error_json(exc.status_code, message, "invalid_request_error", "not_found" if exc.status_code == 404 else None,
                          headers=getattr(exc, "headers", None))

    @app.exception_handler(Exception)
    async def unexpected(request: Request, exc: Exception) -> JSONResponse:
        rid = getattr(request.state, "request_id", "?")
        logger.exception("unhandled error in request %s", rid)
        return error_json(500, f"internal proxy error (request {rid}); see the proxy log", "server_error", "internal_error",
                          headers={"x-request-id": rid})  # this answer bypasses the request-id middleware


def _install_openapi(app: FastAPI) -> None:
    """Declare the hand-read request bodies in the OpenAPI schema (for clients and schemathesis)."""

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            schema = get_openapi(title=app.title, version=app.version, description=app.description, routes=app.routes)
            schema.setdefault("components", {}).setdefault("schemas", {}).update(
                openapi_components(ChatCompletionRequest, GuardRequest, GuardResponse, ErrorResponse))
            app.openapi_schema = schema
        return app.openapi_schema

    app.openapi = openapi  # type: ignore[method-assign]
