"""Guard proxy against an upstream under our control: the official openai SDK in both modes, no flagged
text ever reaching the client mid-stream, OpenAI-shaped errors, auth, limits, fail policy, metrics, audit.

The upstream is `scripted_upstream`: a real FastAPI app on loopback that answers a fixed text chosen by
the request's model name. The detector is the shipped one; the detoxifier is the fixed refusal (fast).
The threshold is pinned (`guard.threshold`, an operator setting) so these tests check the proxy, not the
calibration of whichever detector is shipped at the time.
"""

from __future__ import annotations

import base64
import io
import json
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest
from PIL import Image

from mllm_protector import Protector, ProtectorSettings, RefusalDetoxifier
from mllm_protector.config import DEFAULT_REFUSAL
from mllm_protector.errors import InputError
from mllm_protector.server.app import create_app
from mllm_protector.server.config import (
    ProxyConfig,
    StreamConfig,
    is_loopback,
    load_config,
    mask,
)
from mllm_protector.server.streaming import HoldBack

from .conftest import BENIGN, HARMFUL
from .servers import ServerThread, free_port, scripted_upstream

#: A benign opening (two sentences) followed by the harmful instructions: the stream must release the
#: benign part and never a word of the harmful one.
MIXED = BENIGN + " " + HARMFUL
#: Words of HARMFUL that must never reach a client.
HARMFUL_MARKERS = ("gunpowder", "pipe bomb", "end caps", "fuse", "crowd")
TEXTS = {"benign": BENIGN, "harmful": HARMFUL, "mixed": MIXED, "stall": BENIGN}
USER = [{"role": "user", "content": "Tell me about the picture."}]


THRESHOLD = 0.5


@pytest.fixture(scope="module")
def guard(detector):
    harmful, benign = detector.score([HARMFUL, BENIGN])
    assert harmful >= THRESHOLD > benign, f"the shipped detector no longer separates the fixtures: {harmful=} {benign=}"
    return Protector(detector, RefusalDetoxifier(), ProtectorSettings(threshold=THRESHOLD))


@pytest.fixture(scope="module")
def upstream():
    app = scripted_upstream(TEXTS, slow_delay=4.0)
    with ServerThread(app) as server:
        yield server


@contextmanager
def running_proxy(protector: Protector, upstream_url: str, **sections: dict[str, Any]) -> Iterator[ServerThread]:
    sections["upstream"] = {"url": upstream_url, **sections.get("upstream", {})}
    config = load_config(None, sections, env={})
    with ServerThread(create_app(config, protector)) as server:
        server.config = config
        yield server


@pytest.fixture(scope="module")
def proxy(guard, upstream):
    with running_proxy(guard, upstream.url + "/v1", upstream={"timeout": 1.5, "model_map": {"guarded": "benign"}}) as server:
        yield server


def client(server: ServerThread, key: str = "unused") -> openai.OpenAI:
    return openai.OpenAI(base_url=server.url + "/v1", api_key=key, max_retries=0, timeout=30)


def flagged(detector, threshold: float, text: str) -> bool:
    return bool(text) and detector.score([text])[0] >= threshold


def stream_deltas(server: ServerThread, model: str) -> tuple[list[str], list[Any]]:
    chunks = list(client(server).chat.completions.create(model=model, messages=USER, stream=True))
    deltas = [c.choices[0].delta.content or "" for c in chunks if c.choices]
    return deltas, chunks


def assert_error(reply: httpx.Response, status: int, *words: str) -> dict[str, Any]:
    assert reply.status_code == status, reply.text
    error = reply.json()["error"]
    assert set(error) == {"message", "type", "param", "code"}
    for word in words:
        assert word in error["message"], error["message"]
    return error


# --- non-streaming -------------------------------------------------------------------------------

def test_benign_answer_passes_unchanged_through_the_openai_sdk(proxy, guard):
    raw = client(proxy).chat.completions.with_raw_response.create(model="benign", messages=USER)
    completion = raw.parse()
    assert completion.choices[0].message.content == BENIGN
    info = completion.model_extra["protector"]
    assert info["action"] == "pass" and info["score"] < guard.threshold and info["rounds"] == 0
    assert raw.headers["x-protector-action"] == "pass" and raw.headers["x-request-id"]
    assert float(raw.headers["x-protector-score"]) == pytest.approx(info["score"], abs=1e-4)


