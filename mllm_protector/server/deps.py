"""Request dependencies: OpenAI-shaped errors, API keys, per-key concurrency, and the request body
(size, arrival time, JSON that Python and the upstream can take, schema, images)."""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import json
import math
from collections.abc import Callable
from typing import Any, Optional

from fastapi import Request
from fastapi.responses import JSONResponse
from pydantic import BaseModel, ValidationError

from ..errors import InputError
from ..protector import clean_text
from .config import ProxyConfig
from .protocol import ChatCompletionRequest, ErrorResponse, check_images

ERROR_RESPONSES: dict[int | str, dict[str, Any]] = {
    code: {"model": ErrorResponse, "description": text}
    for code, text in ((400, "Malformed JSON, wrong schema or bad image data"), (401, "Missing or invalid API key"),
                       (408, "Request body not received in time"), (413, "Request body or text too large"),
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
    """The OpenAI error body `{"error": {"message", "type", "param", "code"}}`."""
    body = {"error": {"message": message, "type": type_, "param": param, "code": code}}
    return JSONResponse(body, status_code=status, headers=headers)


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


def validate(model: type[BaseModel], data: dict[str, Any]) -> Any:
    """`model` from the parsed body; 400 naming the first wrong fields."""
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        errors = exc.errors()
        parts = [f"{'.'.join(str(p) for p in e['loc']) or 'body'}: {e['msg']}" for e in errors[:3]]
        more = f" (and {len(errors) - 3} more)" if len(errors) > 3 else ""
        param = ".".join(str(p) for p in errors[0]["loc"]) if errors else None
        raise ApiError(400, "invalid request: " + "; ".join(parts) + more, param=param, code="invalid_request") from None


def check_images_or_400(req: ChatCompletionRequest, config: ProxyConfig) -> None:
    """Every image part decodes to a real, not oversized image (400 naming the part otherwise)."""
    try:
        check_images(req, config.server.allow_remote_images, config.server.max_image_bytes)
    except InputError as exc:
        raise ApiError(400, str(exc), code="invalid_image") from None


class Gate:
    """Who may come in and how much: API keys, per-key concurrency slots, and the request body."""

    def __init__(self, config: ProxyConfig):
        self.config = config
        self.in_flight: dict[str, int] = {}

    @staticmethod
    def _bearer(request: Request) -> str:
        scheme, _, token = request.headers.get("authorization", "").partition(" ")
        return token.strip() if scheme.lower() == "bearer" else ""

    def _known(self, token: str) -> bool:
        return any(hmac.compare_digest(token.encode(), k.encode()) for k in self.config.server.api_keys)

    def authenticate(self, request: Request, public: bool = False) -> str:
        """Key identity for limits and audit; 401 when a key is required and missing or wrong."""
        if public or not self.config.auth_required:
            return "client:" + (request.client.host if request.client else "unknown")
        token = self._bearer(request)
        if not token:
            raise ApiError(401, "missing API key: send 'Authorization: Bearer <key>'", "authentication_error",
                           "missing_api_key", headers={"WWW-Authenticate": "Bearer"})
        if not self._known(token):
            raise ApiError(401, "invalid API key", "authentication_error", "invalid_api_key",
                           headers={"WWW-Authenticate": "Bearer"})
        return "key:" + hashlib.sha256(token.encode()).hexdigest()[:10]

    def has_valid_key(self, request: Request) -> bool:
        """True when the request carries one of the configured keys (health details are only for them)."""
        token = self._bearer(request)
        return bool(token) and self._known(token)

    def acquire(self, key_id: str) -> Callable[[], None]:
        """Take one of the key's concurrency slots (429 when none is free); returns an idempotent release."""
        limit = self.config.server.per_key_concurrency
        if self.in_flight.get(key_id, 0) >= limit:
            raise ApiError(429, f"too many concurrent requests for this key (limit {limit}); retry shortly",
                           "rate_limit_error", "concurrency_limit_exceeded", headers={"Retry-After": "1"})
        self.in_flight[key_id] = self.in_flight.get(key_id, 0) + 1
        released = False

        def release() -> None:
            nonlocal released
            if not released:
                released = True
                self.in_flight[key_id] -= 1
                if self.in_flight[key_id] <= 0:
                    self.in_flight.pop(key_id, None)

        return release

    async def read_json(self, request: Request) -> dict[str, Any]:
        """The body as a JSON object: at most `max_body_bytes` (413), within `body_timeout` (408)."""
        limit = self.config.server.max_body_bytes
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
            await asyncio.wait_for(receive_all(), self.config.server.body_timeout)
        except TimeoutError:
            raise ApiError(408, f"request body not received within {self.config.server.body_timeout:g}s",
                           code="request_timeout") from None
        if not body.strip():
            raise ApiError(400, "request body is empty: send a JSON object", code="invalid_json")
        return parse_json(bytes(body))

    def within_budget(self, *texts: Optional[str]) -> None:
        """413 when the texts to check exceed the per-request detector budget."""
        size, budget = sum(len(t or "") for t in texts), self.config.guard.max_request_chars
        if size > budget:
            raise ApiError(413, f"the texts to check have {size} characters, more than the per-request detector "
                           f"budget of {budget}; split the text and check the parts", code="detector_budget_exceeded")
