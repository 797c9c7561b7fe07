"""Which text of an upstream answer reaches the client, so that all of it is checked and nothing else passes.

A chat choice can carry text in `message.content` (a string or a list of parts), `reasoning_content` /
`reasoning`, `refusal`, tool-call arguments, and the legacy `choices[].text`. Every string the client would
receive is collected into one text to check; fields the proxy does not know are dropped when they hold
any text, and tool calls are either checked with the rest or dropped (`guard.tool_calls`).
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from ..protector import clean_text

#: Message / delta keys forwarded after their text was checked (tool calls only in `check` mode).
TEXT_KEYS = ("content", "reasoning_content", "reasoning", "refusal")
TOOL_KEYS = ("tool_calls", "function_call")
#: Keys whose string values are identifiers, not model text.
ID_KEYS = frozenset({"role", "type", "id", "index", "tool_call_id"})
#: Choice keys kept as they are (the message / delta / text are handled above).
CHOICE_KEYS = frozenset({"index", "finish_reason", "stop_reason", "logprobs", "message", "delta", "text"})


def strings(value: Any, key: str | None = None) -> Iterator[str]:
    """Every string leaf of a JSON value, skipping identifier keys."""
    if isinstance(value, str):
        if key not in ID_KEYS:
            yield value
    elif isinstance(value, dict):
        for k, v in value.items():
            yield from strings(v, k)
    elif isinstance(value, list):
        for item in value:
            yield from strings(item, key)


def clean(value: Any) -> Any:
    """The JSON value with invalid Unicode replaced in every string (so it can be encoded as UTF-8)."""
    if isinstance(value, str):
        return clean_text(value)
    if isinstance(value, dict):
        return {k: clean(v) for k, v in value.items()}
    if isinstance(value, list):
        return [clean(v) for v in value]
    return value


def content_text(content: Any) -> str:
    """`content` as text: a string, or the string leaves of its parts joined."""
    if isinstance(content, str):
        return content
    return "".join(strings(content)) if content else ""


def visible(message: dict[str, Any], tools: str) -> dict[str, Any]:
    """The part of a message or delta a client may get: known text fields, tool calls unless dropped, and
    unknown fields only when they hold no text."""
    out: dict[str, Any] = {}
    for key, value in message.items():
        if key in TOOL_KEYS:
            if tools == "check":
                out[key] = value
        elif key in TEXT_KEYS or key == "role" or not any(True for _ in strings(value)):
            out[key] = value
    return clean(out)


def choice_text(choice: dict[str, Any], tools: str) -> tuple[dict[str, Any], str]:
    """(the choice as it may be forwarded, all of its text the client would see, to check as one answer)."""
    out = {k: v for k, v in choice.items() if k in CHOICE_KEYS or not any(True for _ in strings(v))}
    out = clean(out)
    parts: list[str] = []
    message = out.get("message")
    if isinstance(message, dict):
        out["message"] = message = visible(message, tools)
        for key, value in message.items():
            if key != "role":
                parts.append(content_text(value) if key == "content" else "\n".join(strings(value)))
        if tools == "drop" and out.get("finish_reason") in TOOL_KEYS:
            out["finish_reason"] = "stop"
    if isinstance(out.get("text"), str):
        parts.append(out["text"])
    return out, "\n\n".join(p for p in parts if p)


def replace_choice(choice: dict[str, Any], text: str) -> None:
    """Put `text` (a rewrite or the refusal) in place of everything the choice said."""
    if isinstance(choice.get("message"), dict) or "text" not in choice:
        choice["message"] = {"role": "assistant", "content": text}
    if "text" in choice:
        choice["text"] = text
    choice["logprobs"] = None  # token logprobs would spell out the original answer
    choice["finish_reason"] = "stop"