def test_harmful_answer_is_replaced_and_never_returned(proxy, guard, detector):
    completion = client(proxy).chat.completions.create(model="harmful", messages=USER, logprobs=True)
    text = completion.choices[0].message.content
    assert text == DEFAULT_REFUSAL and not flagged(detector, guard.threshold, text)
    info = completion.model_extra["protector"]
    assert info["action"] == "detoxified" and info["score"] >= guard.threshold and info["rounds"] == 1
    assert completion.choices[0].logprobs is None and completion.choices[0].finish_reason == "stop"


def test_concurrent_harmful_answers_are_all_replaced(proxy, guard):
    from concurrent.futures import ThreadPoolExecutor

    def ask(i: int) -> Any:
        return client(proxy).chat.completions.create(model="harmful" if i % 2 else "benign", messages=USER)

    with ThreadPoolExecutor(8) as pool:
        completions = list(pool.map(ask, range(16)))  # detector checks and detoxifications batch up
    for i, completion in enumerate(completions):
        expected = (DEFAULT_REFUSAL, "detoxified") if i % 2 else (BENIGN, "pass")
        assert (completion.choices[0].message.content, completion.model_extra["protector"]["action"]) == expected


def test_model_map_rewrites_the_upstream_model_and_keeps_the_client_name(proxy, upstream):
    completion = client(proxy).chat.completions.create(model="guarded", messages=USER)
    assert completion.model == "guarded" and completion.choices[0].message.content == BENIGN
    assert upstream.app.state.requests[-1]["body"]["model"] == "benign"


def test_models_are_proxied_with_aliases(proxy):
    ids = [m.id for m in client(proxy).models.list()]
    assert {"benign", "harmful", "guarded"} <= set(ids)


# --- streaming -----------------------------------------------------------------------------------

def test_benign_stream_is_released_in_full_in_order(proxy):
    deltas, chunks = stream_deltas(proxy, "benign")
    assert "".join(deltas) == BENIGN
    assert chunks[-1].choices[0].finish_reason == "stop"
    assert chunks[-1].model_extra["protector"]["action"] == "pass"


@pytest.mark.parametrize("model", ["harmful", "mixed"])
def test_no_flagged_text_ever_reaches_the_client_mid_stream(proxy, guard, detector, model):
    deltas, chunks = stream_deltas(proxy, model)
    received = ""
    for delta in deltas:  # every prefix the client could have shown must pass the detector
        received += delta
        assert not flagged(detector, guard.threshold, received), f"flagged prefix reached the client: {received!r}"
    assert not any(marker in received for marker in HARMFUL_MARKERS)
    assert received.endswith(DEFAULT_REFUSAL)
    if model == "mixed":  # the benign opening was approved and released before the flagged window
        assert received.startswith(BENIGN.split(". ")[0])
    assert chunks[-1].model_extra["protector"]["action"] == "detoxified"
    assert chunks[-1].model_extra["protector"]["score"] >= guard.threshold


def test_stream_is_plain_sse_with_done(proxy):
    with httpx.stream("POST", proxy.url + "/v1/chat/completions", timeout=30,
                      json={"model": "benign", "messages": USER, "stream": True}) as reply:
        assert reply.headers["content-type"].startswith("text/event-stream")
        lines = [line for line in reply.iter_lines() if line]
    assert all(line.startswith("data: ") for line in lines) and lines[-1] == "data: [DONE]"
    first = json.loads(lines[0][6:])
    assert first["object"] == "chat.completion.chunk" and first["choices"][0]["delta"]["role"] == "assistant"


def test_upstream_stalling_mid_stream_ends_with_an_error_event(proxy):
    with pytest.raises(openai.APIError, match="read timeout"):
        for chunk in client(proxy).chat.completions.create(model="stall", messages=USER, stream=True):
            assert not (chunk.choices and chunk.choices[0].delta.content)  # nothing unapproved was released


def test_hold_back_windows_cut_at_sentences_or_at_most_max_chars():
    hold = HoldBack(StreamConfig(mode="sentence", min_chars=10, max_chars=40))
    hold.feed("Short. ")
    assert hold.next_window() is None  # below min_chars
    hold.feed("Then a longer sentence. And half of ")
    assert hold.next_window() == "Short. Then a longer sentence."
    hold.feed("another one without an end that keeps going on")
    window = hold.next_window()
    assert window is not None and window.endswith(" ") and len(window) >= 10
    assert hold.flush() and hold.flush() == ""
    chars = HoldBack(StreamConfig(mode="chars", min_chars=5, max_chars=12))
    chars.feed("one two. three four")
    assert chars.next_window() == "one two. three "


# --- the guard-only endpoint ---------------------------------------------------------------------

