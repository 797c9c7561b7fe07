"""JSONL input/output for the CLI: validated records, chunked processing and resumable output."""

from __future__ import annotations

import json
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TextIO

from .errors import InputError


@dataclass
class Line:
    """One parsed input line and its 1-based line number (for error messages)."""

    number: int
    record: dict[str, Any]


def parse_line(text: str, number: int, required: tuple[str, ...], source: str) -> Line:
    """Parse one JSONL line into an object that has the `required` string fields."""
    return Line(number, parse_record(text, required, f"{source}, line {number}"))


def parse_record(text: str, required: tuple[str, ...], where: str) -> dict[str, Any]:
    """One JSON text as a checked record; errors start with `where` (the file and line, or an excerpt)."""
    try:
        record = json.loads(text)
    except json.JSONDecodeError as exc:
        raise InputError(f"{where}: not valid JSON ({exc.msg})") from exc
    return check_record(record, required, where)


def check_record(record: Any, required: tuple[str, ...], where: str) -> dict[str, Any]:
    """`record` if it is an object with the `required` string fields and string-or-null optional ones."""
    if not isinstance(record, dict):
        raise InputError(f"{where}: expected a JSON object, got {type(record).__name__}")
    for name in required:
        if not isinstance(record.get(name), str):
            problem = "missing" if record.get(name) is None else f"not a string ({type(record[name]).__name__})"
            raise InputError(f"{where}: field '{name}' is {problem}")
    for name in ("query", "image", "category"):
        if record.get(name) is not None and not isinstance(record[name], str):
            raise InputError(f"{where}: field '{name}' must be a string")
    return record


def iter_lines(stream: TextIO, required: tuple[str, ...], source: str, skip: int = 0) -> Iterator[Line]:
    """Yield validated records, skipping blank lines and the first `skip` records (resume)."""
    seen = 0
    for number, text in enumerate(stream, start=1):
        if not text.strip():
            continue
        seen += 1
        if seen <= skip:
            continue
        yield parse_line(text, number, required, source)


def count_complete_lines(path: Path) -> int:
    """Records already written by an earlier run; a torn last line is cut off so it is redone."""
    if not path.is_file():
        return 0
    data = path.read_bytes()
    complete = data[: data.rfind(b"\n") + 1]
    if len(complete) != len(data):
        path.write_bytes(complete)
    return sum(1 for line in complete.splitlines() if line.strip())


@contextmanager
def open_input(path: str) -> Iterator[TextIO]:
    """Open the input JSONL (`-` for stdin) with a clear error when it is missing."""
    if path == "-":
        yield sys.stdin
        return
    try:
        with open(path, encoding="utf-8") as handle:
            yield handle
    except FileNotFoundError as exc:
        raise InputError(f"input file {path} does not exist") from exc


@contextmanager
def open_output(path: str, resume: bool) -> Iterator[tuple[Callable[[dict[str, Any]], None], int]]:
    """Appending writer (`-` for stdout) and the number of records to skip when resuming."""
    if path == "-":
        yield _writer(sys.stdout), 0
        return
    out = Path(path)
    done = count_complete_lines(out) if resume else 0
    with open(out, "a" if resume else "w", encoding="utf-8") as handle:
        yield _writer(handle), done


def _writer(handle: TextIO) -> Callable[[dict[str, Any]], None]:
    """Write one JSON line and flush it, so an interrupted run loses nothing already processed."""

    def write(record: dict[str, Any]) -> None:
        handle.write(json.dumps(record, ensure_ascii=False) + "\n")
        handle.flush()

    return write
