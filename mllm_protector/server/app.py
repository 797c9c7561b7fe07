"""The FastAPI app: an OpenAI-compatible guard proxy in front of any chat-completions endpoint.

Endpoints: POST /v1/chat/completions (guarded, streaming or not), GET /v1/models (proxied),
POST /v1/guard (check a given answer, no upstream call), GET /health (ready = models loaded and
upstream answering), GET /metrics (Prometheus). Every error the proxy produces has the OpenAI shape
`{"error": {"message", "type", "param", "code"}}`.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import json
import logging
import math
import re
import time
import uuid
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Any, Callable, Optional

import httpx
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.openapi.utils import get_openapi
from fastapi.responses import JSONResponse, Response, StreamingResponse
from pydantic import BaseModel, ValidationError
from starlette.background import BackgroundTask
from starlette.exceptions import HTTPException as StarletteHTTPException

from ..errors import InputError, ProtectorError
from ..protector import RELEASED, SEVERITY, Protector, Verdict, clean_text
from .answers import choice_text, clean, content_text, replace_choice
from .audit import AuditLog
from .config import ProxyConfig
from .guard import AsyncGuard, protector_from_config, verdict_info
from .metrics import Metrics
from .schemas import (
    ChatCompletionRequest,
    ErrorResponse,
    GuardRequest,
    GuardResponse,
    check_images,
    detector_query,
    openapi_body,
    openapi_components,
)
from .streaming import StreamRelay, sse

logger = logging.getLogger(__name__)

#: Upstream statuses that are the client's business and pass through; any other becomes 502.
PASS_THROUGH_STATUS = {400, 404, 409, 413, 422, 429}
ENDPOINTS = ("/v1/chat/completions", "/v1/models", "/v1/guard", "/health", "/metrics")
_REQUEST_ID = re.compile(r"^[A-Za-z0-9._:-]{1,64}$")
#: Query parameters that may carry a key (clients sometimes send ?api_key=); masked before access logging.
_SECRET_PARAM = re.compile(rb"(?i)((?:^|(?<=&))(?:api[_-]?key|key|token|access[_-]?token|auth\w*))=[^&]*")
ERROR_RESPONSES: dict[int | str, dict[str, Any]] = {
    code: {"model": ErrorResponse, "description": text}
    for code, text in ((400, "Malformed JSON, wrong schema or bad image data"), (401, "Missing or invalid API key"),
                       (408, "Request body not received in time"), (413, "Request body too large"),
                       (429, "Too many concurrent requests for this key"),
                       (502, "Upstream unreachable or failing"), (503, "Models still loading"),
                       (504, "Upstream timed out"))
}


class ApiError(Exception):
    """An error answered in the OpenAI shape."""

    def __init__(self, status: int, message: str, type_: str = "invalid_request_error",
                 code: Optional[str] = None, param: Optional[str] = None, headers: Optional[dict[str, str]] = None):
        super().__init__(message)
        self.status, self.message, self.type, self.code, self.param = status, message, type_, code, param
        self.headers = headers or {}


def error_json(status: int, message: str, type_: str, code: Optional[str] = None, param: Optional[str] = None,
               headers: Optional[dict[str, str]] = None) -> JSONResponse:
    body = {"error": {"message": message, "type": type_, "param": param, "code": code}}
    return JSONResponse(body, status_code=status, headers=headers)


@dataclass
class ProxyState:
    """Everything the handlers share; one per app."""

    config: ProxyConfig
    metrics: Metrics
    guard: Optional[AsyncGuard] = None
    load_error: Optional[str] = None
    client: Optional[httpx.AsyncClient] = None
    audit: Optional[AuditLog] = None
    in_flight: dict[str, int] = field(default_factory=dict)
    health_cache: tuple[float, dict[str, Any]] = (0.0, {})


class RequestContext:
    """ASGI middleware: request id (kept from `x-request-id` when sane), in-flight gauge, request counter."""

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
               transport: Optional[httpx.AsyncBaseTransport] = None) -> FastAPI:
    """Build the proxy. Without `protector`, the models of `config.guard` load in the background
    (requests get 503 and /health says `loading` until they are ready)."""
    metrics = Metrics()
    state = ProxyState(config=config, metrics=metrics)
    if protector is not None:
        state.guard = AsyncGuard(protector, config.guard, metrics, config.stream)
    if config.server.audit_log:
        state.audit = AuditLog(config.server.audit_log, config.server.audit_include_text)

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        up = config.upstream
        state.client = httpx.AsyncClient(
            timeout=httpx.Timeout(up.timeout, connect=up.connect_timeout, pool=up.connect_timeout),
            limits=httpx.Limits(max_connections=up.max_connections, max_keepalive_connections=up.max_connections),
            transport=transport,
        )
        loader = None
        if state.guard is None:
            loader = asyncio.create_task(_load_guard(state))
        else:
            state.guard.start()
        try:
            yield
        finally:
            if loader is not None:
                loader.cancel()
            await state.client.aclose()
            if state.guard is not None:
                await state.guard.aclose()
            if state.audit is not None:
                state.audit.close()

    app = FastAPI(title="mllm-protector guard proxy", version="0.1.0", lifespan=lifespan,
                  description="OpenAI-compatible proxy that checks every answer with MLLM-Protector's harm "
                              "detector and detoxifies harmful ones.")
    app.state.proxy = state
    app.add_middleware(RequestContext, metrics=metrics)
    _install_error_handlers(app)
    _install_openapi(app)

    # --- shared steps -------------------------------------------------------------------------
    def bearer(request: Request) -> str:
        scheme, _, token = request.headers.get("authorization", "").partition(" ")
        return token.strip() if scheme.lower() == "bearer" else ""

    def known(token: str) -> bool:
        return any(hmac.compare_digest(token.encode(), k.encode()) for k in config.server.api_keys)

    def authenticate(request: Request, public: bool = False) -> str:
        """Key identity for limits and audit; 401 when a key is required and missing or wrong."""
        if public or not config.auth_required:
            return "client:" + (request.client.host if request.client else "unknown")
        token = bearer(request)
        if not token:
            raise ApiError(401, "missing API key: send 'Authorization: Bearer <key>'", "authentication_error",
                           "missing_api_key", headers={"WWW-Authenticate": "Bearer"})
        if not known(token):
            raise ApiError(401, "invalid API key", "authentication_error", "invalid_api_key",
                           headers={"WWW-Authenticate": "Bearer"})
        return "key:" + hashlib.sha256(token.encode()).hexdigest()[:10]

    def has_valid_key(request: Request) -> bool:
        """True when the request carries one of the configured keys (health details are only for them)."""
        token = bearer(request)
        return bool(token) and known(token)

    def acquire(key_id: str) -> Callable[[], None]:
        """Take one of the key's concurrency slots (429 when none is free); returns an idempotent release."""
        limit = config.server.per_key_concurrency
        if state.in_flight.get(key_id, 0) >= limit:
            raise ApiError(429, f"too many concurrent requests for this key (limit {limit}); retry shortly",
                           "rate_limit_error", "concurrency_limit_exceeded", headers={"Retry-After": "1"})
        state.in_flight[key_id] = state.in_flight.get(key_id, 0) + 1
        released = False

        def release() -> None:
            nonlocal released
            if not released:
                released = True
                state.in_flight[key_id] -= 1
                if state.in_flight[key_id] <= 0:
                    state.in_flight.pop(key_id, None)

        return release

    def ready_guard() -> AsyncGuard:
        if state.guard is None:
            if state.load_error:
                raise ApiError(503, f"the guard models failed to load: {state.load_error}", "server_error", "guard_unavailable")
            raise ApiError(503, "the guard models are still loading; retry in a few seconds", "server_error",
                           "guard_loading", headers={"Retry-After": "5"})
        return state.guard

    async def read_json(request: Request) -> dict[str, Any]:
        limit = config.server.max_body_bytes
        declared = request.headers.get("content-length")
        too_big = ApiError(413, f"request body exceeds the {limit} bytes this proxy accepts", code="request_too_large")
        if declared is not None:
            if not declared.isdigit():
                raise ApiError(400, "invalid Content-Length header", code="invalid_request")
            if int(declared) > limit:
                raise too_big
        body = bytearray()

        async def receive_all() -> None:
            async for chunk in request.stream():
                body.extend(chunk)
                if len(body) > limit:
                    raise too_big

        try:
            await asyncio.wait_for(receive_all(), config.server.body_timeout)
        except asyncio.TimeoutError:
            raise ApiError(408, f"request body not received within {config.server.body_timeout:g}s",
                           code="request_timeout") from None
        if not body.strip():
            raise ApiError(400, "request body is empty: send a JSON object", code="invalid_json")
        return parse_json(bytes(body))

    def upstream_headers(rid: str) -> dict[str, str]:
        # No request id upstream: some servers (llama-cpp-python) reject x-request-id values that are not UUIDs.
        headers: dict[str, str] = {}
        if config.upstream.api_key:
            headers["Authorization"] = f"Bearer {config.upstream.api_key}"
        return headers

    def redact(text: str) -> str:
        """Upstream text with the upstream key removed (an upstream may echo its Authorization header)."""
        key = config.upstream.api_key
        return text.replace(key, "***") if key else text

    def audit(record: dict[str, Any]) -> None:
        if state.audit is not None:
            try:
                state.audit.write(record)
            except OSError:
                logger.exception("audit log write failed")

    def count(outcome: Verdict, mode: str) -> None:
        metrics.verdicts.labels(outcome.action, mode).inc()

    # --- endpoints ----------------------------------------------------------------------------
    @app.post("/v1/chat/completions", openapi_extra=openapi_body(ChatCompletionRequest), responses=ERROR_RESPONSES,
              summary="Chat completion, guarded (OpenAI-compatible; stream=true supported)")
    async def chat_completions(request: Request) -> Response:
        rid = request.state.request_id
        key_id = authenticate(request)
        release = acquire(key_id)
        streaming = False
        try:
            guard = ready_guard()
            body = await read_json(request)
            req = _validate(ChatCompletionRequest, body)
            if any(isinstance(m.content, list) for m in req.messages):
                await asyncio.to_thread(_check_images_or_400, req, config)
            if req.stream and (req.n or 1) > 1:
                raise ApiError(400, "n > 1 is not supported with stream=true by the guard proxy", param="n",
                               code="unsupported_parameter")
            payload = dict(body)
            payload["model"] = config.upstream.model_map.get(req.model, req.model)
            query = detector_query(req, config.guard.query)
            ctx = _Ctx(rid=rid, key_id=key_id, model=req.model, query=query, t0=time.perf_counter(), redact=redact)
            if req.stream:
                response = await _stream(state, guard, payload, ctx, upstream_headers(rid), audit, count, release)
                streaming = True
                return response
            return await _complete(state, guard, payload, ctx, upstream_headers(rid), audit, count)
        finally:
            if not streaming:
                release()

    @app.get("/v1/models", responses=ERROR_RESPONSES, summary="Models of the upstream (proxied), plus model_map aliases")
    async def list_models(request: Request) -> Response:
        authenticate(request)
        assert state.client is not None
        url = config.upstream.url + "/models"
        try:
            reply = await state.client.get(url, headers=upstream_headers(request.state.request_id))
        except httpx.HTTPError as exc:
            raise _upstream_exception(exc, metrics, request.state.request_id) from None
        if reply.status_code >= 400:
            raise _upstream_status(reply, metrics, request.state.request_id, redact)
        try:
            data = reply.json()
            models = list(data["data"])
        except (ValueError, KeyError, TypeError):
            metrics.upstream_errors.labels("protocol").inc()
            raise ApiError(502, f"the upstream model server returned no model list (request {request.state.request_id})",
                           "upstream_error", "upstream_protocol") from None
        known = {m.get("id") for m in models if isinstance(m, dict)}
        for alias, target in config.upstream.model_map.items():
            if alias not in known:
                models.append({"id": alias, "object": "model", "created": 0, "owned_by": "mllm-protector", "root": target})
        return JSONResponse({"object": "list", "data": models})

    @app.post("/v1/guard", openapi_extra=openapi_body(GuardRequest), responses=ERROR_RESPONSES,
              response_model=GuardResponse, summary="Check (and detoxify) one answer without calling the upstream")
    async def guard_endpoint(request: Request) -> Response:
        t0 = time.perf_counter()
        rid = request.state.request_id
        key_id = authenticate(request)
        release = acquire(key_id)
        try:
            guard = ready_guard()
            req = _validate(GuardRequest, await read_json(request))
            size, budget = len(req.response) + len(req.query or ""), config.guard.max_request_chars
            if size > budget:
                raise ApiError(413, f"response and query have {size} characters, more than the per-request detector "
                               f"budget of {budget}; split the text and check the parts", code="detector_budget_exceeded")
            outcome = await guard.protect(req.query, req.response, req.category, req.detoxify)
        finally:
            release()
        count(outcome, "guard")
        metrics.guard_seconds.labels("guard").observe(time.perf_counter() - t0)
        audit({"request_id": rid, "endpoint": "/v1/guard", "key": key_id, "status": 200, **verdict_info(outcome),
               "latency_ms": round((time.perf_counter() - t0) * 1000, 1),
               "query": req.query, "original": req.response, "text": outcome.text})
        result = GuardResponse(id=f"guard-{rid}", text=outcome.text, harmful=outcome.harmful, score=outcome.score,
                               final_score=outcome.final_score, threshold=guard.threshold, action=outcome.action,  # type: ignore[arg-type]
                               rounds=outcome.rounds, timings={k: round(v, 2) for k, v in outcome.timings.items()},
                               error=outcome.error, category=outcome.category)
        return JSONResponse(result.model_dump())

    @app.get("/health", summary="Ready when the guard models are loaded and the upstream answers; details only with a key")
    async def health(request: Request) -> Response:
        authenticate(request, public=config.server.public_health)
        now = time.monotonic()
        cached_at, upstream = state.health_cache
        if now - cached_at > 2.0 or not upstream:
            upstream = await _probe_upstream(state)
            state.health_cache = (now, upstream)
        guard_status = "ready" if state.guard is not None else ("error" if state.load_error else "loading")
        ok = guard_status == "ready" and upstream["ok"]
        body: dict[str, Any] = {"status": "ok" if ok else "unavailable"}
        if has_valid_key(request):
            body.update(guard=guard_status, upstream=upstream)
            if state.load_error:
                body["error"] = state.load_error
        return JSONResponse(body, status_code=200 if ok else 503)

    @app.get("/metrics", summary="Prometheus metrics")
    async def metrics_endpoint(request: Request) -> Response:
        authenticate(request, public=config.server.public_health)
        return Response(metrics.render(), media_type="text/plain; version=0.0.4; charset=utf-8")

    return app


