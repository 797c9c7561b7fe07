"""Guarded streaming: hold upstream text back until the detector approved it, then release it as SSE.

The relay reads the upstream's OpenAI SSE stream, appends content deltas to a hold-back buffer and,
at window boundaries (`stream.mode`: sentence ends after `min_chars`, at the latest `max_chars`; or
fixed `max_chars` windows), asks the Protector for its verdict on the new window (judged alone and after
a bounded tail of the answer so far, so the cost per window is constant). Approved text is sent to the
client as `chat.completion.chunk`s; when a window is flagged the upstream is closed and the detoxified
(or refusal) continuation is streamed instead. Text that was not approved is never sent.
"""

from __future__ import annotations

import json
import logging
import re
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from typing import Any, Optional

from ..protector import RELEASED, SEPARATOR, SEVERITY, Verdict
from .answers import content_text, strings, visible
from .config import StreamConfig
from .guard import AsyncGuard, verdict_info

logger = logging.getLogger(__name__)

#: A sentence ends at . ! ? (or their CJK forms, or …) plus closing quotes/brackets, before whitespace; or at a newline.
_SENTENCE_END = re.compile(r"[.!?。！？…][\"'”’)\]]*(?=\s)|\n")
_SPACE = re.compile(r"\s")


class HoldBack:
    """Text received from upstream but not yet released; decides where the next check cuts."""

    def __init__(self, cfg: StreamConfig):
        self.cfg = cfg
        self.pending = ""

    def feed(self, text: str) -> None:
        self.pending += text

    def next_window(self) -> Optional[str]:
        """The next piece to check now (removed from the buffer), or None to keep waiting."""
        cut = self._cut()
        if cut is None or cut <= 0:
            return None
        window, self.pending = self.pending[:cut], self.pending[cut:]
        return window

    def flush(self) -> str:
        """Everything still held (end of stream)."""
        window, self.pending = self.pending, ""
        return window

    def _cut(self) -> Optional[int]:
        n = len(self.pending)
        if self.cfg.mode == "sentence" and n >= self.cfg.min_chars:
            ends = [m.end() for m in _SENTENCE_END.finditer(self.pending) if m.end() >= self.cfg.min_chars]
            if ends:
                return ends[-1]
        if n >= self.cfg.max_chars:
            spaces = [m.start() + 1 for m in _SPACE.finditer(self.pending) if m.start() + 1 >= self.cfg.min_chars]
            return spaces[-1] if spaces else n
        return None


class UpstreamStreamError(Exception):
    """The upstream stream broke (timeout, disconnect, malformed data, error event)."""

    def __init__(self, kind: str, message: str):
        super().__init__(message)
        self.kind = kind


@dataclass
class StreamResult:
    """Filled while streaming; read by the caller for metrics and the audit line."""

    outcome: Verdict
    released: str = ""
    windows: int = 0
    guard_ms: float = 0.0
    upstream_error: Optional[str] = None
    finish_reason: Optional[str] = None
    extra: dict[str, Any] = field(default_factory=dict)


def sse(data: Any) -> bytes:
    """One server-sent event line in the OpenAI format."""
    return b"data: " + (data if isinstance(data, str) else json.dumps(data, ensure_ascii=False)).encode() + b"\n\n"


