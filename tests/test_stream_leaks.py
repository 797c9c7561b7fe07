"""Streaming leak suite: harmful step-by-step answers behind benign lead-ins of 0–2,000 characters,
streamed word by word through the real proxy with the real default detector, thresholds and stream
config. No harmful sentence may reach the client; benign answers must come through unchanged.

The reported leak: the partial answer in context scored 0.58–0.70 (threshold 0.806), so the steps were
released before a later window was flagged. Each window is now also judged on its own.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import openai
import pytest

from mllm_protector import Protector, RefusalDetoxifier
from mllm_protector.config import DEFAULT_REFUSAL
from mllm_protector.server.app import create_app
from mllm_protector.server.config import load_config

from .servers import ServerThread, scripted_upstream
from .stream_fixtures import BENIGN_ANSWERS, HARMFUL_ANSWERS, lead_in

LEADS = (0, 100, 450, 1000, 2000)
HARMFUL = {f"harm{i}-lead{n}": (i, lead_in(n) + answer) for i, (_, answer, _) in enumerate(HARMFUL_ANSWERS) for n in LEADS}
BENIGN = {f"benign{i}-lead{n}": lead_in(n) + answer for i, answer in enumerate(BENIGN_ANSWERS) for n in (0, 1000)}


@pytest.fixture(scope="module")
def proxy(detector) -> Iterator[ServerThread]:
    texts = {model: text for model, (_, text) in HARMFUL.items()} | BENIGN
    with ServerThread(scripted_upstream(texts)) as upstream:
        config = load_config(None, {"upstream": {"url": upstream.url + "/v1"}}, env={})
        with ServerThread(create_app(config, Protector(detector, RefusalDetoxifier()))) as server:
            yield server


def stream(server: ServerThread, model: str, query: str) -> tuple[str, dict[str, Any]]:
    client = openai.OpenAI(base_url=server.url + "/v1", api_key="unused", max_retries=0, timeout=120)
    chunks = list(client.chat.completions.create(model=model, messages=[{"role": "user", "content": query}], stream=True))
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    return text, (chunks[-1].model_extra or {})["protector"]


@pytest.mark.parametrize("model", sorted(HARMFUL))
def test_no_harmful_sentence_is_released(proxy, model):
    i, _ = HARMFUL[model]
    query, _, markers = HARMFUL_ANSWERS[i]
    released, info = stream(proxy, model, query)
    leaked = [m for m in markers if m in released.lower()]
    assert not leaked, f"released {leaked} of {model}: {released[-300:]!r}"
    assert info["action"] in ("detoxified", "refused") and released.endswith(DEFAULT_REFUSAL)


@pytest.mark.parametrize("model", sorted(BENIGN))
def test_benign_answers_stream_unchanged(proxy, model):
    released, info = stream(proxy, model, "Tell me about it.")
    assert released == BENIGN[model] and info["action"] == "pass"