# --- request flow pieces (module level so they stay testable and short) ---------------------------

@dataclass
class _Ctx:
    rid: str
    key_id: str
    model: str
    query: str
    t0: float
    redact: Callable[[str], str]
    category: Optional[str] = None


def _finite(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):
        raise ValueError(f"number {text[:20]} is out of range")
    return value


def _no_constant(name: str) -> Any:
    raise ValueError(f"{name} is not a JSON number")


def parse_json(body: bytes) -> dict[str, Any]:
    """A JSON object from a request body; 400 for malformed JSON, nesting deeper than Python can parse,
    non-finite numbers (NaN, Infinity, 1e999) and invalid Unicode (lone surrogates)."""
    try:
        data = json.loads(body, parse_float=_finite, parse_constant=_no_constant)
    except RecursionError:
        raise ApiError(400, "request body is nested too deeply", code="invalid_json") from None
    except (ValueError, UnicodeDecodeError) as exc:
        raise ApiError(400, f"request body is not valid JSON: {str(exc)[:200]}", code="invalid_json") from None
    if not isinstance(data, dict):
        raise ApiError(400, f"request body must be a JSON object, got {type(data).__name__}", code="invalid_json")
    stack: list[Any] = [data]
    while stack:  # iterative: the depth json.loads accepted must not overflow here either
        value = stack.pop()
        if isinstance(value, dict):
            stack.extend(value.keys())
            stack.extend(value.values())
        elif isinstance(value, list):
            stack.extend(value)
        elif isinstance(value, str) and clean_text(value) != value:
            raise ApiError(400, "request body contains invalid Unicode (a lone surrogate escape such as \\ud800)",
                           code="invalid_json")
    return data


