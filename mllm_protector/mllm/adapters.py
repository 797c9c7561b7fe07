"""MLLM adapters: a Python callable, an OpenAI-compatible vision chat endpoint, a local HF model."""

from __future__ import annotations

import base64
import io
import os
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol, Union, runtime_checkable

import httpx

from ..errors import InputError
from ..openai_api import ChatClient

if TYPE_CHECKING:
    from PIL import Image

ImageInput = Union[str, os.PathLike, bytes, "Image.Image", None]


@runtime_checkable
class MLLM(Protocol):
    """Anything that answers a text query about an optional image."""

    def generate(self, query: str, image: ImageInput = None) -> str: ...


def load_image(image: ImageInput):
    """Open an image (path, bytes or PIL image) as RGB; a clear InputError when it cannot be read."""
    from PIL import Image, UnidentifiedImageError

    if image is None or isinstance(image, Image.Image):
        return image.convert("RGB") if image is not None else None
    try:
        source = io.BytesIO(image) if isinstance(image, bytes) else Path(image)
        with Image.open(source) as img:
            return img.convert("RGB")
    except (OSError, UnidentifiedImageError) as exc:
        raise InputError(f"cannot read image {image if not isinstance(image, bytes) else '<bytes>'}: {exc}") from exc


def image_data_url(image: ImageInput) -> str:
    """Encode an image as a base64 PNG data URL, the form OpenAI-compatible vision APIs accept."""
    buffer = io.BytesIO()
    load_image(image).save(buffer, format="PNG")
    return "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode("ascii")


class CallableMLLM:
    """Wraps a Python function `fn(query, image) -> str`."""

    def __init__(self, fn: Callable[[str, ImageInput], str]):
        self.fn = fn

    def generate(self, query: str, image: ImageInput = None) -> str:
        """Call the wrapped function."""
        return self.fn(query, image)


class OpenAIMLLM:
    """An OpenAI-compatible chat endpoint (vLLM, llama.cpp, Ollama, LMDeploy, hosted); image as data URL."""

    def __init__(
        self,
        base_url: str,
        model: str = "default",
        api_key: str | None = None,
        timeout: float = 120.0,
        max_tokens: int = 512,
        client: httpx.Client | None = None,
    ):
        self.api = ChatClient(base_url, "MLLM", api_key, timeout, client)
        self.model = model
        self.max_tokens = max_tokens

    def messages(self, query: str, image: ImageInput = None) -> list[dict[str, Any]]:
        """One user turn: plain text, or text + image_url content parts when an image is given."""
        if image is None:
            return [{"role": "user", "content": query}]
        parts = [{"type": "image_url", "image_url": {"url": image_data_url(image)}}, {"type": "text", "text": query}]
        return [{"role": "user", "content": parts}]

    def generate(self, query: str, image: ImageInput = None) -> str:
        """Greedy chat completion; UpstreamError names the endpoint and the cause on any failure."""
        payload = {"model": self.model, "messages": self.messages(query, image), "temperature": 0, "max_tokens": self.max_tokens}
        return self.api.complete(payload)


class HFLocalMLLM:
    """A local Hugging Face vision-language model through the `image-text-to-text` pipeline."""

    def __init__(self, model: str, max_new_tokens: int = 512, device: str | None = None):
        from transformers import pipeline

        from ..models import resolve_model

        # Typed for the chat-format call of `generate` (one result per chat), which the pipeline's overloads leave out.
        self.pipe: Callable[..., list[dict[str, Any]]] = pipeline("image-text-to-text", model=resolve_model(model), device=device)
        self.max_new_tokens = max_new_tokens

    def generate(self, query: str, image: ImageInput = None) -> str:
        """Greedy answer; the pipeline returns the whole chat, the last turn is the answer."""
        content: list[dict[str, Any]] = [{"type": "text", "text": query}]
        if image is not None:
            content.insert(0, {"type": "image", "image": load_image(image)})
        out = self.pipe(text=[{"role": "user", "content": content}], max_new_tokens=self.max_new_tokens, do_sample=False)
        generated = out[0]["generated_text"]
        return generated[-1]["content"] if isinstance(generated, list) else str(generated)
