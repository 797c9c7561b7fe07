"""mllm-protector: a plug-and-play safety layer for multimodal LLMs (MLLM-Protector, Pi et al. 2024).

The public names load on first use (PEP 562), so `import mllm_protector` does not pay for torch and
transformers until a model is needed.
"""

from __future__ import annotations

from importlib import import_module
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .config import ProtectorSettings
    from .detector import HarmDetector
    from .detox_llamacpp import LlamaCppDetoxifier
    from .detoxifier import Detoxifier, LMDetoxifier, OpenAIDetoxifier, RefusalDetoxifier
    from .errors import ProtectorError
    from .input_guard import InputGuard, InputVerdict
    from .protector import ProtectedMLLM, Protector, Verdict

__version__ = "0.1.0"

#: Public name → the submodule that defines it.
_HOME = {
    "ProtectorSettings": "config", "HarmDetector": "detector", "Detoxifier": "detoxifier",
    "LMDetoxifier": "detoxifier", "OpenAIDetoxifier": "detoxifier", "RefusalDetoxifier": "detoxifier",
    "LlamaCppDetoxifier": "detox_llamacpp", "InputGuard": "input_guard", "InputVerdict": "input_guard",
    "ProtectorError": "errors", "ProtectedMLLM": "protector", "Protector": "protector", "Verdict": "protector",
}
__all__ = [
    "HarmDetector", "Detoxifier", "LMDetoxifier", "LlamaCppDetoxifier", "OpenAIDetoxifier", "RefusalDetoxifier",
    "InputGuard", "InputVerdict", "Protector", "ProtectedMLLM", "Verdict", "ProtectorSettings", "ProtectorError",
]


def __getattr__(name: str) -> Any:
    """Import the submodule holding a public name the first time the name is used."""
    if name not in _HOME:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(import_module(f".{_HOME[name]}", __name__), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted([*globals(), *_HOME])
