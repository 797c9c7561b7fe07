"""The `serve` command: load config (file < flags < env), print it with keys masked, load models, run uvicorn."""

from __future__ import annotations

import logging
import sys
from pathlib import Path
from typing import Optional

import typer


def _fail(message: str) -> None:
    typer.secho(f"error: {message}", fg=typer.colors.RED, err=True)
    raise typer.Exit(2)


def serve(
    upstream: Optional[str] = typer.Option(
        None, "--upstream", "-u", help="Upstream OpenAI-compatible base URL, e.g. http://127.0.0.1:8080/v1."),
    host: Optional[str] = typer.Option(None, "--host", help="Bind address (default 127.0.0.1). Non-loopback requires API keys."),
    port: Optional[int] = typer.Option(None, "--port", "-p", help="Port (default 8000)."),
    config: Optional[Path] = typer.Option(None, "--config", "-c", help="YAML (or .toml) config file; flags override it."),
    detector: Optional[str] = typer.Option(None, help="Saved detector folder or preset (default default)."),
    detoxifier: Optional[str] = typer.Option(None, help="lm, refusal, or an OpenAI-compatible base URL (default lm)."),
    api_key: Optional[list[str]] = typer.Option(
        None, "--api-key", help="Accepted client key (repeatable). Prefer $MLLM_PROTECTOR_API_KEYS: argv is visible to other users."),
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
    import yaml

    from ..errors import ProtectorError
    from .config import load_config

    overrides = {
        "upstream": {"url": upstream},
        "server": {"host": host, "port": port, "api_keys": api_key or None, "audit_log": audit_log},
        "guard": {"detector": detector, "detoxifier": detoxifier,
                  "fail_mode": None if fail_open is None else ("open" if fail_open else "closed")},
        "stream": {"mode": stream_mode, "min_chars": stream_min_chars, "max_chars": stream_max_chars},
    }
    try:
        cfg = load_config(config, overrides)
    except ProtectorError as exc:
        _fail(str(exc))
    typer.echo("effective config (keys masked):\n" + yaml.safe_dump(cfg.masked(), sort_keys=False).rstrip(), err=True)
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
    app = create_app(cfg, protector)
    typer.echo(f"guarding {cfg.upstream.url} on http://{cfg.server.host}:{cfg.server.port}/v1 "
               f"(threshold {protector.threshold:.3f}, fail-{cfg.guard.fail_mode})", err=True)
    uvicorn.run(app, host=cfg.server.host, port=cfg.server.port, log_level=cfg.server.log_level,
                timeout_graceful_shutdown=10)
    sys.stdout.flush()
