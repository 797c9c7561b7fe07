"""Typed settings shared by every module: cache and data locations, default model names, loop limits."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

ENV_CACHE_DIR = "MLLM_PROTECTOR_CACHE"
ENV_DATA_DIR = "MLLM_PROTECTOR_DATA"
#: Detector backend when none is given: auto | torch | onnx | onnx-int8 (see `HarmDetector.from_pretrained`).
ENV_BACKEND = "MLLM_PROTECTOR_BACKEND"

#: Fixed last-resort answer when no harmless rewrite could be produced.
DEFAULT_REFUSAL = (
    "I'm sorry, but I can't help with that request because it could cause harm. "
    "If you have a related question that is safe, I'm happy to help."
)

#: Where the shipped default models live inside the package (small LoRA/heads committed to git).
PRETRAINED_DIR = Path(__file__).resolve().parent / "pretrained"


def cache_dir() -> Path:
    """Cache for converted weights (GGUF → safetensors); `MLLM_PROTECTOR_CACHE` overrides."""
    path = Path(os.environ.get(ENV_CACHE_DIR, Path.home() / ".cache" / "mllm-protector"))
    path.mkdir(parents=True, exist_ok=True)
    return path


def data_dir(override: str | os.PathLike[str] | None = None) -> Path:
    """The shared data folder: explicit option, else `MLLM_PROTECTOR_DATA`, else `../shared/data`.

    The relative default is tried from the working directory and from the repository root.
    """
    if override is not None:
        return Path(override)
    if ENV_DATA_DIR in os.environ:
        return Path(os.environ[ENV_DATA_DIR])
    candidates = [Path.cwd() / "../shared/data", Path(__file__).resolve().parents[1] / "../shared/data"]
    for candidate in candidates:
        if candidate.is_dir():
            return candidate.resolve()
    return candidates[0]


@dataclass(frozen=True)
class ProtectorSettings:
    """Knobs of the detect → detoxify → re-detect loop."""

    max_rounds: int = 2
    threshold: float | None = None  # None: use the detector's calibrated threshold
    refusal: str = DEFAULT_REFUSAL
    fail_mode: str = "closed"  # detector failure: "closed" → the refusal, "open" → the text unchecked
    window_threshold: float | None = None  # a stream window on its own; None: the calibrated default
    context_threshold: float | None = None  # a stream window after the answer so far; None: calibrated default
    context_chars: int = 500  # how much of the answer so far a stream window is judged after
    allow_categories: tuple[str, ...] = ()  # harm categories this deployment lets through (e.g. professional_advice)
    input_policy: str = "off"  # input guard: off | flag (answer, checked with the image's text as query) | block
    input_threshold: float | None = None  # request classifier threshold; None: the one saved with the classifier