def _validate(model: type[BaseModel], data: dict[str, Any]) -> Any:
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        errors = exc.errors()
        parts = [f"{'.'.join(str(p) for p in e['loc']) or 'body'}: {e['msg']}" for e in errors[:3]]
        more = f" (and {len(errors) - 3} more)" if len(errors) > 3 else ""
        param = ".".join(str(p) for p in errors[0]["loc"]) if errors else None
        raise ApiError(400, "invalid request: " + "; ".join(parts) + more, param=param, code="invalid_request") from None


def _check_images_or_400(req: ChatCompletionRequest, config: ProxyConfig) -> None:
    try:
        check_images(req, config.server.allow_remote_images, config.server.max_image_bytes)
    except InputError as exc:
        raise ApiError(400, str(exc), code="invalid_image") from None


def _upstream_exception(exc: httpx.HTTPError, metrics: Metrics, rid: str) -> ApiError:
    """Map a transport failure to 502/503/504; the message names neither the upstream URL nor the error text."""
    logger.warning("upstream request %s failed: %s", rid, type(exc).__name__)
    if isinstance(exc, httpx.PoolTimeout):
        metrics.upstream_errors.labels("pool").inc()
        return ApiError(503, "the proxy is at its upstream connection limit; retry shortly", "server_error",
                        "upstream_pool_exhausted", headers={"Retry-After": "1"})
    if isinstance(exc, httpx.TimeoutException):
        metrics.upstream_errors.labels("timeout").inc()
        return ApiError(504, f"the upstream model server timed out (request {rid})", "upstream_error", "upstream_timeout")
    metrics.upstream_errors.labels("unreachable").inc()
    return ApiError(502, f"the upstream model server is unreachable (request {rid})", "upstream_error",
                    "upstream_unreachable")


