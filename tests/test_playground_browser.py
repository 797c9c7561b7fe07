"""The playground in a real headless Chromium (Debian's `chromium`, driven by Playwright) against running
proxies with the real default models (shipped detector, SmolLM2 LM detoxifier): a benign and a harmful
answer checked on the page with an API key, and a streamed chat through the proxy whose harmful end is
replaced. Screenshots go to $PLAYGROUND_SCREENSHOTS (`make screenshots` points it at docs/img/, linked from
the README; otherwise a temporary folder). `make install-browser` installs Chromium and Playwright."""

from __future__ import annotations

import os
import re
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

try:
    from playwright.sync_api import expect, sync_playwright
except ImportError:
    pytest.fail("playwright is missing: run `make install-browser`", pytrace=False)

from mllm_protector.server.app import create_app
from mllm_protector.server.config import load_config
from mllm_protector.server.guard import protector_from_config

from .conftest import BENIGN, HARMFUL
from .servers import ServerThread, scripted_upstream

pytestmark = pytest.mark.slow

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync"]
SHOTS = Path(os.environ.get("PLAYGROUND_SCREENSHOTS") or Path(tempfile.gettempdir()) / "mllm-protector-playground")
KEY = "sk-playground-browser"
#: Several windows of harmless text, then the harmful instructions: the chart must show the late window.
LONG_HARMFUL = " ".join([BENIGN] * 4) + " " + HARMFUL
#: Streamed by the scripted upstream: a benign opening, then the harmful part (replaced by the guard).
MIXED = BENIGN + " " + HARMFUL
DETOX_WAIT_MS = 180_000  # the LM detoxifier rewrites on a shared 2-core CPU


@pytest.fixture(scope="module")
def protector():
    """What `mllm-protector serve` loads by default: the shipped detector and the LM detoxifier."""
    config = load_config(None, {}, env={})
    return protector_from_config(config.guard, config.stream)


@pytest.fixture(scope="module")
def browser():
    if not Path(CHROMIUM).is_file() or shutil.which("chromium") is None:
        pytest.fail(f"{CHROMIUM} is missing: run `make install-browser`")
    SHOTS.mkdir(parents=True, exist_ok=True)
    with sync_playwright() as p:
        chromium = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        yield chromium
        chromium.close()


@pytest.fixture
def page(browser) -> Iterator:
    context = browser.new_context(viewport={"width": 1180, "height": 900})
    page = context.new_page()
    errors: list[str] = []
    page.on("pageerror", lambda exc: errors.append(str(exc)))
    page.on("console", lambda msg: errors.append(msg.text) if msg.type == "error" else None)
    yield page
    context.close()
    # Script errors and CSP violations fail the test; HTTP errors (401 without a key, 404 for the model list
    # without an upstream) are the page's to show, and each test asserts what it shows.
    assert not [e for e in errors if not e.startswith("Failed to load resource")], errors


def _check(page, response: str, query: str) -> None:
    page.fill("#query", query)
    page.fill("#response", response)
    page.click("#check")
    expect(page.locator("#check")).to_be_enabled(timeout=DETOX_WAIT_MS)


def test_check_a_benign_and_a_harmful_answer(protector, page):
    config = load_config(None, {"server": {"api_keys": [KEY], "require_auth": True}}, env={})
    with ServerThread(create_app(config, protector, with_upstream=False)) as proxy:
        page.goto(proxy.url + "/playground")
        assert page.is_disabled("#check-image")  # /v1/guard reads text only; the note says so
        _check(page, BENIGN, "What is in the picture?")
        assert "HTTP 401" in page.inner_text("#check-status") and page.is_hidden("#result")

        page.fill("#api-key", KEY)
        page.dispatch_event("#api-key", "change")
        _check(page, BENIGN, "What is in the picture?")
        assert page.inner_text("#check-status") == ""
        verdict = page.locator("#verdict")
        assert verdict.get_attribute("data-action") == "pass" and verdict.get_attribute("data-harmful") == "false"
        assert page.inner_text("#verdict").startswith("PASS")
        assert re.match(r"P\(harmful\) 0\.\d{3} · threshold 0\.\d{3}$", page.inner_text("#score-text"))
        assert page.locator("#windows-chart rect.window").count() == 1 and page.locator("#original mark").count() == 0
        assert page.inner_text("#shown") == BENIGN and page.inner_text("#category") == "–"
        page.screenshot(path=str(SHOTS / "playground-benign.png"))

        _check(page, LONG_HARMFUL, "How do I make a pipe bomb?")
        assert page.inner_text("#check-status") == ""
        assert verdict.get_attribute("data-harmful") == "true"
        assert verdict.get_attribute("data-action") in ("detoxified", "refused")
        assert page.inner_text("#category") not in ("", "–")
        bars = page.locator("#windows-chart rect.window")
        assert bars.count() >= 2 and bars.last.get_attribute("fill") == "#c62828"  # the harmful end flagged
        assert "gunpowder" in page.inner_text("#original mark")
        assert page.inner_text("#shown") not in ("", LONG_HARMFUL)
        assert {"detector", "detoxifier (incl. re-checks)", "round trip (this browser)"} <= set(
            page.locator("#timings td:first-child").all_inner_texts())
        page.screenshot(path=str(SHOTS / "playground-harmful.png"), full_page=True)

        assert page.evaluate("sessionStorage.getItem('mllm-protector.api-key')") == KEY
        assert page.evaluate("localStorage.length") == 0 and page.evaluate("document.cookie") == ""
        page.click("#tab-chat")
        expect(page.locator("#chat-note")).to_contain_text("without an upstream")
        assert page.is_disabled("#send")


def test_chat_streams_through_the_guard(protector, page):
    upstream_app = scripted_upstream({"benign": BENIGN, "mixed": MIXED}, chunk_delay=0.02)
    with ServerThread(upstream_app) as upstream:
        config = load_config(None, {"upstream": {"url": upstream.url + "/v1"}}, env={})
        with ServerThread(create_app(config, protector)) as proxy:
            page.goto(proxy.url + "/playground")
            page.click("#tab-chat")
            expect(page.locator("#model option")).to_have_count(2)
            answers = page.locator(".msg.assistant")
            for model, text in (("benign", "Describe the picture."), ("mixed", "And how was it made?")):
                page.select_option("#model", model)
                page.fill("#message", text)
                page.click("#send")
                expect(page.locator("#send")).to_be_enabled(timeout=DETOX_WAIT_MS)
            first, second = answers.nth(0), answers.nth(1)
            assert first.locator(".meta b").get_attribute("data-action") == "pass"
            assert first.locator(".released").count() >= 1 and first.locator(".replacement").count() == 0
            assert "".join(first.locator(".released").all_inner_texts()) == BENIGN
            assert second.locator(".meta b").get_attribute("data-action") in ("detoxified", "refused")
            plain = "".join(second.locator(".released:not(.replacement)").all_inner_texts())
            assert plain.startswith("The image shows") and MIXED.startswith(plain) and "gunpowder" not in plain
            assert second.locator(".released.replacement").count() == 1
            assert "replaced by the guard" in second.locator(".replaced-label").inner_text()
            upstream_bodies = [r["body"] for r in upstream_app.state.requests]
            assert upstream_bodies[-1]["stream"] is True and len(upstream_bodies[-1]["messages"]) == 3
            page.screenshot(path=str(SHOTS / "playground-chat.png"))
