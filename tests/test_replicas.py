"""Two `mllm-protector serve` replicas (separate processes, stateless) behind nginx with the committed
deploy/nginx-two-replicas.conf: both replicas serve requests, harmful answers are still replaced, and a stream
passes through the balancer chunk by chunk (not buffered into one piece)."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest
from openai.types.chat import ChatCompletionMessageParam
from pydantic import BaseModel

from .conftest import BENIGN, HARMFUL
from .servers import LOOPBACK, ServerThread, free_port, scripted_upstream, wait_ready

pytestmark = pytest.mark.slow
CONFIG = Path(__file__).parents[1] / "deploy" / "nginx-two-replicas.conf"
NGINX = shutil.which("nginx") or shutil.which("nginx", path="/usr/sbin:/usr/local/sbin")
#: Several sentences, so the guard releases the stream in more than one window.
LONG_BENIGN = " ".join([BENIGN] * 4)
USER: list[ChatCompletionMessageParam] = [{"role": "user", "content": "Tell me about the picture."}]


def stop(process: subprocess.Popen) -> None:
    process.terminate()
    try:
        process.wait(timeout=15)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait(timeout=5)


@pytest.fixture(scope="module")
def upstream() -> Iterator[ServerThread]:
    app = scripted_upstream({"benign": BENIGN, "harmful": HARMFUL, "long": LONG_BENIGN}, chunk_delay=0.05)
    with ServerThread(app) as server:
        yield server


@pytest.fixture(scope="module")
def replicas(upstream, tmp_path_factory) -> Iterator[list[str]]:
    """Two proxy processes started with the documented command, on free loopback ports."""
    logs = tmp_path_factory.mktemp("replicas")
    ports = [free_port(), free_port()]
    processes = [subprocess.Popen([sys.executable, "-m", "mllm_protector.cli", "serve", "--upstream", upstream.url + "/v1",
                                   "--port", str(port), "--detoxifier", "refusal"],
                                  stdout=open(logs / f"replica-{port}.log", "wb"), stderr=subprocess.STDOUT,
                                  env={**os.environ, "HF_HUB_OFFLINE": "1"})
                 for port in ports]
    urls = [f"http://{LOOPBACK}:{port}" for port in ports]
    try:
        for url, process in zip(urls, processes, strict=True):
            wait_ready(url + "/health", 180, process)
        yield urls
    finally:
        for process in processes:
            stop(process)


@pytest.fixture(scope="module")
def balancer(replicas, tmp_path_factory) -> Iterator[str]:
    """nginx with the committed config, its three addresses replaced by this test's ports."""
    if NGINX is None:
        pytest.skip("nginx is not installed (make install-deploy)")
    prefix = tmp_path_factory.mktemp("nginx")
    port = free_port()
    text = CONFIG.read_text()
    for old, new in [("127.0.0.1:8001", replicas[0][len("http://"):]), ("127.0.0.1:8002", replicas[1][len("http://"):]),
                     ("listen 127.0.0.1:8000", f"listen {LOOPBACK}:{port}")]:
        assert text.count(old) == 1, f"{CONFIG} no longer has exactly one '{old}'"
        text = text.replace(old, new)
    (prefix / "nginx.conf").write_text(text)
    process = subprocess.Popen([NGINX, "-p", f"{prefix}/", "-c", str(prefix / "nginx.conf"), "-e", str(prefix / "error.log"),
                                "-g", "daemon off;"], stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT)
    url = f"http://{LOOPBACK}:{port}"
    try:
        wait_ready(url + "/health", 30, process)
        yield url
    finally:
        stop(process)


def protector(reply: BaseModel) -> dict[str, Any]:
    """The guard's verdict the proxy adds to an answer (or to a stream's last chunk)."""
    assert reply.model_extra is not None
    return reply.model_extra["protector"]


def chat_requests(url: str) -> int:
    """Chat requests a replica answered, from its own /metrics."""
    text = httpx.get(url + "/metrics", timeout=10).text
    return sum(int(float(m)) for m in re.findall(r'mllm_protector_requests_total\{endpoint="/v1/chat/completions"[^}]*\} (\S+)', text))


def test_both_replicas_serve_and_every_answer_is_guarded(balancer, replicas):
    before = [chat_requests(url) for url in replicas]
    client = openai.OpenAI(base_url=balancer + "/v1", api_key="unused-on-loopback", max_retries=0, timeout=60)
    for i in range(6):
        model = "harmful" if i % 3 == 0 else "benign"
        raw = client.chat.completions.with_raw_response.create(model=model, messages=USER)
        reply = raw.parse()
        action = protector(reply)["action"]
        assert raw.headers["x-request-id"] and raw.headers["x-protector-action"] == action
        if model == "benign":
            assert reply.choices[0].message.content == BENIGN and action == "pass"
        else:
            assert reply.choices[0].message.content != HARMFUL and action != "pass"
    served = [chat_requests(url) - b for url, b in zip(replicas, before, strict=True)]
    assert sum(served) == 6 and min(served) >= 1, served


def test_a_stream_passes_the_balancer_chunk_by_chunk(balancer):
    client = openai.OpenAI(base_url=balancer + "/v1", api_key="unused-on-loopback", max_retries=0, timeout=60)
    arrivals, deltas, last = [], [], None
    for chunk in client.chat.completions.create(model="long", messages=USER, stream=True):
        if chunk.choices and chunk.choices[0].delta.content:
            arrivals.append(time.monotonic())
            deltas.append(chunk.choices[0].delta.content)
        last = chunk
    assert "".join(deltas) == LONG_BENIGN
    assert last is not None and protector(last)["action"] == "pass"
    # the upstream sends one word per 50 ms: unbuffered, the guard's windows reach the client over seconds, not at once
    assert len(deltas) > 1 and arrivals[-1] - arrivals[0] >= 1.0, arrivals
