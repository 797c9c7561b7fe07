"""Proxy settings: one typed model, read from a YAML/TOML file, then overridden by CLI flags and env.

Sections mirror what an operator thinks about: `upstream` (where answers come from), `server` (how
clients reach the proxy: bind address, keys, limits, audit log), `guard` (detector, detoxifier and the
failure policy) and `stream` (the hold-back window). Unknown keys are errors, so a typo never silently
turns a protection off.
"""

from __future__ import annotations

import ipaddress
import os
import tomllib
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal, Optional

import yaml
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    field_validator,
    model_validator,
)

from ..config import DEFAULT_REFUSAL
from ..errors import InputError

#: Environment variables read when the config leaves the value empty (keys stay out of files and argv).
ENV_API_KEYS = "MLLM_PROTECTOR_API_KEYS"  # comma-separated client keys
ENV_UPSTREAM_KEY = "MLLM_PROTECTOR_UPSTREAM_API_KEY"
#: Shortest accepted client API key.
MIN_KEY_CHARS = 8


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)


class UpstreamConfig(_Section):
    """The protected OpenAI-compatible endpoint."""

    url: str = Field("http://127.0.0.1:8080/v1", description="Base URL ending in /v1 (vLLM, llama.cpp, Ollama, ...).")
    api_key: Optional[str] = Field(None, description=f"Key sent upstream; default: ${ENV_UPSTREAM_KEY}. Never the client's key.")
    timeout: float = Field(120.0, gt=0, description="Seconds to wait for upstream bytes (whole answer, or between stream chunks).")
    connect_timeout: float = Field(5.0, gt=0, description="Seconds to open a connection upstream.")
    max_connections: int = Field(128, ge=1, description="Connection pool size towards the upstream.")
    model_map: dict[str, str] = Field(default_factory=dict, description="Client model name -> upstream model name.")

    @field_validator("url")
    @classmethod
    def _http_url(cls, value: str) -> str:
        if not value.startswith(("http://", "https://")):
            raise ValueError(f"upstream url must start with http:// or https://, got {value!r}")
        return value.rstrip("/")


class ServerSection(_Section):
    """How clients reach the proxy, and what they may send."""

    host: str = "127.0.0.1"
    port: int = Field(8000, ge=0, le=65535)
    api_keys: list[str] = Field(default_factory=list, description=f"Accepted bearer keys; also ${ENV_API_KEYS} (comma-separated).")
    require_auth: Optional[bool] = Field(None, description="None: required exactly when bound to a non-loopback address.")
    public_health: bool = Field(True, description="/health and /metrics answer without a key (for probes and scrapers).")
    max_body_bytes: int = Field(8 * 1024 * 1024, ge=1024, description="Largest accepted request body (413 above).")
    body_timeout: float = Field(30.0, gt=0, description="Seconds a client may take to send its request body (408 above).")
    max_image_bytes: int = Field(5 * 1024 * 1024, ge=1, description="Largest decoded data-URL image.")
    allow_remote_images: bool = Field(False, description="Accept http(s) image URLs (the upstream will fetch them).")
    per_key_concurrency: int = Field(64, ge=1, description="In-flight requests per key (or per anonymous client); 429 above.")
    response_headers: bool = Field(True, description="Add x-protector-action/score/rounds headers to non-streaming answers.")
    audit_log: Optional[str] = Field(None, description="JSON-lines audit file; off when empty.")
    audit_include_text: bool = Field(False, description="Also log query, original and returned text (may contain harmful text!).")
    log_level: str = "info"


