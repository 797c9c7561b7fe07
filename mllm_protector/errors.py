"""One exception family so the CLI and server can turn failures into clear messages."""

from __future__ import annotations


class ProtectorError(Exception):
    """Base class: every error the library raises on purpose; the message tells the user what to do."""


class ModelNotFoundError(ProtectorError):
    """A model name resolved to nothing: not bundled, not a local path, not reachable on the hub."""


class DatasetError(ProtectorError):
    """A data file is missing or a row is malformed; the message names the file and the row."""


class InputError(ProtectorError):
    """A user-supplied input (JSONL line, image, request field) is invalid."""


class UpstreamError(ProtectorError):
    """A remote model endpoint (MLLM or detoxifier) failed, timed out or answered malformed data."""
