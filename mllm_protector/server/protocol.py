"""Protocol: pydantic request/response models that mirror the OpenAI chat schema (only what the proxy must understand).

Requests keep unknown fields (`extra="allow"`) and are forwarded upstream as the client sent them, so
sampling options, tools and vendor extensions keep working; the proxy validates only what it relies
on: the messages, their content parts and the image data.
"""

from __future__ import annotations

import base64
import binascii
import io
import re
from typing import Annotated, Any, Literal, Optional, Union

from pydantic import BaseModel, ConfigDict, Field

from ..errors import InputError


class _Open(BaseModel):
    model_config = ConfigDict(extra="allow")


class ImageURL(_Open):
    url: str = Field(..., description="A data URL (data:image/png;base64,...); http(s) only when the operator allows it.")
    detail: Optional[str] = None


class TextPart(_Open):
    type: Literal["text"]
    text: str


class ImagePart(_Open):
    type: Literal["image_url"]
    image_url: ImageURL


ContentPart = Annotated[Union[TextPart, ImagePart], Field(discriminator="type")]


class Message(_Open):
    role: Literal["system", "developer", "user", "assistant", "tool", "function"]
    content: Union[str, list[ContentPart], None] = None
    name: Optional[str] = None


class ChatCompletionRequest(_Open):
    """POST /v1/chat/completions body; other OpenAI fields pass through untouched."""

    model: str
    messages: list[Message] = Field(..., min_length=1)
    stream: Optional[bool] = False
    n: Optional[int] = Field(None, ge=1, le=16)


class GuardRequest(BaseModel):
    """POST /v1/guard body: check one (query, response) pair without calling the upstream."""

    model_config = ConfigDict(extra="forbid")

    response: str = Field(..., description="The answer to check.")
    query: Optional[str] = Field(None, description="The user's question (used when the detector was trained with queries).")
    category: Optional[str] = Field(None, description="Harm category hint for the detoxifier (e.g. 'legal', 'crime').")
    detoxify: bool = Field(True, description="Rewrite a flagged answer; false only scores it.")


class GuardWindow(BaseModel):
    """One token window the detector scored: characters [start, end) of `parts[part]`, and its P(harmful)."""

    part: int
    start: int
    end: int
    score: float


class GuardResponse(BaseModel):
    id: str
    object: Literal["guard.verdict"] = "guard.verdict"
    text: str = Field(..., description="What the user may see: the response, a detoxified rewrite or the refusal.")
    harmful: bool
    score: Optional[float] = Field(None, description="P(harmful) of the given response; null when the detector failed.")
    final_score: Optional[float] = None
    threshold: float
    action: Literal["pass", "detoxified", "refused", "flagged", "unchecked"]
    rounds: int
    timings: dict[str, float] = Field(default_factory=dict)
    error: Optional[str] = None
    category: Optional[str] = Field(None, description="Harm category of the answer, when the detector gives one.")
    parts: Optional[list[str]] = Field(None, description="The text(s) the detector scored: the answer normalised "
                                       "(obfuscations undone), a decoded base64 payload as a part of its own. Only for "
                                       "callers with a key when the proxy has keys; null when the detector did not score it.")
    windows: Optional[list[GuardWindow]] = Field(None, description="Each scored token window, in order: its span in "
                                                 "`parts` and P(harmful); the answer's score is the highest. Same "
                                                 "visibility as `parts`.")


class ErrorBody(BaseModel):
    message: str
    type: str
    param: Optional[str] = None
    code: Optional[str] = None


class ErrorResponse(BaseModel):
    """The OpenAI error shape, used for every 4xx/5xx the proxy itself produces."""

    error: ErrorBody


# --- helpers on validated requests -------------------------------------------------------------

def message_text(message: Message) -> str:
    """The text of one message: a string, or its text parts joined by newlines."""
    if isinstance(message.content, str):
        return message.content
    if not message.content:
        return ""
    return "\n".join(p.text for p in message.content if isinstance(p, TextPart))


def detector_query(request: ChatCompletionRequest, mode: str) -> str:
    """The last user turn's text, or (mode `conversation`) the whole exchange as `role: text` lines."""
    if mode == "conversation":
        return "\n".join(f"{m.role}: {message_text(m)}" for m in request.messages if message_text(m))
    for message in reversed(request.messages):
        if message.role == "user":
            return message_text(message)
    return ""


#: Largest image (width × height) accepted: a small file can declare a huge canvas (a decompression bomb).
MAX_PIXELS = 40_000_000
_DATA_URL = re.compile(r"^data:(?P<mime>[\w.+-]+/[\w.+-]+)?(?P<params>(;[\w.+-]+=[^;,]*)*)(?P<b64>;base64)?,(?P<data>.*)$", re.S)


def check_images(request: ChatCompletionRequest, allow_remote: bool, max_bytes: int) -> int:
    """Validate every image part; returns how many there were. Raises InputError naming the part.

    Data URLs must be base64 images that Pillow can identify; http(s) URLs only when allowed (the
    proxy never fetches them itself, the upstream would); any other scheme is rejected.
    """
    from PIL import Image, UnidentifiedImageError

    count = 0
    for i, message in enumerate(request.messages):
        if not isinstance(message.content, list):
            continue
        for j, part in enumerate(message.content):
            if not isinstance(part, ImagePart):
                continue
            count += 1
            where = f"messages[{i}].content[{j}].image_url.url"
            url = part.image_url.url.strip()
            if url.startswith(("http://", "https://")):
                if not allow_remote:
                    raise InputError(f"{where}: remote image URLs are disabled on this proxy; send the image inline "
                                     "as a data URL (data:image/png;base64,...)")
                continue
            match = _DATA_URL.match(url)
            if match is None:
                raise InputError(f"{where}: expected a data URL like data:image/png;base64,... (got '{url[:40]}')")
            if not (match["mime"] or "").startswith("image/") or not match["b64"]:
                raise InputError(f"{where}: data URL must be a base64-encoded image/* (got '{url[:40]}')")
            if len(match["data"]) * 3 // 4 > max_bytes:
                raise InputError(f"{where}: image is larger than the {max_bytes} bytes this proxy accepts")
            try:
                raw = base64.b64decode(match["data"], validate=True)
            except (binascii.Error, ValueError) as exc:
                raise InputError(f"{where}: image data is not valid base64 ({exc})") from exc
            try:
                with Image.open(io.BytesIO(raw)) as img:
                    if img.width * img.height > MAX_PIXELS:
                        raise Image.DecompressionBombError(f"{img.width}x{img.height} pixels")
                    img.verify()
            except Image.DecompressionBombError as exc:
                raise InputError(f"{where}: image is too large ({str(exc)[:80]}; at most {MAX_PIXELS} pixels)") from None
            except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as exc:
                raise InputError(f"{where}: image data is not a readable image ({str(exc)[:200]})") from None
    return count


def openapi_components(*models: type[BaseModel]) -> dict[str, Any]:
    """OpenAPI component schemas for models that endpoints read by hand (nested $defs flattened)."""
    components: dict[str, Any] = {}
    for model in models:
        schema = model.model_json_schema(ref_template="#/components/schemas/{model}")
        components.update(schema.pop("$defs", {}))
        components[model.__name__] = schema
    return components


def openapi_body(model: type[BaseModel]) -> dict[str, Any]:
    """`openapi_extra` declaring a required JSON body of `model` (registered by `openapi_components`)."""
    ref = {"$ref": f"#/components/schemas/{model.__name__}"}
    return {"requestBody": {"required": True, "content": {"application/json": {"schema": ref}}}}
