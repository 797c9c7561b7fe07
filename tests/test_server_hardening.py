"""The proxy against hostile clients and a hostile upstream: batch poisoning, text outside `content`,
bad input that used to be a 500, detector budget, and leaks of keys, URLs and upstream error bodies.

Real servers on loopback: the scripted upstream (tests/servers.py) and the proxy with the shipped
detector; the threshold is pinned as in test_server.py.
"""

from __future__ import annotations

import base64
import json
import struct
import time
import zlib
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from typing import Any

import httpx
import pytest

from mllm_protector import Protector, ProtectorSettings, RefusalDetoxifier
from mllm_protector.config import DEFAULT_REFUSAL
from mllm_protector.errors import InputError
from mllm_protector.server.app import create_app
from mllm_protector.server.config import GuardConfig, load_config
from mllm_protector.server.guard import AsyncGuard, FairQueue, _Job

from .conftest import BENIGN, HARMFUL
from .servers import ServerThread, scripted_upstream

THRESHOLD = 0.5
USER = [{"role": "user", "content": "Tell me about the picture."}]
MARKERS = ("gunpowder", "pipe bomb", "end caps")
UPSTREAM_KEY = "sk-upstream-very-secret-0042"
TOOL_CALL = {"id": "call_1", "type": "function", "function": {"name": "post_message", "arguments": json.dumps({"text": HARMFUL})}}
CHOICES: dict[str, list[dict[str, Any]]] = {
    "reasoning": [{"message": {"role": "assistant", "content": BENIGN, "reasoning_content": HARMFUL}, "finish_reason": "stop"}],
    "refusal-field": [{"message": {"role": "assistant", "content": None, "refusal": HARMFUL}, "finish_reason": "stop"}],
    "parts": [{"message": {"role": "assistant", "content": [{"type": "text", "text": HARMFUL}]}, "finish_reason": "stop"}],
    "legacy-text": [{"text": HARMFUL, "finish_reason": "stop"}],
    "tool-args": [{"message": {"role": "assistant", "content": None, "tool_calls": [TOOL_CALL]}, "finish_reason": "tool_calls"}],
    "unknown-field": [{"message": {"role": "assistant", "content": BENIGN, "x_debug": {"draft": HARMFUL}}, "finish_reason": "stop"}],
    "second-choice": [{"message": {"role": "assistant", "content": BENIGN}, "finish_reason": "stop"},
                      {"message": {"role": "assistant", "content": HARMFUL}, "finish_reason": "stop"}],
    "benign-parts": [{"message": {"role": "assistant", "content": [{"type": "text", "text": BENIGN[:60]},
                                                                   {"type": "text", "text": BENIGN[60:]}]}, "finish_reason": "stop"}],
    "benign-reasoning": [{"message": {"role": "assistant", "content": BENIGN, "reasoning_content": "The user asks about a dog."},
                          "finish_reason": "stop"}],
}
TEXTS = {"benign": BENIGN, "harmful": HARMFUL, "surrogate": "A dog \ud800 on a lawn.", "long": BENIGN * 20} | {
    m: BENIGN for m in CHOICES}


@pytest.fixture(scope="module")
def guard(detector) -> Protector:
    return Protector(detector, RefusalDetoxifier(), ProtectorSettings(threshold=THRESHOLD))


@pytest.fixture(scope="module")
def upstream() -> Iterator[ServerThread]:
    with ServerThread(scripted_upstream(TEXTS, choices=CHOICES)) as server:
        yield server


@contextmanager
def running_proxy(protector: Protector, upstream_url: str, **sections: dict[str, Any]) -> Iterator[ServerThread]:
    uvicorn = sections.pop("uvicorn", {})
    sections["upstream"] = {"url": upstream_url, **sections.get("upstream", {})}
    with ServerThread(create_app(load_config(None, sections, env={}), protector), **uvicorn) as server:
        yield server


@pytest.fixture(scope="module")
def proxy(guard, upstream) -> Iterator[ServerThread]:
    with running_proxy(guard, upstream.url + "/v1", upstream={"api_key": UPSTREAM_KEY}) as server:
        yield server


def chat(server: ServerThread, model: str, **body: Any) -> httpx.Response:
    return httpx.post(server.url + "/v1/chat/completions", json={"model": model, "messages": USER, **body}, timeout=60)