class StreamRelay:
    """Turns one upstream SSE line stream into a guarded client SSE byte stream."""

    def __init__(self, guard: AsyncGuard, cfg: StreamConfig, query: str, category: Optional[str],
                 model: Optional[str], request_id: str, on_window: Callable[[str], None] | None = None,
                 tools: str = "check", max_chars: Optional[int] = None, redact: Callable[[str], str] = str,
                 owner: str = ""):
        self.guard = guard
        self.cfg = cfg
        self.query = query
        self.category = category
        self.model = model
        self.request_id = request_id
        self.on_window = on_window or (lambda result: None)
        self.tools = tools
        self.max_chars = max_chars
        self.redact = redact  # removes the upstream key from upstream text before it is logged
        self.owner = owner  # whose detector queue the checks join (round-robin across clients)
        self.hold = HoldBack(cfg)
        self.approved = ""
        self.meta: dict[str, Any] = {"id": f"chatcmpl-{request_id}", "created": int(time.time()), "model": model}
        self.result = StreamResult(outcome=Verdict(text="", original="", harmful=False, score=None, action="pass"))
        self._side = ""  # reasoning, refusal and tool-call text: checked at the end, then released
        self._received = 0
        self._held_deltas: list[dict[str, Any]] = []
        self._usage: Optional[dict[str, Any]] = None
        self._role_sent = False
        self._meta_set = False
        self._max_score: Optional[float] = None

    # --- chunk helpers --------------------------------------------------------------------------
    def _chunk(self, delta: dict[str, Any], finish_reason: Optional[str] = None, **extra: Any) -> bytes:
        body: dict[str, Any] = {
            "id": self.meta["id"], "object": "chat.completion.chunk", "created": self.meta["created"],
            "model": self.meta["model"], "choices": [{"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish_reason}],
        }
        if self.meta.get("system_fingerprint"):
            body["system_fingerprint"] = self.meta["system_fingerprint"]
        body.update(extra)
        return sse(body)

    def _role(self) -> list[bytes]:
        if self._role_sent:
            return []
        self._role_sent = True
        return [self._chunk({"role": "assistant", "content": ""})]

    def _note(self, verdict: Verdict) -> None:
        """Keep the most severe decision and the highest window score for the stream's outcome."""
        if verdict.score is not None:
            self._max_score = max(self._max_score or 0.0, verdict.score)
        if SEVERITY[verdict.action] > SEVERITY[self.result.outcome.action]:
            self.result.outcome = verdict
        self.result.outcome.score = self._max_score

    # --- the relay ------------------------------------------------------------------------------
    async def run(self, lines: AsyncIterator[str]) -> AsyncIterator[bytes]:
        """Yield client SSE bytes; returns early (upstream left unread) once a window was flagged."""
        finish_reason: Optional[str] = None
        try:
            async for payload in self._events(lines):
                for out in self._role():  # no text: sent at once so clients see the stream start
                    yield out
                for choice in payload.get("choices") or []:
                    if isinstance(choice, dict) and choice.get("index", 0) == 0:
                        self._take(choice.get("delta") or {})
                        finish_reason = choice.get("finish_reason") or finish_reason
                if self.max_chars is not None and self._received > self.max_chars:
                    for out in self._stop(self.guard.over_budget(self.approved + self.hold.flush(), self.max_chars)):
                        yield out
                    return
                while (window := self.hold.next_window()) is not None:
                    verdict = await self._judge(window)
                    if verdict.action not in RELEASED:
                        for out in self._stop(verdict):
                            yield out
                        return
                    yield self._emit(verdict.text)
        except UpstreamStreamError as exc:
            self.result.upstream_error = exc.kind
            for out in self._role():
                yield out
            yield sse({"error": {"message": f"{exc} (request {self.request_id}); the answer is incomplete",
                                 "type": "upstream_error", "param": None, "code": f"upstream_{exc.kind}"}})
            return
        for out in self._role():
            yield out
        tail = self.hold.flush()
        if tail:
            verdict = await self._judge(tail)
            if verdict.action not in RELEASED:  # held tool calls etc. of a flagged answer are dropped with it
                for out in self._stop(verdict):
                    yield out
                return
            yield self._emit(verdict.text)
        if self._side:
            verdict = await self._judge(self._side)
            if verdict.action not in RELEASED:
                for out in self._stop(verdict):
                    yield out
                return
        for delta in self._held_deltas:
            yield self._chunk(delta)
        if self.tools == "drop" and finish_reason in ("tool_calls", "function_call"):
            finish_reason = "stop"
        yield self._final(finish_reason or "stop")

    def _take(self, delta: dict[str, Any]) -> None:
        """Content goes to the hold-back window; other text (reasoning, refusal, tool calls) is held whole."""
        if not isinstance(delta, dict):
            return
        shown = visible(delta, self.tools)
        content = content_text(shown.pop("content", None))
        shown.pop("role", None)
        self.hold.feed(content)
        others = {k: v for k, v in shown.items() if v is not None}
        side = "".join(strings(others))
        self._received += len(content) + len(side)
        if others:
            self._held_deltas.append(others)  # released at the end, after the content and their check
            self._side += side

    def _stop(self, verdict: Verdict) -> list[bytes]:
        """End the stream with the verdict's text (a rewrite or the refusal) as the continuation."""
        self._note(verdict)
        return self._continue_with(verdict.text) + [self._final("stop")]

    def _final(self, finish_reason: str) -> bytes:
        self.result.finish_reason = finish_reason
        self.result.outcome.text = self.result.released
        out = self._chunk({}, finish_reason, protector=verdict_info(self.result.outcome))
        if self._usage is not None:
            out += sse({"id": self.meta["id"], "object": "chat.completion.chunk", "created": self.meta["created"],
                        "model": self.meta["model"], "choices": [], "usage": self._usage})
        return out

    async def _events(self, lines: AsyncIterator[str]) -> AsyncIterator[dict[str, Any]]:
        """Parsed upstream `data:` payloads until [DONE]; UpstreamStreamError on anything broken."""
        import httpx

        try:
            async for line in lines:
                if not line.startswith("data:"):
                    continue
                data = line[5:].strip()
                if data == "[DONE]":
                    return
                try:
                    payload = json.loads(data)
                except json.JSONDecodeError:
                    raise UpstreamStreamError("protocol", "upstream sent malformed stream data") from None
                if not isinstance(payload, dict):
                    raise UpstreamStreamError("protocol", "upstream sent malformed stream data")
                if payload.get("error"):
                    logger.warning("upstream error event mid-stream (request %s): %s", self.request_id,
                                   self.redact(str(payload["error"]))[:300])
                    raise UpstreamStreamError("status", "the upstream failed mid-stream")
                if not self._meta_set:  # ids of the upstream completion, kept for every chunk we send
                    self._meta_set = True
                    for key in ("id", "created", "system_fingerprint"):
                        if payload.get(key) is not None:
                            self.meta[key] = payload[key]
                    if self.meta.get("model") is None and payload.get("model"):
                        self.meta["model"] = payload["model"]
                if payload.get("usage"):
                    self._usage = payload["usage"]
                yield payload
        except httpx.TimeoutException:
            raise UpstreamStreamError("timeout", "upstream stopped sending (read timeout)") from None
        except httpx.HTTPError as exc:
            raise UpstreamStreamError("unreachable", f"upstream stream broke: {type(exc).__name__}") from None

    async def _judge(self, window: str) -> Verdict:
        """The Protector's verdict on a window; a flagged one is replaced (the detoxifier sees the whole
        answer so far, never released)."""
        t0 = time.perf_counter()
        verdict = await self.guard.check_window(self.query, self.approved, window, self.owner)
        self.result.windows += 1
        self.on_window({"pass": "approved", "unchecked": "unchecked", "flagged": "flagged"}.get(verdict.action, "failed"))
        if verdict.action == "flagged":
            whole = self.approved + window + self.hold.flush()
            verdict = await self.guard.detoxify(self.query, verdict, self.category, original=whole, prefix=self.approved,
                                                owner=self.owner)
        self._note(verdict)
        self.result.guard_ms += (time.perf_counter() - t0) * 1000
        return verdict

    def _emit(self, text: str) -> bytes:
        self.approved += text
        self.result.released += text
        return self._chunk({"content": text})

    def _continue_with(self, text: str) -> list[bytes]:
        return [self._emit((SEPARATOR if self.approved else "") + text)]