def _upstream_status(reply: httpx.Response, metrics: Metrics, rid: str, redact: Callable[[str], str]) -> ApiError:
    """An upstream error answer: its body goes to the log (upstream key removed), never to the client.
    Client errors keep their status; anything else is a 502 (the operator's problem)."""
    logger.warning("upstream answered HTTP %d to request %s: %s", reply.status_code, rid, redact(reply.text[:300]))
    if reply.status_code in PASS_THROUGH_STATUS:
        return ApiError(reply.status_code, f"the upstream model server rejected the request (HTTP {reply.status_code}, "
                        f"request {rid}); check the request parameters", "invalid_request_error", "upstream_rejected")
    metrics.upstream_errors.labels("status").inc()
    return ApiError(502, f"the upstream model server failed (HTTP {reply.status_code}, request {rid})", "upstream_error",
                    "upstream_status")


async def _probe_upstream(state: ProxyState) -> dict[str, Any]:
    assert state.client is not None
    url = state.config.upstream.url + "/models"
    headers = {"Authorization": f"Bearer {state.config.upstream.api_key}"} if state.config.upstream.api_key else {}
    try:
        reply = await state.client.get(url, headers=headers, timeout=3.0)
        return {"ok": reply.status_code < 400, "status": reply.status_code}
    except httpx.HTTPError as exc:
        return {"ok": False, "error": type(exc).__name__}