def stream_text(server: ServerThread, model: str) -> tuple[str, list[dict[str, Any]]]:
    with httpx.stream("POST", server.url + "/v1/chat/completions", timeout=60,
                      json={"model": model, "messages": USER, "stream": True}) as reply:
        events = [json.loads(line[6:]) for line in reply.iter_lines() if line.startswith("data: {")]
    deltas = [c["choices"][0]["delta"] for c in events if c.get("choices")]
    return json.dumps(deltas), events


# --- batch poisoning -----------------------------------------------------------------------------

@pytest.mark.parametrize("mode", ["closed", "open"])
def test_a_lone_surrogate_never_poisons_concurrent_checks(guard, upstream, mode):
    """Old code: the tokenizer raised on the surrogate and failed every check in its batch (refusals for
    benign answers when closed, harmful answers delivered unchecked when open)."""
    poison = '{"response": "x \\ud800 y"}'
    with running_proxy(guard, upstream.url + "/v1", guard={"fail_mode": mode}) as server:
        def call(i: int) -> httpx.Response:
            if i % 5 == 0:
                return httpx.post(server.url + "/v1/guard", content=poison, timeout=60)
            return httpx.post(server.url + "/v1/guard", json={"response": BENIGN if i % 2 else HARMFUL}, timeout=60)

        with ThreadPoolExecutor(12) as pool:
            replies = list(pool.map(call, range(30)))
    for i, reply in enumerate(replies):
        if i % 5 == 0:
            assert reply.status_code == 400 and "lone surrogate" in reply.json()["error"]["message"]
        else:
            assert reply.json()["action"] == ("pass" if i % 2 else "detoxified"), (i, reply.text)


def test_upstream_text_with_a_lone_surrogate_is_checked_and_sanitised(proxy):
    reply = chat(proxy, "surrogate")
    assert reply.status_code == 200 and reply.json()["choices"][0]["message"]["content"] == "A dog ? on a lawn."
    assert reply.json()["protector"]["action"] == "pass"


# --- every text the client receives is checked ----------------------------------------------------

@pytest.mark.parametrize("model", ["reasoning", "refusal-field", "parts", "legacy-text", "tool-args", "second-choice"])
def test_harmful_text_outside_content_never_reaches_the_client(proxy, model):
    """Old code: these reached the client unchecked, reported as `pass` with a null score."""
    reply = chat(proxy, model)
    assert reply.status_code == 200
    assert not any(m in reply.text for m in MARKERS), reply.text
    assert reply.json()["protector"]["action"] == "detoxified"
    flagged = reply.json()["choices"][-1]
    assert (flagged.get("message") or {}).get("content", flagged.get("text")) == DEFAULT_REFUSAL


def test_unknown_text_fields_are_dropped_and_benign_parts_pass(proxy):
    reply = chat(proxy, "unknown-field").json()
    assert "x_debug" not in reply["choices"][0]["message"] and reply["choices"][0]["message"]["content"] == BENIGN
    parts = chat(proxy, "benign-parts").json()
    assert parts["protector"]["action"] == "pass" and parts["protector"]["score"] is not None
    assert "".join(p["text"] for p in parts["choices"][0]["message"]["content"]) == BENIGN


def test_tool_calls_can_be_dropped(guard, upstream):
    with running_proxy(guard, upstream.url + "/v1", guard={"tool_calls": "drop"}) as server:
        reply = chat(server, "tool-args").json()
    assert "tool_calls" not in reply["choices"][0]["message"] and reply["choices"][0]["finish_reason"] == "stop"
    assert not any(m in json.dumps(reply) for m in MARKERS)


@pytest.mark.parametrize("model", ["reasoning", "refusal-field", "parts", "tool-args"])
def test_harmful_text_outside_content_is_not_streamed(proxy, model):
    sent, events = stream_text(proxy, model)
    assert not any(m in sent for m in MARKERS), sent
    assert events[-1]["protector"]["action"] == "detoxified"


def test_streamed_list_content_is_released_in_full(proxy):
    """Old code: a list `delta.content` cut the response off."""
    sent, events = stream_text(proxy, "benign-parts")
    released = "".join(d.get("content") or "" for d in json.loads(sent))
    assert released == BENIGN and events[-1]["protector"]["action"] == "pass"
    reasoning, events = stream_text(proxy, "benign-reasoning")
    assert "The user asks about a dog." in reasoning and events[-1]["protector"]["action"] == "pass"


