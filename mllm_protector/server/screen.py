"""The input guard in the proxy: the last user turn (its text and the text in its images) is checked before
the upstream answers. The Protector decides (`check_input`, `block_input`); this module schedules those
calls off the event loop and presents a blocked request as an OpenAI chat completion or stream.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any, Optional

from fastapi.responses import JSONResponse, Response, StreamingResponse

from ..errors import InputError
from ..input_guard import InputVerdict
from ..protector import Verdict
from .chat import ChatContext, ChatService
from .deps import ApiError
from .guard import AsyncGuard, verdict_info
from .protocol import ChatCompletionRequest, ImagePart
from .streaming import sse


def request_images(req: ChatCompletionRequest) -> list[str]:
    """The image URLs (data URLs) of the last user turn."""
    for message in reversed(req.messages):
        if message.role == "user":
            parts = message.content if isinstance(message.content, list) else []
            return [p.image_url.url for p in parts if isinstance(p, ImagePart)]
    return []


async def screen_request(chat: ChatService, guard: AsyncGuard, req: ChatCompletionRequest, ctx: ChatContext) -> Optional[Response]:
    """Apply the input policy before the upstream call: None to go on (under `flag` the context's query becomes
    the scored request, user text + image text), or the response to a blocked request. An image the input
    guard cannot open (or a decompression bomb) is a 400."""
    if guard.protector.settings.input_policy == "off":
        return None
    images = [url for url in request_images(req) if url.startswith("data:")]
    try:
        request = await asyncio.to_thread(guard.protector.check_input, ctx.query, images or None)
    except InputError as exc:
        raise ApiError(400, str(exc), code="invalid_image") from None
    ctx.query, ctx.input = request.text, input_info(request)
    if not (request.harmful and guard.protector.settings.input_policy == "block"):
        return None
    response, verdict = await blocked_response(guard, request, ctx.rid, ctx.model, bool(req.stream))
    chat.metrics.verdicts.labels(verdict.action, "chat").inc()
    chat.audit({"request_id": ctx.rid, "endpoint": "/v1/chat/completions", "key": ctx.key_id, "model": ctx.model,
                "stream": bool(req.stream), "status": 200, **verdict_info(verdict), "input": ctx.input,
                "latency_ms": round((time.perf_counter() - ctx.t0) * 1000, 1), "query": ctx.query, "text": verdict.text})
    return response


def input_info(request: InputVerdict) -> dict[str, Any]:
    """The `input` object inside the response's `protector` object."""
    return {"score": None if request.score is None else round(request.score, 4), "harmful": request.harmful,
            "category": request.category, "image_text": request.image_text,
            **({"error": request.error} if request.error else {})}


async def blocked_response(guard: AsyncGuard, request: InputVerdict, rid: str, model: str, stream: bool) -> tuple[Response, Verdict]:
    """The answer to a blocked request (the Protector's `block_input`, run on the detoxification thread),
    as a chat completion or a one-delta stream; the upstream is never called."""
    verdict = await guard.block_input(request)
    info = {**verdict_info(verdict), "input": input_info(request), "request_id": rid}
    meta = {"id": f"chatcmpl-{rid}", "created": int(time.time()), "model": model}
    if not stream:
        return JSONResponse({**meta, "object": "chat.completion", "protector": info,
                             "choices": [{"index": 0, "message": {"role": "assistant", "content": verdict.text}, "finish_reason": "stop"}],
                             "usage": {"prompt_tokens": 0, "completion_tokens": 0, "total_tokens": 0}}), verdict

    async def body() -> Any:
        yield sse({**meta, "object": "chat.completion.chunk",
                   "choices": [{"index": 0, "delta": {"role": "assistant", "content": verdict.text}, "finish_reason": None}]})
        yield sse({**meta, "object": "chat.completion.chunk", "protector": info,
                   "choices": [{"index": 0, "delta": {}, "finish_reason": "stop"}]})
        yield sse("[DONE]")

    return StreamingResponse(body(), media_type="text/event-stream", headers={"Cache-Control": "no-cache"}), verdict
