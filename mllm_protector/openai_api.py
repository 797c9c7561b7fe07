"""The one OpenAI-compatible chat-completions client behind every remote model: the detoxifier, the MLLM
adapter and the LLM judge (sync), and the URL and key conventions the proxy's async upstream shares.

Failures become `UpstreamError`s that name the role and endpoint and the cause (timeout, HTTP status,
unreachable, malformed reply), never the endpoint's error body, which may echo credentials.
"""

from __future__ import annotations

from typing import Any

import httpx

from .errors import UpstreamError


def chat_url(base_url: str) -> str:
    """`<base>/chat/completions` for an OpenAI-compatible base URL (with or without a trailing slash)."""
    return base_url.rstrip("/") + "/chat/completions"


def bearer(api_key: str | None) -> dict[str, str]:
    """The Authorization header for a key (none without one)."""
    return {"Authorization": f"Bearer {api_key}"} if api_key else {}


class ChatClient:
    """Posts chat completions to one endpoint and returns the first choice's text."""

    def __init__(self, base_url: str, role: str, api_key: str | None = None, timeout: float = 60.0,
                 client: httpx.Client | None = None):
        self.url = chat_url(base_url)
        self.role = role
        self.client = client or httpx.Client(timeout=timeout, headers=bearer(api_key))

    def complete(self, payload: dict[str, Any]) -> str:
        """The first choice's message content ("" when it is null); UpstreamError on any failure."""
        where = f"{self.role} endpoint {self.url}"
        try:
            reply = self.client.post(self.url, json=payload)
            reply.raise_for_status()
            content = reply.json()["choices"][0]["message"]["content"]
        except httpx.TimeoutException as exc:
            raise UpstreamError(f"{where} timed out") from exc
        except httpx.HTTPStatusError as exc:
            raise UpstreamError(f"{where} answered HTTP {exc.response.status_code}") from exc
        except httpx.HTTPError as exc:
            raise UpstreamError(f"{where} unreachable: {exc or type(exc).__name__}") from exc
        except (KeyError, IndexError, TypeError, ValueError) as exc:
            raise UpstreamError(f"{where} returned no chat completion") from exc
        if content is None:
            return ""
        if not isinstance(content, str):
            raise UpstreamError(f"{where} returned no text content")
        return content