async def _load_guard(state: ProxyState) -> None:
    try:
        protector = await asyncio.to_thread(protector_from_config, state.config.guard, state.config.stream)
    except ProtectorError as exc:
        state.load_error = str(exc)
        logger.error("guard models failed to load: %s", exc)
        return
    except Exception as exc:  # surfaced by /health and 503s instead of crashing the server
        state.load_error = f"{type(exc).__name__}: {exc}"
        logger.exception("guard models failed to load")
        return
    state.guard = AsyncGuard(protector, state.config.guard, state.metrics, state.config.stream)
    state.guard.start()
    logger.info("guard models loaded (threshold %.3f)", state.guard.threshold)


def _aggregate(outcomes: list[Verdict]) -> dict[str, Any]:
    worst = max(outcomes, key=lambda o: SEVERITY[o.action])
    info = verdict_info(worst)
    scores = [o.score for o in outcomes if o.score is not None]
    info["score"] = round(max(scores), 4) if scores else None
    info["rounds"] = max(o.rounds for o in outcomes)
    return info


async def _complete(state: ProxyState, guard: AsyncGuard, payload: dict[str, Any], ctx: _Ctx,
                    headers: dict[str, str], audit: Callable, count: Callable) -> Response:
    """Non-streaming: forward, protect every choice's content, answer in the OpenAI shape."""
    config, metrics = state.config, state.metrics
    assert state.client is not None
    url = config.upstream.url + "/chat/completions"
    payload["stream"] = False
    t_up = time.perf_counter()
    try:
        reply = await state.client.post(url, json=payload, headers=headers)
    except httpx.HTTPError as exc:
        raise _upstream_exception(exc, metrics, ctx.rid) from None
    upstream_s = time.perf_counter() - t_up
    metrics.upstream_seconds.labels("chat").observe(upstream_s)
    if reply.status_code >= 400:
        raise _upstream_status(reply, metrics, ctx.rid, ctx.redact)
    try:
        data = reply.json()
        choices = data["choices"]
        if not isinstance(choices, list) or not all(isinstance(c, dict) for c in choices):
            raise TypeError("choices")
    except (ValueError, KeyError, TypeError):
        metrics.upstream_errors.labels("protocol").inc()
        raise ApiError(502, f"the upstream model server returned no chat completion (request {ctx.rid})", "upstream_error",
                       "upstream_protocol") from None

    t_guard = time.perf_counter()
    data = clean(data)
    shown = [choice_text(c, config.guard.tool_calls) for c in data["choices"]]
    data["choices"] = [choice for choice, _ in shown]
    texts = [text for _, text in shown]
    budget = config.guard.max_request_chars

    async def protect(text: str) -> Verdict:
        if not text.strip():
            return Verdict(text=text, original=text, harmful=False, score=None, action="pass")
        return await guard.protect(ctx.query, text, ctx.category)

    if sum(len(t) for t in texts) > budget:
        outcomes = [guard.over_budget(t, budget) for t in texts]
    else:
        outcomes = list(await asyncio.gather(*(protect(t) for t in texts)))
    outcomes = outcomes or [Verdict(text="", original="", harmful=False, score=None, action="pass")]
    guard_s = time.perf_counter() - t_guard
    metrics.guard_seconds.labels("chat").observe(guard_s)
    originals = texts
    for choice, outcome in zip(data["choices"], outcomes):
        if outcome.action not in RELEASED:
            replace_choice(choice, outcome.text)
        choice["protector"] = verdict_info(outcome)
        count(outcome, "chat")
    info = _aggregate(outcomes)
    data["protector"] = {**info, "request_id": ctx.rid}
    if data.get("model") and ctx.model != payload["model"]:
        data["model"] = ctx.model
    out_headers: dict[str, str] = {}
    if config.server.response_headers:
        out_headers = {"x-protector-action": info["action"], "x-protector-rounds": str(info["rounds"])}
        if info["score"] is not None:
            out_headers["x-protector-score"] = f"{info['score']:.4f}"
    audit({"request_id": ctx.rid, "endpoint": "/v1/chat/completions", "key": ctx.key_id, "model": ctx.model,
           "stream": False, "status": 200, **info, "latency_ms": round((time.perf_counter() - ctx.t0) * 1000, 1),
           "upstream_ms": round(upstream_s * 1000, 1), "guard_ms": round(guard_s * 1000, 1),
           "query": ctx.query, "original": originals if len(originals) > 1 else (originals or [""])[0],
           "text": [o.text for o in outcomes] if len(outcomes) > 1 else outcomes[0].text})
    return JSONResponse(data, headers=out_headers)


