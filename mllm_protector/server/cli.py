"""The `serve` and `playground` commands: load config (file < flags < env), print it with keys masked,
load models, run uvicorn (`playground`: the guard and its page only, no upstream)."""

from __future__ import annotations

import logging
import sys
from pathlib import Path
from typing import Optional

import typer

#: Options `serve` and `playground` share.
HOST = typer.Option(None, "--host", help="Bind address (default 127.0.0.1). Non-loopback requires API keys.")
PORT = typer.Option(None, "--port", "-p", help="Port (default 8000).")
DETECTOR = typer.Option(None, help="Saved detector folder or preset (default default).")
DETOXIFIER = typer.Option(None, help="lm, llamacpp, transformers, refusal, or an OpenAI-compatible base URL (default lm).")
API_KEY = typer.Option(None, "--api-key", help="Accepted client key (repeatable). Prefer $MLLM_PROTECTOR_API_KEYS: "
                                               "argv is visible to other users.")


def _fail(message: str) -> None:
    typer.secho(f"error: {message}", fg=typer.colors.RED, err=True)
    raise typer.Exit(2)


def serve(
    upstream: Optional[str] = typer.Option(
        None, "--upstream", "-u", help="Upstream OpenAI-compatible base URL, e.g. http://127.0.0.1:8080/v1."),
    host: Optional[str] = HOST,
    port: Optional[int] = PORT,
    config: Optional[Path] = typer.Option(None, "--config", "-c", help="YAML (or .toml) config file; flags override it."),
    detector: Optional[str] = DETECTOR,
    detoxifier: Optional[str] = DETOXIFIER,
    api_key: Optional[list[str]] = API_KEY,
    fail_open: Optional[bool] = typer.Option(
        None, "--fail-open/--fail-closed",
        help="On detector errors/timeouts release unchecked text (open) or the refusal (closed, default)."),
    stream_mode: Optional[str] = typer.Option(None, help="Hold-back window cut: sentence or chars (default sentence)."),
    stream_min_chars: Optional[int] = typer.Option(None, help="Hold back at least this many characters per check (default 80)."),
    stream_max_chars: Optional[int] = typer.Option(None, help="Check at the latest after this many characters (default 400)."),
    audit_log: Optional[str] = typer.Option(None, help="Write a JSON-lines audit log here (no answer text by default)."),
    print_config: bool = typer.Option(False, "--print-config", help="Print the effective config and exit."),
) -> None:
    """Run the OpenAI-compatible guard proxy in front of an MLLM endpoint."""
    overrides = {
        "upstream": {"url": upstream},
        "server": {"host": host, "port": port, "api_keys": api_key or None, "audit_log": audit_log},
        "guard": {"detector": detector, "detoxifier": detoxifier,
                  "fail_mode": None if fail_open is None else ("open" if fail_open else "closed")},
        "stream": {"mode": stream_mode, "min_chars": stream_min_chars, "max_chars": stream_max_chars},
    }
    _run(config, overrides, print_config, with_upstream=True)


def playground(
    host: Optional[str] = HOST,
    port: Optional[int] = PORT,
    config: Optional[Path] = typer.Option(None, "--config", "-c", help="YAML (or .toml) proxy config file; its upstream is ignored."),
    detector: Optional[str] = DETECTOR,
    detoxifier: Optional[str] = DETOXIFIER,
    api_key: Optional[list[str]] = API_KEY,
    open_browser: bool = typer.Option(False, "--open", help="Also open the page in the default web browser."),
) -> None:
    """Serve the playground page and /v1/guard without an upstream: paste an answer, see what the guard does."""
    overrides = {"server": {"host": host, "port": port, "api_keys": api_key or None},
                 "guard": {"detector": detector, "detoxifier": detoxifier}}
    _run(config, overrides, False, with_upstream=False, open_browser=open_browser)


def _run(config: Optional[Path], overrides: dict, print_config: bool, with_upstream: bool, open_browser: bool = False) -> None:
    """Load the config, print it (keys masked), load the models and serve until interrupted."""
    import yaml

    from ..errors import ProtectorError
    from .config import load_config

    try:
        cfg = load_config(config, overrides)
    except ProtectorError as exc:
        _fail(str(exc))
    shown = cfg.masked()
    if not with_upstream:
        del shown["upstream"]
    typer.echo("effective config (keys masked):\n" + yaml.safe_dump(shown, sort_keys=False).rstrip(), err=True)
    if print_config:
        return
    try:
        import uvicorn

        from .app import create_app
        from .guard import protector_from_config
    except ImportError as exc:
        _fail(f"the server extra is missing ({exc.name}): pip install 'mllm-protector[server]'")
    logging.basicConfig(level=cfg.server.log_level.upper(), format="%(levelname)s %(name)s: %(message)s")
    typer.echo(f"loading detector '{cfg.guard.detector}' and detoxifier '{cfg.guard.detoxifier}' ...", err=True)
    try:
        protector = protector_from_config(cfg.guard, cfg.stream)
    except ProtectorError as exc:
        _fail(str(exc))
    app = create_app(cfg, protector, with_upstream=with_upstream)
    base = f"http://{cfg.server.host}:{cfg.server.port}"
    what = f"guarding {cfg.upstream.url} on {base}/v1" if with_upstream else f"guard (no upstream) on {base}/v1/guard"
    typer.echo(f"{what} (threshold {protector.threshold:.3f}, fail-{cfg.guard.fail_mode}); playground: {base}/playground",
               err=True)
    if open_browser:
        import threading
        import webbrowser

        threading.Timer(1.0, webbrowser.open, [f"{base}/playground"]).start()
    uvicorn.run(app, host=cfg.server.host, port=cfg.server.port, log_level=cfg.server.log_level,
                timeout_graceful_shutdown=10)
    sys.stdout.flush()