class GuardConfig(_Section):
    """Detector, detoxifier and what happens when they fail."""

    detector: str = Field("default", description="Saved detector folder or preset name.")
    detoxifier: str = Field("lm", description="lm (local SmolLM2 + adapter: llama.cpp, else transformers), llamacpp, "
                            "transformers, refusal, or an OpenAI-compatible base URL.")
    detox_model: str = Field("smollm2-135m-instruct", description="Model for `lm`, or the model name at the detoxifier URL.")
    threshold: Optional[float] = Field(None, ge=0, le=1, description="None: the detector's calibrated threshold.")
    max_rounds: int = Field(2, ge=0, description="Detoxify -> re-detect rounds before the fixed refusal.")
    refusal: str = DEFAULT_REFUSAL
    fail_mode: Literal["closed", "open"] = Field("closed", description="closed: detector failure -> refusal; open: pass unchecked.")
    detector_timeout: float = Field(10.0, gt=0, description="Seconds for one detector check (queueing included).")
    detox_timeout: float = Field(60.0, gt=0, description="Seconds for detoxification of one flagged answer.")
    workers: int = Field(1, ge=1, description="Threads running detector batches (CPU-bound torch calls).")
    max_batch: int = Field(32, ge=1, description="Detector checks from concurrent requests scored in one batch.")
    max_batch_chars: int = Field(40_000, ge=1000, description="Characters scored in one detector batch (a larger text goes alone).")
    max_request_chars: int = Field(100_000, ge=1000, description="Per-request detector budget: characters of answer text "
                                   "checked for one request (413 on /v1/guard; the refusal for a longer upstream answer).")
    detox_batch: int = Field(8, ge=1, description="Flagged answers detoxified together (one protect_batch call).")
    query: Literal["last_user", "conversation"] = Field("last_user", description="What the detector sees as the query.")
    tool_calls: Literal["check", "drop"] = Field("check", description="Tool-call arguments: checked with the answer "
                                                  "text, or dropped from every answer.")
    allow_categories: list[str] = Field(default_factory=list, description="Harm categories let through when flagged "
                                        "(e.g. professional_advice: advice without a disclaimer); see mllm_protector/categories.py.")
    input_policy: Literal["off", "flag", "block"] = Field("off", description="Input guard (OCR of image text + request "
                                                          "classifier): off; flag (answer, checked with the image's text as "
                                                          "query); block (a harmful request is answered without the upstream).")
    input_guard: str = Field("default", description="Request classifier folder or preset, loaded when input_policy is not off.")
    input_threshold: Optional[float] = Field(None, ge=0, le=1, description="None: the request classifier's threshold.")

    @field_validator("input_policy", mode="before")
    @classmethod
    def _yaml_off(cls, value: Any) -> Any:
        """YAML 1.1 reads an unquoted `off` as false."""
        return "off" if value is False else value

    @model_validator(mode="after")
    def _known_categories(self) -> GuardConfig:
        from ..categories import CATEGORIES

        unknown = [c for c in self.allow_categories if c not in CATEGORIES]
        if unknown:
            raise ValueError(f"guard.allow_categories: unknown {', '.join(unknown)} (choose from {', '.join(CATEGORIES)})")
        return self


class StreamConfig(_Section):
    """The hold-back window: text is released only after the detector approved everything up to it."""

    mode: Literal["sentence", "chars"] = Field("sentence", description="Cut windows at sentence ends, or by size only.")
    min_chars: int = Field(80, ge=1, description="Hold back at least this many new characters before a check.")
    max_chars: int = Field(400, ge=1, description="Force a check once this many characters are held back.")
    context_chars: int = Field(500, ge=100, description="A window is also judged after the last N characters of the answer so far.")
    window_threshold: Optional[float] = Field(None, ge=0, le=1, description="P(harmful) of a window alone that flags it; "
                                              "None: the calibrated default (benchmarks/stream_calibration.py).")
    context_threshold: Optional[float] = Field(None, ge=0, le=1, description="P(harmful) of a window in context that "
                                               "flags it; None: the calibrated default (at most guard.threshold when that is set).")

    @model_validator(mode="after")
    def _ordered(self) -> StreamConfig:
        if self.min_chars > self.max_chars:
            raise ValueError(f"stream.min_chars ({self.min_chars}) must not exceed stream.max_chars ({self.max_chars})")
        return self