async def _stream(state: ProxyState, guard: AsyncGuard, payload: dict[str, Any], ctx: _Ctx,
                  headers: dict[str, str], audit: Callable, count: Callable, release: Callable[[], None]) -> Response:
    """Streaming: open the upstream stream (errors before the first byte are plain 5xx), then relay it."""
    config, metrics = state.config, state.metrics
    assert state.client is not None
    url = config.upstream.url + "/chat/completions"
    payload["stream"] = True
    t_up = time.perf_counter()
    try:
        reply = await state.client.send(state.client.build_request("POST", url, json=payload, headers=headers), stream=True)
    except httpx.HTTPError as exc:
        raise _upstream_exception(exc, metrics, ctx.rid) from None
    if reply.status_code >= 400:
        try:
            await reply.aread()
        except httpx.HTTPError:
            pass
        finally:
            await reply.aclose()
        raise _upstream_status(reply, metrics, ctx.rid, ctx.redact)

    relay = StreamRelay(guard, config.stream, ctx.query, ctx.category, ctx.model, ctx.rid,
                        on_window=lambda result: metrics.stream_windows.labels(result).inc(),
                        tools=config.guard.tool_calls, max_chars=config.guard.max_request_chars, redact=ctx.redact)
    received: list[str] = []

    async def lines():
        if "text/event-stream" in reply.headers.get("content-type", ""):
            async for line in reply.aiter_lines():
                if '"content"' in line:
                    received.append(line)
                yield line
            return
        # The upstream ignored stream=true and sent one JSON completion: relay it as one delta.
        data = json.loads(await reply.aread())
        message = ((data.get("choices") or [{}])[0]).get("message") or {}
        received.append(content_text(message.get("content")))
        chunk = {k: data.get(k) for k in ("id", "created", "model")}
        chunk["choices"] = [{"index": 0, "delta": {**message, "role": "assistant"},
                             "finish_reason": ((data.get("choices") or [{}])[0]).get("finish_reason")}]
        yield "data: " + json.dumps(chunk)
        yield "data: [DONE]"

    async def body():
        status = "ok"
        try:
            async for out in relay.run(lines()):
                yield out
            yield sse("[DONE]")
        except (ValueError, TypeError, AttributeError):  # non-SSE upstream body that is not a completion either
            metrics.upstream_errors.labels("protocol").inc()
            status = "upstream_protocol"
            yield sse({"error": {"message": "upstream returned neither a stream nor a completion", "type": "upstream_error",
                                 "param": None, "code": "upstream_protocol"}})
        except asyncio.CancelledError:
            status = "client_disconnected"
            raise
        finally:
            await reply.aclose()
            release()
            result = relay.result
            if result.upstream_error:
                metrics.upstream_errors.labels(result.upstream_error).inc()
                status = "upstream_" + result.upstream_error
            metrics.upstream_seconds.labels("stream").observe(time.perf_counter() - t_up)
            metrics.guard_seconds.labels("stream").observe(result.guard_ms / 1000)
            count(result.outcome, "stream")
            audit({"request_id": ctx.rid, "endpoint": "/v1/chat/completions", "key": ctx.key_id, "model": ctx.model,
                   "stream": True, "status": status, **verdict_info(result.outcome), "windows": result.windows,
                   "latency_ms": round((time.perf_counter() - ctx.t0) * 1000, 1), "guard_ms": round(result.guard_ms, 1),
                   "query": ctx.query, "original": _stream_text(received), "text": result.released})

    return StreamingResponse(body(), media_type="text/event-stream", background=BackgroundTask(release),
                             headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})


def _stream_text(lines: list[str]) -> str:
    """Content of the upstream stream lines seen (audit with text only)."""
    text = []
    for line in lines:
        try:
            payload = json.loads(line[5:]) if line.startswith("data:") else None
        except ValueError:
            payload = None
        if isinstance(payload, dict):
            for choice in payload.get("choices") or []:
                delta = choice.get("delta") if isinstance(choice, dict) else None
                text.append(content_text(delta.get("content")) if isinstance(delta, dict) else "")
        else:
            text.append(line)
    return clean_text("".join(text))


# --- app-wide handlers -------------------------------------------------------------------------

def _install_error_handlers(app: FastAPI) -> None:
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
            message = f"unknown path {request.url.path}; this proxy serves {', '.join(ENDPOINTS)}"
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
