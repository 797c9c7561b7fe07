"""Hub-format readers (via `datasets`): PKU-SafeRLHF and BeaverTails, from a hub id or a local file.

- PKU-SafeRLHF schema (the original MLLM-Protector detector's training data): `prompt`, `response_0`,
  `response_1`, `is_response_0_safe`, `is_response_1_safe`, `safer_response_id` (other columns are
  ignored). Each response becomes a labelled `Example`; a prompt whose answers differ in safety gives
  a ranking `Pair` (safe, unsafe); with both safe or both unsafe, `safer_response_id` orders the pair.
- BeaverTails schema: `prompt`, `response`, `is_safe` (+ optional `category` dict of harm flags).

`source` is a hub id (e.g. "PKU-Alignment/PKU-SafeRLHF") or a local .json/.jsonl/.parquet file or a
folder of them. Malformed rows raise `DatasetError` naming the file (or hub id) and row.
"""

from __future__ import annotations

import hashlib
import logging
import os
from pathlib import Path
from typing import Any

from ..errors import DatasetError
from .records import HARMFUL, HARMLESS, Corpus, Example, Pair

log = logging.getLogger(__name__)

_BUILDERS = {".json": "json", ".jsonl": "json", ".parquet": "parquet", ".csv": "csv"}


def _digest(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8")).hexdigest()[:16]


def load_rows(source: str | os.PathLike[str], split: str = "train") -> tuple[str, Any]:
    """(name for messages, `datasets.Dataset`) for a local file/folder or a hub id."""
    try:
        import datasets
    except ImportError as exc:  # pragma: no cover - datasets is in the [train] extra
        raise DatasetError("reading hub-format data needs `datasets`: pip install 'mllm-protector[train]'") from exc
    path = Path(source).expanduser()
    try:
        if path.is_file():
            builder = _BUILDERS.get(path.suffix.lower())
            if builder is None:
                raise DatasetError(f"{path}: unsupported file type {path.suffix!r} (use .json, .jsonl, .parquet or .csv)")
            return str(path), datasets.load_dataset(builder, data_files=str(path), split="train")
        if path.is_dir():
            files = sorted(p for p in path.rglob("*") if p.suffix.lower() in _BUILDERS)
            if not files:
                raise DatasetError(f"{path}: no .json, .jsonl, .parquet or .csv files inside")
            builder = _BUILDERS[files[0].suffix.lower()]
            return str(path), datasets.load_dataset(builder, data_files=[str(f) for f in files], split="train")
        return str(source), datasets.load_dataset(str(source), split=split)
    except DatasetError:
        raise
    except FileNotFoundError as exc:
        raise DatasetError(f"dataset {source!r} not found: give a local .json/.jsonl/.parquet path or a hub id ({exc})") from exc
    except Exception as exc:  # datasets raises many types (DatasetGenerationError, ConnectionError, ...)
        raise DatasetError(f"cannot read dataset {source!r}: {type(exc).__name__}: {exc}") from exc


def _where(name: str, index: int) -> str:
    # Rows of JSONL files are reported by line (1-based) as in the other readers; others by row index.
    return f"{name}, line {index + 1}" if name.endswith(".jsonl") else f"{name}, row {index}"


def _string(row: dict[str, Any], key: str, where: str) -> str:
    if key not in row or row[key] is None:
        raise DatasetError(f"{where}: missing field {key!r}")
    if not isinstance(row[key], str):
        raise DatasetError(f"{where}: field {key!r} must be a string, got {type(row[key]).__name__}")
    return row[key]


def _bool(row: dict[str, Any], key: str, where: str) -> bool:
    value = row.get(key)
    if isinstance(value, bool):
        return value
    if isinstance(value, str) and value.strip().lower() in ("true", "false"):
        return value.strip().lower() == "true"
    if isinstance(value, int) and value in (0, 1):
        return bool(value)
    if value is None:
        raise DatasetError(f"{where}: missing field {key!r}")
    raise DatasetError(f"{where}: field {key!r} must be true or false, got {value!r}")


def read_pku_saferlhf_hub(source: str | os.PathLike[str], split: str = "train", name: str = "pku_saferlhf") -> Corpus:
    """PKU-SafeRLHF-format data → labelled examples and (safe, unsafe) ranking pairs."""
    where_name, rows = load_rows(source, split)
    corpus, skipped = Corpus(), 0
    for index, row in enumerate(rows):
        where = _where(where_name, index)
        prompt = _string(row, "prompt", where)
        responses = [_string(row, f"response_{i}", where) for i in (0, 1)]
        safe = [_bool(row, f"is_response_{i}_safe", where) for i in (0, 1)]
        safer = row.get("safer_response_id")
        if safer is not None and safer not in (0, 1):
            raise DatasetError(f"{where}: field 'safer_response_id' must be 0 or 1, got {safer!r}")
        group = f"{name}:{_digest(prompt)}"
        for text, is_safe in zip(responses, safe, strict=True):
            if text.strip():
                corpus.examples.append(Example(text, HARMLESS if is_safe else HARMFUL, prompt, name, group))
            else:
                skipped += 1
        if not all(r.strip() for r in responses) or responses[0] == responses[1]:
            continue
        if safe[0] != safe[1]:
            good = 0 if safe[0] else 1
        elif safer is not None:
            good = int(safer)
        else:
            continue
        corpus.pairs.append(Pair(prompt, responses[good], responses[1 - good], name, group))
    if skipped:
        log.info("%s: skipped %d empty responses", where_name, skipped)
    return corpus


def read_beavertails(source: str | os.PathLike[str], split: str = "30k_train", name: str = "beavertails") -> Corpus:
    """BeaverTails-format data (prompt, response, is_safe) → labelled examples; the scenario is the first
    harm category flagged in `category` (when present)."""
    where_name, rows = load_rows(source, split)
    examples, skipped = [], 0
    for index, row in enumerate(rows):
        where = _where(where_name, index)
        prompt = _string(row, "prompt", where)
        response = _string(row, "response", where)
        is_safe = _bool(row, "is_safe", where)
        category = row.get("category")
        if category is not None and not isinstance(category, dict):
            raise DatasetError(f"{where}: field 'category' must be an object of harm flags, got {type(category).__name__}")
        scenario = next((k for k, v in sorted((category or {}).items()) if v), None)
        if not response.strip():
            skipped += 1
            continue
        examples.append(Example(response, HARMLESS if is_safe else HARMFUL, prompt, name, f"{name}:{_digest(prompt)}", scenario))
    if skipped:
        log.info("%s: skipped %d empty responses", where_name, skipped)
    return Corpus(examples)