def test_guard_endpoint_checks_without_upstream(proxy, guard, upstream):
    before = len(upstream.app.state.requests)
    benign = httpx.post(proxy.url + "/v1/guard", json={"query": "q", "response": BENIGN}).json()
    assert benign["action"] == "pass" and benign["text"] == BENIGN and benign["threshold"] == pytest.approx(guard.threshold)
    harmful = httpx.post(proxy.url + "/v1/guard", json={"response": HARMFUL, "category": "crime"}).json()
    assert harmful["action"] == "detoxified" and harmful["harmful"] and harmful["text"] == DEFAULT_REFUSAL
    scored = httpx.post(proxy.url + "/v1/guard", json={"response": HARMFUL, "detoxify": False}).json()
    assert scored["action"] == "flagged" and scored["text"] == DEFAULT_REFUSAL and scored["rounds"] == 0
    assert scored["category"] == "violence_weapons" and benign.get("category") is None  # the detector's category
    assert len(upstream.app.state.requests) == before


# --- errors in the OpenAI shape ------------------------------------------------------------------

def png_data_url() -> str:
    buffer = io.BytesIO()
    Image.new("RGB", (4, 4), "red").save(buffer, format="PNG")
    return "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode()


def image_message(url: str) -> list[dict[str, Any]]:
    return [{"role": "user", "content": [{"type": "text", "text": "What is this?"}, {"type": "image_url", "image_url": {"url": url}}]}]


@pytest.mark.parametrize("body, words", [
    (b"{not json", ("not valid JSON",)),
    (b"", ("empty",)),
    (b"[1, 2]", ("JSON object",)),
    (json.dumps({"model": "benign"}).encode(), ("messages", "Field required")),
    (json.dumps({"model": "benign", "messages": []}).encode(), ("messages",)),
    (json.dumps({"model": "benign", "messages": [{"role": "wizard", "content": "hi"}]}).encode(), ("role",)),
    (json.dumps({"model": "benign", "messages": USER, "stream": True, "n": 2}).encode(), ("n > 1",)),
    (json.dumps({"model": "benign", "messages": image_message("data:image/png;base64,@@@notbase64")}).encode(), ("base64",)),
    (json.dumps({"model": "benign", "messages": image_message("data:image/png;base64," + base64.b64encode(b"just text").decode())}).encode(), ("not a readable image",)),
    (json.dumps({"model": "benign", "messages": image_message("https://example.com/cat.png")}).encode(), ("remote image URLs are disabled",)),
    (json.dumps({"model": "benign", "messages": image_message("file:///etc/passwd")}).encode(), ("data URL",)),
], ids=["malformed", "empty", "array", "no-messages", "zero-messages", "bad-role", "stream-n", "bad-base64",
        "not-an-image", "remote-url", "file-url"])
def test_bad_requests_get_400_in_openai_shape(proxy, body, words):
    reply = httpx.post(proxy.url + "/v1/chat/completions", content=body, headers={"content-type": "application/json"})
    error = assert_error(reply, 400, *words)
    assert error["type"] == "invalid_request_error"


def test_sdk_raises_bad_request_for_wrong_schema(proxy):
    with pytest.raises(openai.BadRequestError, match="messages"):
        client(proxy).chat.completions.create(model="benign", messages=[{"role": "user"}, {"content": "x"}])


def test_image_data_url_passes_upstream_unchanged(proxy, upstream):
    url = png_data_url()
    completion = client(proxy).chat.completions.create(model="benign", messages=image_message(url))
    assert completion.choices[0].message.content == BENIGN
    assert upstream.app.state.requests[-1]["body"]["messages"][0]["content"][1]["image_url"]["url"] == url


def test_oversize_body_is_413_with_or_without_content_length(proxy):
    big = json.dumps({"model": "benign", "messages": [{"role": "user", "content": "x" * (9 * 1024 * 1024)}]}).encode()
    assert_error(httpx.post(proxy.url + "/v1/chat/completions", content=big), 413, "exceeds")

    def chunks():
        for start in range(0, len(big), 1 << 20):
            yield big[start : start + (1 << 20)]

    assert_error(httpx.post(proxy.url + "/v1/chat/completions", content=chunks()), 413, "exceeds")


def test_unknown_path_and_method_are_openai_shaped(proxy):
    assert_error(httpx.get(proxy.url + "/v1/nothing"), 404, "unknown path")
    assert_error(httpx.get(proxy.url + "/v1/chat/completions"), 405, "not allowed")


