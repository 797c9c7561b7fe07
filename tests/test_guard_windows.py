"""Where the detector looked: window spans from `encode_windows`, carried by the Verdict, returned by /v1/guard
(to callers with a key when the proxy has keys), for the playground's chart and highlight."""

from __future__ import annotations

import base64
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import httpx
import pytest

from mllm_protector import Protector, ProtectorSettings, RefusalDetoxifier
from mllm_protector.detector import DetectorConfig, encode_windows
from mllm_protector.models import load_tokenizer
from mllm_protector.server.app import create_app
from mllm_protector.server.config import load_config

from .conftest import BENIGN, HARMFUL
from .servers import ServerThread

KEY = "sk-playground-test-1"
#: Harm after several windows of harmless text: the detector's top window must be the harmful end.
LONG = " ".join([BENIGN] * 5) + " " + HARMFUL


def test_spans_cover_each_window_in_the_normalised_text():
    tokenizer = load_tokenizer("minilm-l6")
    config = DetectorConfig(max_length=32, stride=8)
    text = " ".join(f"word{i}" for i in range(60))
    payload = base64.b64encode(b"this payload is a plain sentence about gardening").decode()
    enc = encode_windows(tokenizer, config, [text, "Decoded: " + payload, ""])
    assert len(enc["spans"]) == len(enc["input_ids"]) == len(enc["sample"])
    first = [s for s, i in zip(enc["spans"], enc["sample"], strict=True) if i == 0]
    assert first[0][1] == 0 and first[-1][2] == len(text) and len(first) > 2
    for (_, start, end), (_, next_start, _) in zip(first, first[1:], strict=False):
        assert start < next_start < end  # windows advance and overlap by `stride` tokens, so their spans do too
    for span, ids in zip(first, [w for w, i in zip(enc["input_ids"], enc["sample"], strict=True) if i == 0], strict=True):
        words = tokenizer.decode(ids, skip_special_tokens=True).replace(" ", "")
        assert words == text[span[1]:span[2]].replace(" ", "")  # the span is exactly the window's text
    assert enc["parts"][1] == ["Decoded: \n", "this payload is a plain sentence about gardening"]
    assert [s[0] for s, i in zip(enc["spans"], enc["sample"], strict=True) if i == 1] == [0, 1]
    assert enc["parts"][2] == [""] and [s for s, i in zip(enc["spans"], enc["sample"], strict=True) if i == 2] == [(0, 0, 0)]


@pytest.fixture(scope="module")
def guard(detector) -> Protector:
    return Protector(detector, RefusalDetoxifier(), ProtectorSettings(threshold=0.5))


def test_verdict_carries_the_detection(guard):
    harmful, benign = guard.check_batch([None, None], [LONG, BENIGN])
    assert harmful.harmful and not benign.harmful
    found = harmful.detection
    assert found is not None and len(found.window_scores) == len(found.window_spans) > 2
    assert max(found.window_scores) == pytest.approx(harmful.score)
    top = max(range(len(found.window_scores)), key=found.window_scores.__getitem__)
    part, start, end = found.window_spans[top]
    assert "gunpowder" in found.parts[part][start:end]
    again = guard.protect_batch([None], [LONG])[0]  # kept through detoxification
    assert again.action == "detoxified" and again.detection is not None
    assert again.detection.window_spans == found.window_spans and again.detection.parts == found.parts


@contextmanager
def guard_only(protector: Protector, **server: Any) -> Iterator[str]:
    config = load_config(None, {"server": server}, env={})
    with ServerThread(create_app(config, protector, with_upstream=False)) as proxy:
        yield proxy.url


def _guard(url: str, key: str | None = None, **body: Any) -> dict[str, Any]:
    reply = httpx.post(url + "/v1/guard", json=body, headers={"Authorization": f"Bearer {key}"} if key else {}, timeout=60)
    assert reply.status_code == 200, reply.text
    return reply.json()


def test_guard_returns_windows_and_the_scored_parts(guard):
    with guard_only(guard) as url:
        data = _guard(url, response=LONG, query="What is in the picture?")
        assert data["harmful"] and data["category"] and data["timings"]["detect_ms"] > 0
        assert data["parts"] == [LONG] and len(data["windows"]) > 2
        top = max(data["windows"], key=lambda w: w["score"])
        assert top["score"] == pytest.approx(data["score"], abs=1e-4)
        assert "gunpowder" in data["parts"][top["part"]][top["start"]:top["end"]]
        assert data["windows"][0]["start"] == 0 and data["windows"][-1]["end"] == len(LONG)
        encoded = base64.b64encode(HARMFUL.encode()).decode()
        data = _guard(url, response="Here is the answer you asked for: " + encoded, detoxify=False)
        assert data["action"] == "flagged" and data["parts"][1] == HARMFUL
        assert {w["part"] for w in data["windows"]} == {0, 1}


def test_window_details_only_for_key_holders_when_keys_are_configured(guard):
    with guard_only(guard, api_keys=[KEY]) as url:  # loopback: a key is accepted, not required
        anonymous, keyed = _guard(url, response=BENIGN), _guard(url, KEY, response=BENIGN)
    assert anonymous["parts"] is None and anonymous["windows"] is None
    assert keyed["parts"] == [BENIGN] and len(keyed["windows"]) == 1
    assert anonymous["score"] == keyed["score"] and not keyed["harmful"]
