"""OpenAI-compatible guard proxy (FastAPI + uvicorn + httpx): `mllm-protector serve --upstream URL`.

Kept import-light: `create_app` and the config loader are imported on first use, so the CLI's
`--help` does not pull in FastAPI or torch.
"""

from __future__ import annotations

from typing import Any

__all__ = ["create_app", "load_config", "ProxyConfig"]


def __getattr__(name: str) -> Any:
    if name == "create_app":
        from .app import create_app

        return create_app
    if name in ("load_config", "ProxyConfig"):
        from . import config

        return getattr(config, name)
    raise AttributeError(name)