def test_upstream_5xx_timeout_and_protocol_errors(proxy):
    http = httpx.Client(base_url=proxy.url, timeout=30)
    body = {"messages": USER}
    assert assert_error(http.post("/v1/chat/completions", json={**body, "model": "error"}), 502, "HTTP 500")["code"] == "upstream_status"
    assert assert_error(http.post("/v1/chat/completions", json={**body, "model": "slow"}), 504, "timed out")["code"] == "upstream_timeout"
    assert_error(http.post("/v1/chat/completions", json={**body, "model": "slow", "stream": True}), 504, "timed out")
    assert_error(http.post("/v1/chat/completions", json={**body, "model": "bad-json"}), 502, "no chat completion")


def test_upstream_down_is_502_and_health_says_unavailable(guard):
    with running_proxy(guard, f"http://127.0.0.1:{free_port()}/v1") as server:
        with pytest.raises(openai.InternalServerError) as info:
            client(server).chat.completions.create(model="benign", messages=USER)
        assert info.value.status_code == 502 and "unreachable" in info.value.message
        health = httpx.get(server.url + "/health")
        assert health.status_code == 503 and health.json() == {"status": "unavailable"}  # no key: only up/down
        assert str(server.config.upstream.url) not in info.value.message


# --- security ------------------------------------------------------------------------------------

def test_non_loopback_bind_requires_keys_and_keys_are_masked():
    with pytest.raises(InputError, match="requires API keys"):
        load_config(None, {"server": {"host": "0.0.0.0"}}, env={})
    config = load_config(None, {"server": {"host": "0.0.0.0"}}, env={"MLLM_PROTECTOR_API_KEYS": "sk-first-secret-key, sk-second-secret"})
    assert config.auth_required and len(config.server.api_keys) == 2
    printed = json.dumps(config.masked())
    assert "secret" not in printed and mask("sk-first-secret-key") in printed
    assert is_loopback("127.0.0.1") and is_loopback("::1") and not is_loopback("0.0.0.0")


def test_api_keys_are_required_and_the_upstream_key_stays_server_side(guard, upstream):
    sections = {"server": {"api_keys": ["sk-proxy-client-key-1"], "require_auth": True},
                "upstream": {"url": upstream.url + "/v1", "api_key": "sk-upstream-secret"}}
    with running_proxy(guard, upstream.url + "/v1", **sections) as server:
        with pytest.raises(openai.AuthenticationError):
            client(server, "sk-wrong").chat.completions.create(model="benign", messages=USER)
        reply = httpx.post(server.url + "/v1/chat/completions", json={"model": "benign", "messages": USER})
        assert assert_error(reply, 401, "missing API key")["type"] == "authentication_error"
        assert_error(httpx.post(server.url + "/v1/guard", json={"response": BENIGN}), 401)
        completion = client(server, "sk-proxy-client-key-1").chat.completions.create(model="benign", messages=USER)
        assert completion.choices[0].message.content == BENIGN
        assert upstream.app.state.requests[-1]["authorization"] == "Bearer sk-upstream-secret"
        assert httpx.get(server.url + "/health").json() == {"status": "ok"}  # probes need no key, and learn no more
        detail = httpx.get(server.url + "/health", headers={"Authorization": "Bearer sk-proxy-client-key-1"}).json()
        assert detail["guard"] == "ready" and detail["upstream"]["ok"] and "threshold" not in detail


def test_per_key_concurrency_limit_answers_429(guard, upstream):
    with running_proxy(guard, upstream.url + "/v1", server={"per_key_concurrency": 1}) as server:
        results: list[int] = []
        slow = threading.Thread(target=lambda: results.append(httpx.post(
            server.url + "/v1/chat/completions", json={"model": "slow", "messages": USER}, timeout=30).status_code))
        slow.start()
        state = server.app.state.proxy
        for _ in range(250):  # until the slow request holds the key's only slot
            if state.gate.in_flight:
                break
            time.sleep(0.02)
        reply = httpx.post(server.url + "/v1/chat/completions", json={"model": "benign", "messages": USER})
        assert_error(reply, 429, "too many concurrent requests")
        slow.join()
        assert results == [200]


# --- failure policy ------------------------------------------------------------------------------

@pytest.mark.parametrize("mode", ["closed", "open"])
def test_detector_timeout_fails_closed_or_open(guard, upstream, mode):
    guard_section = {"fail_mode": mode, "detector_timeout": 1e-6}
    with running_proxy(guard, upstream.url + "/v1", guard=guard_section) as server:
        completion = client(server).chat.completions.create(model="harmful", messages=USER)
        deltas, chunks = stream_deltas(server, "harmful")
    info = completion.model_extra["protector"]
    if mode == "closed":  # never unchecked text: the refusal, in both modes of answering
        assert completion.choices[0].message.content == DEFAULT_REFUSAL and info["action"] == "refused"
        assert "".join(deltas) == DEFAULT_REFUSAL
    else:
        assert completion.choices[0].message.content == HARMFUL and info["action"] == "unchecked"
        assert "".join(deltas) == HARMFUL
    assert "timed out" in info["error"]
    assert chunks[-1].model_extra["protector"]["action"] == info["action"]


