"""Schemathesis against the proxy's own OpenAPI schema (bounded number of cases): never a 5xx of ours.

The upstream is the scripted app, so every schema-valid request gets a real answer; generated bodies
that are invalid must come back as OpenAI-shaped 4xx, never 500.
"""

from __future__ import annotations

from collections import Counter

import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings
from schemathesis.checks import not_a_server_error
from schemathesis.generation import GenerationMode

from mllm_protector import Protector, ProtectorSettings, RefusalDetoxifier
from mllm_protector.server.app import create_app
from mllm_protector.server.config import load_config

from .conftest import BENIGN, HARMFUL
from .servers import ServerThread, scripted_upstream

MAX_EXAMPLES = 20  # per operation and mode: 7 runs → at most ~140 requests, ~20 s on 2 CPU cores


@pytest.fixture(scope="module")
def proxy_url(detector):
    protector = Protector(detector, RefusalDetoxifier(), ProtectorSettings(threshold=0.5))
    with ServerThread(scripted_upstream({"benign": BENIGN, "harmful": HARMFUL})) as upstream:
        config = load_config(None, {"upstream": {"url": upstream.url + "/v1", "timeout": 5}}, env={})
        with ServerThread(create_app(config, protector)) as proxy:
            yield proxy.url


def test_no_server_errors(proxy_url):
    """Each operation of /openapi.json with generated cases, schema-valid (positive) and, for the two
    request bodies, schema-violating (negative). The schemathesis pytest plugin is not used: its lazy
    fixtures do not run on this pytest version."""
    schema = schemathesis.openapi.from_url(proxy_url + "/openapi.json")
    operations = [result.ok() for result in schema.get_all_operations()]
    assert {op.path for op in operations} >= {"/v1/chat/completions", "/v1/guard", "/v1/models", "/health", "/metrics"}
    statuses: Counter[int] = Counter()
    for operation in operations:
        modes = [GenerationMode.POSITIVE] + ([GenerationMode.NEGATIVE] if operation.method.upper() == "POST" else [])
        for mode in modes:

            @given(case=operation.as_strategy(generation_mode=mode))
            @settings(max_examples=MAX_EXAMPLES, deadline=None, derandomize=True, database=None,
                      suppress_health_check=list(HealthCheck))
            def check(case):
                response = case.call(timeout=30)
                statuses[response.status_code] += 1
                case.validate_response(response, checks=[not_a_server_error])
                if response.status_code >= 400:
                    error = response.json()["error"]
                    assert error["message"] and error["type"], response.text

            check()
    assert statuses[200] > 0 and statuses[400] > 0, statuses
    assert not any(code >= 500 for code in statuses), statuses