# --- bounds --------------------------------------------------------------------------------------

def test_a_400_kb_guard_body_is_413_and_does_not_starve_others(proxy):
    """Old code: the body held the single detector thread for ~25 s and concurrent chats timed out."""
    with ThreadPoolExecutor(2) as pool:
        big = pool.submit(httpx.post, proxy.url + "/v1/guard", json={"response": "word " * 80_000}, timeout=60)
        time.sleep(0.05)
        t0 = time.perf_counter()
        benign = chat(proxy, "benign")
        benign_s = time.perf_counter() - t0
        reply = big.result()
    assert reply.status_code == 413 and "budget" in reply.json()["error"]["message"] and reply.headers["x-request-id"]
    assert benign.json()["protector"]["action"] == "pass" and benign_s < 5


def test_detector_queue_serves_clients_round_robin():
    """One client's many queued checks do not starve another's (old code: one FIFO queue for everyone)."""
    queue = FairQueue()
    for i in range(3):
        queue.put("key:flood", f"a{i}")
    queue.put("key:other", "b0")
    queue.put("key:flood", "a3")
    assert [queue.get_nowait() for _ in range(5)] == ["a0", "b0", "a1", "a2", "a3"] and queue.empty()


def test_checks_whose_client_has_nothing_yet_go_before_continuations():
    """A stream's later windows wait behind whole answers and first windows; within a lane, round-robin."""
    queue = FairQueue()
    queue.put("key:a", "a-later", later=True)
    queue.put("key:b", "b-later", later=True)
    queue.put("key:a", "a-first")
    queue.put("key:a", "a-second")
    queue.put("key:c", "c-first")
    assert [queue.get_nowait() for _ in range(5)] == ["a-first", "c-first", "a-second", "a-later", "b-later"]
    assert queue.empty()


def test_a_continuation_is_not_batched_with_first_checks(guard):
    """First checks are scored in a batch of their own; continuations batch together (up to the batch limits)."""
    async_guard = AsyncGuard(guard, GuardConfig())
    first, later = _Job([(None, "a")], None, False), _Job([(None, "b")], None, True)  # type: ignore[arg-type]
    assert async_guard._take_scores([first], first) and not async_guard._take_scores([first], later)
    assert async_guard._take_scores([later], later) and async_guard._take_scores([later], first)


def test_answers_over_the_detector_budget_are_refused(guard, upstream):
    with running_proxy(guard, upstream.url + "/v1", guard={"max_request_chars": 1000}) as server:
        whole = chat(server, "long").json()
        sent, events = stream_text(server, "long")
    assert whole["choices"][0]["message"]["content"] == DEFAULT_REFUSAL and "budget" in whole["protector"]["error"]
    assert events[-1]["protector"]["action"] == "refused" and DEFAULT_REFUSAL in sent


# --- bad input is a 4xx with a message and a request id ------------------------------------------

def png_claiming(width: int, height: int) -> str:
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    header = chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0))
    png = b"\x89PNG\r\n\x1a\n" + header + chunk(b"IDAT", zlib.compress(b"")) + chunk(b"IEND", b"")
    return "data:image/png;base64," + base64.b64encode(png).decode()


BAD_BODIES = {
    "nested-100k": b'{"model": "benign", "messages": ' + b"[" * 100_000 + b"]" * 100_000 + b"}",
    "png-bomb": json.dumps({"model": "benign", "messages": [{"role": "user", "content": [
        {"type": "text", "text": "What is this?"}, {"type": "image_url", "image_url": {"url": png_claiming(100_000, 100_000)}}]}]}).encode(),
    "lone-surrogate": b'{"model": "benign", "messages": [{"role": "user", "content": "hi \\ud800"}]}',
    "max-tokens-1e999": b'{"model": "benign", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 1e999}',
    "temperature-nan": b'{"model": "benign", "messages": [{"role": "user", "content": "hi"}], "temperature": NaN}',
}


@pytest.mark.parametrize("name", sorted(BAD_BODIES))
def test_bad_input_is_400_with_message_and_request_id(proxy, name):
    """Old code: each of these was a 500 without x-request-id."""
    reply = httpx.post(proxy.url + "/v1/chat/completions", content=BAD_BODIES[name], timeout=60,
                       headers={"content-type": "application/json"})
    assert reply.status_code == 400, reply.text
    assert reply.json()["error"]["message"] and reply.headers["x-request-id"]