class ProxyConfig(_Section):
    """Everything the proxy needs; build with `load_config`."""

    upstream: UpstreamConfig = Field(default_factory=UpstreamConfig)
    server: ServerSection = Field(default_factory=ServerSection)
    guard: GuardConfig = Field(default_factory=GuardConfig)
    stream: StreamConfig = Field(default_factory=StreamConfig)

    @property
    def auth_required(self) -> bool:
        """Explicit setting, else required whenever the bind address is not loopback."""
        if self.server.require_auth is not None:
            return self.server.require_auth
        return not is_loopback(self.server.host)

    def check(self) -> ProxyConfig:
        """Cross-field rules that need the final values; raises InputError with what to change."""
        if self.auth_required and not self.server.api_keys:
            raise InputError(
                f"binding to {self.server.host} requires API keys: set server.api_keys in the config file or "
                f"${ENV_API_KEYS}, or bind to 127.0.0.1 (or set server.require_auth: false if a gateway in front "
                "already authenticates)"
            )
        short = [mask(k) for k in self.server.api_keys if len(k.strip()) < MIN_KEY_CHARS]
        if short:
            raise InputError(f"API keys must have at least {MIN_KEY_CHARS} characters; too short: {', '.join(short)} "
                             "(an empty or 1-character key is guessed at once)")
        return self

    def masked(self) -> dict[str, Any]:
        """The effective config as a dict with every key masked, for the startup print."""
        data = self.model_dump()
        data["server"]["api_keys"] = [mask(k) for k in self.server.api_keys]
        data["upstream"]["api_key"] = mask(self.upstream.api_key) if self.upstream.api_key else None
        data["auth_required"] = self.auth_required
        return data


def mask(key: str) -> str:
    """`sk-…abcd`: enough to tell keys apart in logs, never enough to use one."""
    return "***" + key[-4:] if len(key) >= 12 else "***"


def is_loopback(host: str) -> bool:
    """True for localhost names and loopback IPs; anything else (0.0.0.0, a LAN IP, a name) is public."""
    if host in ("localhost", "localhost.localdomain"):
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def _read_file(path: Path) -> dict[str, Any]:
    if not path.is_file():
        raise InputError(f"config file {path} does not exist")
    text = path.read_text()
    try:
        data = tomllib.loads(text) if path.suffix == ".toml" else yaml.safe_load(text)
    except (tomllib.TOMLDecodeError, yaml.YAMLError) as exc:
        raise InputError(f"config file {path} is not valid {'TOML' if path.suffix == '.toml' else 'YAML'}: {exc}") from exc
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise InputError(f"config file {path} must hold a mapping with sections upstream/server/guard/stream")
    return data


def _merge(base: dict[str, Any], override: dict[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for key, value in override.items():
        out[key] = _merge(out[key], value) if isinstance(value, dict) and isinstance(out.get(key), dict) else value
    return out


def load_config(path: str | os.PathLike[str] | None = None, overrides: dict[str, Any] | None = None,
                env: Mapping[str, str] | None = None) -> ProxyConfig:
    """File (YAML, or TOML by suffix) < nested `overrides` (CLI flags, None values skipped) < env for keys.

    Raises InputError naming the bad field, so the CLI prints one line instead of a traceback.
    """
    env = os.environ if env is None else env
    data = _read_file(Path(path)) if path else {}
    clean = {s: {k: v for k, v in sec.items() if v is not None} for s, sec in (overrides or {}).items()}
    data = _merge(data, {s: sec for s, sec in clean.items() if sec})
    try:
        config = ProxyConfig.model_validate(data)
    except ValidationError as exc:
        problems = "; ".join(f"{'.'.join(str(p) for p in e['loc'])}: {e['msg']}" for e in exc.errors())
        raise InputError(f"invalid proxy config{f' in {path}' if path else ''}: {problems}") from exc
    if not config.server.api_keys and env.get(ENV_API_KEYS):
        config.server.api_keys = [k.strip() for k in env[ENV_API_KEYS].split(",") if k.strip()]
    if config.upstream.api_key is None and env.get(ENV_UPSTREAM_KEY):
        config.upstream.api_key = env[ENV_UPSTREAM_KEY]
    return config.check()
