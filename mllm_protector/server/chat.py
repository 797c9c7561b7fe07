"""The guarded chat service: `complete` (whole answers) and `stream` (SSE through the hold-back relay).

Every text a choice carries is checked as one answer (see answers.py); the Protector, through the
AsyncGuard, makes every decision; this module only forwards, schedules and records.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from typing import Any, Optional

from fastapi.responses import JSONResponse, Response, StreamingResponse
from starlette.background import BackgroundTask

from ..protector import RELEASED, SEVERITY, Verdict, clean_text
from .answers import choice_text, clean, content_text, replace_choice
from .config import ProxyConfig
from .guard import AsyncGuard, verdict_info
from .metrics import Metrics
from .streaming import StreamRelay, sse
from .upstream import Upstream

EMPTY = Verdict(text="", original="", harmful=False, score=None, action="pass")


@dataclass
class ChatContext:
    """One chat request as the service needs it."""

    rid: str
    key_id: str
    model: str
    query: str
    t0: float
    category: Optional[str] = None
    #: The input guard's decision, as shown in the response's `protector` object (policy flag or block).
    input: Optional[dict[str, Any]] = None


def summary(verdicts: list[Verdict]) -> dict[str, Any]:
    """The response-level `protector` object: the worst action, the highest score, the most rounds."""
    info = verdict_info(max(verdicts, key=lambda v: SEVERITY[v.action]))
    scores = [v.score for v in verdicts if v.score is not None]
    info["score"] = round(max(scores), 4) if scores else None
    info["rounds"] = max(v.rounds for v in verdicts)
    return info


class ChatService:
    """Forwards chat requests upstream and guards every answer before the client sees it."""

    def __init__(self, config: ProxyConfig, upstream: Upstream, metrics: Metrics, audit: Callable[[dict[str, Any]], None]):
        self.config = config
        self.upstream = upstream
        self.metrics = metrics
        self.audit = audit

    async def complete(self, guard: AsyncGuard, payload: dict[str, Any], ctx: ChatContext) -> Response:
        """Non-streaming: forward, check every choice's text, answer in the OpenAI shape."""
        payload["stream"] = False
        t_up = time.perf_counter()
        data = await self.upstream.complete(payload, ctx.rid)
        upstream_s = time.perf_counter() - t_up
        self.metrics.upstream_seconds.labels("chat").observe(upstream_s)
        t_guard = time.perf_counter()
        data = clean(data)
        shown = [choice_text(c, self.config.guard.tool_calls) for c in data["choices"]]
        data["choices"] = [choice for choice, _ in shown]
        texts = [text for _, text in shown]
        verdicts = await self._check(guard, ctx, texts) or [EMPTY]
        guard_s = time.perf_counter() - t_guard
        self.metrics.guard_seconds.labels("chat").observe(guard_s)
        for choice, verdict in zip(data["choices"], verdicts, strict=True):
            if verdict.action not in RELEASED:
                replace_choice(choice, verdict.text)
            choice["protector"] = verdict_info(verdict)
            self.metrics.verdicts.labels(verdict.action, "chat").inc()
        info = summary(verdicts)
        data["protector"] = {**info, **({"input": ctx.input} if ctx.input else {}), "request_id": ctx.rid}
        if data.get("model") and ctx.model != payload["model"]:
            data["model"] = ctx.model
        headers: dict[str, str] = {}
        if self.config.server.response_headers:
            headers = {"x-protector-action": info["action"], "x-protector-rounds": str(info["rounds"])}
            if info["score"] is not None:
                headers["x-protector-score"] = f"{info['score']:.4f}"
        self.audit({"request_id": ctx.rid, "endpoint": "/v1/chat/completions", "key": ctx.key_id, "model": ctx.model,
                    "stream": False, "status": 200, **info, "latency_ms": round((time.perf_counter() - ctx.t0) * 1000, 1),
                    "upstream_ms": round(upstream_s * 1000, 1), "guard_ms": round(guard_s * 1000, 1),
                    "query": ctx.query, "original": texts if len(texts) > 1 else (texts or [""])[0],
                    "text": [v.text for v in verdicts] if len(verdicts) > 1 else verdicts[0].text})
        return JSONResponse(data, headers=headers)

    async def _check(self, guard: AsyncGuard, ctx: ChatContext, texts: list[str]) -> list[Verdict]:
        """One verdict per choice text, all within the per-request detector budget."""
        budget = self.config.guard.max_request_chars
        if sum(len(t) for t in texts) > budget:
            return [guard.over_budget(t, budget) for t in texts]

        async def protect(text: str) -> Verdict:
            if not text.strip():
                return Verdict(text=text, original=text, harmful=False, score=None, action="pass")
            return await guard.protect(ctx.query, text, ctx.category, owner=ctx.key_id)

        return list(await asyncio.gather(*(protect(t) for t in texts)))

    async def stream(self, guard: AsyncGuard, payload: dict[str, Any], ctx: ChatContext,
                     release: Callable[[], None]) -> Response:
        """Streaming: open the upstream stream (errors before the first byte are plain 5xx), then relay it."""
        payload["stream"] = True
        t_up = time.perf_counter()
        reply = await self.upstream.open_stream(payload, ctx.rid)
        metrics = self.metrics
        relay = StreamRelay(guard, self.config.stream, ctx.query, ctx.category, ctx.model, ctx.rid,
                            on_window=lambda result: metrics.stream_windows.labels(result).inc(),
                            tools=self.config.guard.tool_calls, max_chars=self.config.guard.max_request_chars,
                            redact=self.upstream.redact, owner=ctx.key_id)
        received: list[str] = []

        async def lines() -> AsyncIterator[str]:
            if "text/event-stream" in reply.headers.get("content-type", ""):
                async for line in reply.aiter_lines():
                    if '"content"' in line:
                        received.append(line)
                    yield line
                return
            # The upstream ignored stream=true and sent one JSON completion: relay it as one delta.
            data = json.loads(await reply.aread())
            choice = (data.get("choices") or [{}])[0]
            message = choice.get("message") or {}
            received.append(content_text(message.get("content")))
            chunk = {k: data.get(k) for k in ("id", "created", "model")}
            chunk["choices"] = [{"index": 0, "delta": {**message, "role": "assistant"}, "finish_reason": choice.get("finish_reason")}]
            yield "data: " + json.dumps(chunk)
            yield "data: [DONE]"

        async def body() -> AsyncIterator[bytes]:
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
                metrics.verdicts.labels(result.outcome.action, "stream").inc()
                self.audit({"request_id": ctx.rid, "endpoint": "/v1/chat/completions", "key": ctx.key_id, "model": ctx.model,
                            "stream": True, "status": status, **verdict_info(result.outcome), "windows": result.windows,
                            "latency_ms": round((time.perf_counter() - ctx.t0) * 1000, 1),
                            "guard_ms": round(result.guard_ms, 1), "query": ctx.query,
                            "original": stream_text(received), "text": result.released})

        return StreamingResponse(body(), media_type="text/event-stream", background=BackgroundTask(release),
                                 headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})


def stream_text(lines: list[str]) -> str:
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