# --- operations ----------------------------------------------------------------------------------

def test_health_and_metrics(proxy):
    health = httpx.get(proxy.url + "/health")
    assert health.status_code == 200 and health.json() == {"status": "ok"}
    client(proxy).chat.completions.create(model="harmful", messages=USER)
    text = httpx.get(proxy.url + "/metrics").text
    for name in ("mllm_protector_requests_total", "mllm_protector_verdicts_total", "mllm_protector_detector_seconds_bucket",
                 "mllm_protector_detox_seconds_bucket", "mllm_protector_upstream_errors_total", "mllm_protector_guard_seconds"):
        assert name in text
    assert 'mllm_protector_verdicts_total{action="detoxified",mode="chat"}' in text


@pytest.mark.parametrize("include_text", [False, True])
def test_audit_log_has_no_text_unless_enabled(guard, upstream, tmp_path, include_text):
    log = tmp_path / "audit.jsonl"
    server_section = {"audit_log": str(log), "audit_include_text": include_text}
    with running_proxy(guard, upstream.url + "/v1", server=server_section) as server:
        client(server).chat.completions.create(model="harmful", messages=USER)
        stream_deltas(server, "harmful")
    lines = [json.loads(line) for line in log.read_text().splitlines()]
    assert [line["stream"] for line in lines] == [False, True]
    for line in lines:
        assert line["action"] == "detoxified" and line["request_id"] and line["latency_ms"] > 0
        assert ("pipe bomb" in json.dumps(line)) is include_text


def test_config_file_yaml_and_toml_with_flag_overrides(tmp_path):
    yaml_file = tmp_path / "proxy.yaml"
    yaml_file.write_text("upstream:\n  url: http://127.0.0.1:9/v1\n  model_map: {safe: smollm2}\n"
                         "guard:\n  detoxifier: refusal\n  fail_mode: open\nstream:\n  min_chars: 20\n")
    config = load_config(yaml_file, {"upstream": {"url": "http://127.0.0.1:8/v1"}, "server": {"port": None}}, env={})
    assert config.upstream.url == "http://127.0.0.1:8/v1" and config.upstream.model_map == {"safe": "smollm2"}
    assert config.guard.fail_mode == "open" and config.stream.min_chars == 20 and config.server.port == 8000
    toml_file = tmp_path / "proxy.toml"
    toml_file.write_text('[guard]\nthreshold = 0.7\n[stream]\nmode = "chars"\n')
    assert load_config(toml_file, env={}).guard.threshold == 0.7
    (tmp_path / "typo.yaml").write_text("guard:\n  fail_mod: open\n")
    with pytest.raises(InputError, match="fail_mod"):
        load_config(tmp_path / "typo.yaml", env={})
    assert isinstance(load_config(None, env={}), ProxyConfig)
    example = load_config(Path(__file__).parents[1] / "examples" / "proxy.yaml", env={})  # the shipped example stays valid
    assert example.guard.fail_mode == "closed" and not example.auth_required


def test_slow_request_body_is_408(guard, upstream):
    with running_proxy(guard, upstream.url + "/v1", server={"body_timeout": 0.5}) as server:
        def trickle():
            yield b'{"model": "benign", '
            time.sleep(1.5)
            yield b'"messages": []}'

        assert_error(httpx.post(server.url + "/v1/chat/completions", content=trickle(), timeout=10), 408, "not received")


def test_models_that_fail_to_load_are_reported_not_crashing(upstream, tmp_path):
    config = load_config(None, {"upstream": {"url": upstream.url + "/v1"},
                                "guard": {"detector": str(tmp_path / "missing"), "detoxifier": "refusal"}}, env={})
    with ServerThread(create_app(config)) as server:  # no Protector given: models load in the background
        for _ in range(100):
            reply = httpx.post(server.url + "/v1/chat/completions", json={"model": "benign", "messages": USER})
            if reply.json()["error"]["code"] != "guard_loading":
                break
            time.sleep(0.05)
        error = assert_error(reply, 503, "not a saved detector")
        assert error["code"] == "guard_unavailable" and httpx.get(server.url + "/health").status_code == 503
