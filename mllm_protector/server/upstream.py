"""The HTTP client towards the protected model server.

Failures become OpenAI-shaped errors with generic messages and the request id: the client never sees
the upstream URL, an upstream error body, or (since an upstream may echo it) the upstream key; the
detail goes to the log with the key removed.
"""

from __future__ import annotations

import logging
from typing import Any, Optional

import httpx

from ..openai_api import bearer, chat_url
from .config import UpstreamConfig
from .deps import ApiError
from .metrics import Metrics

logger = logging.getLogger(__name__)

#: Upstream statuses that are the client's business and keep their code; any other becomes 502.
PASS_THROUGH_STATUS = {400, 404, 409, 413, 422, 429}


class Upstream:
    """One pooled httpx client for the upstream's chat, model list and health probe."""

    def __init__(self, config: UpstreamConfig, metrics: Metrics, transport: Optional[httpx.AsyncBaseTransport] = None):
        self.config = config
        self.metrics = metrics
        self._transport = transport
        self._client: Optional[httpx.AsyncClient] = None

    @property
    def client(self) -> httpx.AsyncClient:
        """Created on first use inside the serving loop (the app's lifespan closes it)."""
        if self._client is None:
            up = self.config
            self._client = httpx.AsyncClient(
                timeout=httpx.Timeout(up.timeout, connect=up.connect_timeout, pool=up.connect_timeout),
                limits=httpx.Limits(max_connections=up.max_connections, max_keepalive_connections=up.max_connections),
                transport=self._transport,
            )
        return self._client

    async def aclose(self) -> None:
        if self._client is not None:
            await self._client.aclose()
            self._client = None

    def headers(self) -> dict[str, str]:
        """The upstream key (never the client's); no request id: some servers reject ids that are not UUIDs."""
        return bearer(self.config.api_key)

    def redact(self, text: str) -> str:
        """Upstream text with the upstream key removed, for the log."""
        return text.replace(self.config.api_key, "***") if self.config.api_key else text

    # --- calls ----------------------------------------------------------------------------------
    async def complete(self, payload: dict[str, Any], rid: str) -> dict[str, Any]:
        """A non-streaming chat completion whose `choices` is a list of objects (502 otherwise)."""
        try:
            reply = await self.client.post(chat_url(self.config.url), json=payload, headers=self.headers())
        except httpx.HTTPError as exc:
            raise self.transport_error(exc, rid) from None
        if reply.status_code >= 400:
            raise self.status_error(reply, rid)
        try:
            data = reply.json()
            choices = data["choices"]
            if not isinstance(choices, list) or not all(isinstance(c, dict) for c in choices):
                raise TypeError("choices")
        except (ValueError, KeyError, TypeError):
            raise self.protocol_error("no chat completion", rid) from None
        return data

    async def open_stream(self, payload: dict[str, Any], rid: str) -> httpx.Response:
        """The open streaming response (the caller closes it); errors before the first byte are plain 5xx."""
        request = self.client.build_request("POST", chat_url(self.config.url), json=payload,
                                            headers=self.headers())
        try:
            reply = await self.client.send(request, stream=True)
        except httpx.HTTPError as exc:
            raise self.transport_error(exc, rid) from None
        if reply.status_code >= 400:
            try:
                await reply.aread()
            except httpx.HTTPError:
                pass
            finally:
                await reply.aclose()
            raise self.status_error(reply, rid)
        return reply

    async def models(self, rid: str) -> list[Any]:
        """The upstream's model list."""
        try:
            reply = await self.client.get(self.config.url + "/models", headers=self.headers())
        except httpx.HTTPError as exc:
            raise self.transport_error(exc, rid) from None
        if reply.status_code >= 400:
            raise self.status_error(reply, rid)
        try:
            return list(reply.json()["data"])
        except (ValueError, KeyError, TypeError):
            raise self.protocol_error("no model list", rid) from None

    async def probe(self) -> dict[str, Any]:
        """Whether the upstream answers `GET /models` (for /health)."""
        try:
            reply = await self.client.get(self.config.url + "/models", headers=self.headers(), timeout=3.0)
            return {"ok": reply.status_code < 400, "status": reply.status_code}
        except httpx.HTTPError as exc:
            return {"ok": False, "error": type(exc).__name__}

    # --- errors ---------------------------------------------------------------------------------
    def transport_error(self, exc: httpx.HTTPError, rid: str) -> ApiError:
        """A transport failure as 502/503/504; the message names neither the upstream URL nor the error text."""
        logger.warning("upstream request %s failed: %s", rid, type(exc).__name__)
        if isinstance(exc, httpx.PoolTimeout):
            self.metrics.upstream_errors.labels("pool").inc()
            return ApiError(503, "the proxy is at its upstream connection limit; retry shortly", "server_error",
                            "upstream_pool_exhausted", headers={"Retry-After": "1"})
        if isinstance(exc, httpx.TimeoutException):
            self.metrics.upstream_errors.labels("timeout").inc()
            return ApiError(504, f"the upstream model server timed out (request {rid})", "upstream_error", "upstream_timeout")
        self.metrics.upstream_errors.labels("unreachable").inc()
        return ApiError(502, f"the upstream model server is unreachable (request {rid})", "upstream_error",
                        "upstream_unreachable")

    def status_error(self, reply: httpx.Response, rid: str) -> ApiError:
        """An upstream error answer: its body goes to the log (key removed), never to the client. Client
        errors keep their status; anything else is a 502 (the operator's problem)."""
        logger.warning("upstream answered HTTP %d to request %s: %s", reply.status_code, rid, self.redact(reply.text[:300]))
        if reply.status_code in PASS_THROUGH_STATUS:
            return ApiError(reply.status_code, f"the upstream model server rejected the request (HTTP {reply.status_code}, "
                            f"request {rid}); check the request parameters", "invalid_request_error", "upstream_rejected")
        self.metrics.upstream_errors.labels("status").inc()
        return ApiError(502, f"the upstream model server failed (HTTP {reply.status_code}, request {rid})", "upstream_error",
                        "upstream_status")

    def protocol_error(self, what: str, rid: str) -> ApiError:
        self.metrics.upstream_errors.labels("protocol").inc()
        return ApiError(502, f"the upstream model server returned {what} (request {rid})", "upstream_error",
                        "upstream_protocol")
