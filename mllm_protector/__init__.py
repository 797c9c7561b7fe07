"""mllm-protector: a plug-and-play safety layer for multimodal LLMs (MLLM-Protector, Pi et al. 2024)."""

from .config import ProtectorSettings
from .detector import HarmDetector
from .detoxifier import Detoxifier, LMDetoxifier, OpenAIDetoxifier, RefusalDetoxifier
from .errors import ProtectorError
from .protector import ProtectedMLLM, Protector, Verdict

__version__ = "0.1.0"
__all__ = [
    "HarmDetector", "Detoxifier", "LMDetoxifier", "OpenAIDetoxifier", "RefusalDetoxifier",
    "Protector", "ProtectedMLLM", "Verdict", "ProtectorSettings", "ProtectorError",
]