# --- leaks ---------------------------------------------------------------------------------------

def test_upstream_error_bodies_and_keys_never_reach_the_client(proxy):
    reply = chat(proxy, "echo-auth")
    assert reply.status_code == 400 and UPSTREAM_KEY not in reply.text and "Authorization" not in reply.text
    assert reply.headers["x-request-id"] in reply.json()["error"]["message"]
    sent, events = stream_text(proxy, "echo-auth")
    assert UPSTREAM_KEY not in json.dumps(events)
    error = httpx.post(proxy.url + "/v1/chat/completions", json={"model": "error", "messages": USER}).json()["error"]
    assert error["code"] == "upstream_status" and "scripted failure" not in error["message"]


def test_upstream_url_is_not_in_gateway_errors(guard):
    with running_proxy(guard, "http://127.0.0.1:9/v1") as server:
        reply = chat(server, "benign")
    assert reply.status_code == 502 and "127.0.0.1:9" not in reply.text and reply.headers["x-request-id"]


def test_query_string_keys_are_not_written_to_the_access_log(guard, upstream, capfd):
    with running_proxy(guard, upstream.url + "/v1", uvicorn={"log_level": "info", "access_log": True}) as server:
        httpx.get(server.url + "/health?api_key=sk-leaky-query-key-77&x=1")
    out, err = capfd.readouterr()
    assert "GET /health?api_key=***&x=1" in out + err and "sk-leaky-query-key-77" not in out + err


@pytest.mark.parametrize("keys", [[""], ["x"]])
def test_empty_or_one_character_api_keys_are_rejected_at_startup(keys):
    with pytest.raises(InputError, match="at least 8 characters"):
        load_config(None, {"server": {"api_keys": keys}}, env={})
    with pytest.raises(InputError, match="at least 8 characters"):
        load_config(None, {}, env={"MLLM_PROTECTOR_API_KEYS": "x,sk-long-enough-key"})


# --- fuzz: generated hostile bodies never get a 5xx ------------------------------------------------

def hostile_bodies():
    """Chat and guard bodies with random JSON in every field: lone surrogates, NaN/Infinity, huge and
    deep values, wrong types; serialised with ASCII escapes so every string survives as sent."""
    from hypothesis import strategies as st

    text = st.text(st.characters(codec=None, categories=None), max_size=30)  # surrogates included
    scalar = st.none() | st.booleans() | st.integers() | st.floats(allow_nan=True, allow_infinity=True) | text
    value = st.recursive(scalar, lambda inner: st.lists(inner, max_size=4) | st.dictionaries(text, inner, max_size=4),
                         max_leaves=12)
    number = st.integers() | st.floats(allow_nan=True, allow_infinity=True) | st.just(1e999)
    message = st.fixed_dictionaries({"role": st.sampled_from(["user", "assistant", "system"]), "content": text}) | \
        st.fixed_dictionaries({"role": st.sampled_from(["user", "wizard"]) | value, "content": value | text})
    chat = st.fixed_dictionaries({"model": st.just("benign") | value, "messages": st.lists(message, min_size=1, max_size=3) | value},
                                 optional={"max_tokens": number | value, "temperature": number | value,
                                           "stream": st.booleans() | value, "n": value})
    guard = st.fixed_dictionaries({"response": text | value}, optional={"query": value, "detoxify": value})
    nested = st.integers(1, 5000).map(lambda depth: "[" * depth + "]" * depth)
    return st.one_of(chat.map(lambda b: ("/v1/chat/completions", json.dumps(b))),
                     guard.map(lambda b: ("/v1/guard", json.dumps(b))),
                     nested.map(lambda b: ("/v1/chat/completions", '{"model": "benign", "messages": ' + b + "}")))


def test_generated_hostile_bodies_never_get_a_server_error(proxy):
    from hypothesis import HealthCheck, given, settings

    http = httpx.Client(base_url=proxy.url, timeout=60)

    @given(case=hostile_bodies())
    @settings(max_examples=80, deadline=None, derandomize=True, database=None, suppress_health_check=list(HealthCheck))
    def check(case):
        path, body = case
        reply = http.post(path, content=body, headers={"content-type": "application/json"})
        assert reply.status_code < 500, (path, body[:200], reply.text)
        assert reply.headers["x-request-id"]
        if reply.status_code >= 400:
            assert reply.json()["error"]["message"]

    check()
