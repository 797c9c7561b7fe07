"""The playground page as served (package files, no CDN, locked-down headers), the proxy without an upstream,
and `mllm-protector playground` as a real process."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import httpx
import pytest

from mllm_protector import Protector, RefusalDetoxifier
from mllm_protector.server import playground
from mllm_protector.server.app import GUARD_ONLY, create_app
from mllm_protector.server.config import load_config

from .servers import LOOPBACK, ServerThread, free_port, wait_ready

STATIC = Path(playground.__file__).parent / "static"


@pytest.fixture(scope="module")
def guard_only(detector):
    config = load_config(None, {}, env={})
    with ServerThread(create_app(config, Protector(detector, RefusalDetoxifier()), with_upstream=False)) as proxy:
        yield proxy.url


def test_page_and_assets_are_served_from_the_package(guard_only):
    page = httpx.get(guard_only + "/playground")
    assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
    assert "default-src 'none'" in page.headers["content-security-policy"]
    assert page.headers["x-content-type-options"] == "nosniff"
    assert page.content == (STATIC / playground.PAGE).read_bytes()
    linked = [u for u in re.findall(r'(?:src|href)="([^"]+)"', page.text) if not u.startswith("data:")]
    assert sorted(linked) == ["playground/playground.css", "playground/playground.js"]
    for name in linked:
        reply = httpx.get(f"{guard_only}/{name}")
        assert reply.status_code == 200 and reply.headers["content-type"] == playground.ASSETS[name.split("/")[1]]
    missing = httpx.get(guard_only + "/playground/secrets.txt")
    assert missing.status_code == 404 and "the page is at /playground" in missing.json()["error"]["message"]
    assert httpx.get(guard_only + "/playground/..%2Fapp.py").status_code == 404


def test_the_page_loads_nothing_from_elsewhere():
    """No CDN, fonts or trackers: the only absolute URL in the page's files is the SVG namespace."""
    urls = {u for p in STATIC.iterdir() for u in re.findall(r"\w+://[^\s\"')]+", p.read_text())}
    assert urls == {"http://www.w3.org/2000/svg"}
    assert sorted(p.name for p in STATIC.iterdir()) == sorted([playground.PAGE, *playground.ASSETS])


def test_without_an_upstream_only_the_guard_and_the_page(guard_only):
    chat = httpx.post(guard_only + "/v1/chat/completions", json={"model": "m", "messages": [{"role": "user", "content": "hi"}]})
    assert chat.status_code == 404
    assert chat.json()["error"]["message"].endswith("this proxy serves " + ", ".join(GUARD_ONLY))
    assert httpx.get(guard_only + "/v1/models").status_code == 404
    assert httpx.get(guard_only + "/health").json() == {"status": "ok"}
    paths = httpx.get(guard_only + "/openapi.json").json()["paths"]
    assert "/v1/guard" in paths and "/v1/chat/completions" not in paths and "/playground" not in paths


@pytest.mark.slow
def test_playground_command_serves_the_page_without_an_upstream(tmp_path):
    port = free_port()
    log = tmp_path / "playground.log"
    cmd = [sys.executable, "-m", "mllm_protector.cli", "playground", "--port", str(port), "--detoxifier", "refusal"]
    with open(log, "wb") as out:
        process = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT)
        try:
            url = f"http://{LOOPBACK}:{port}"
            wait_ready(url + "/playground", 120, process)
            assert httpx.get(url + "/playground").status_code == 200
            verdict = httpx.post(url + "/v1/guard", json={"response": "The photo shows a red bus."}, timeout=30).json()
            assert verdict["action"] == "pass" and verdict["windows"]
            assert httpx.get(url + "/v1/models").status_code == 404
        finally:
            process.terminate()
            process.wait(timeout=20)
    printed = log.read_text()
    assert f"guard (no upstream) on {url}/v1/guard" in printed and f"playground: {url}/playground" in printed
    assert "upstream:" not in printed  # the printed config leaves out the section that is not used
