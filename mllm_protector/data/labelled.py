"""Reader for `labelled_responses/<set>/data.jsonl.gz`: the per-response harm-labelled sets.

Every set shares one schema (`query`, `response`, `label`, `label_source`, `category`, `lang`, ...),
so one reader maps any of them onto `Example`s. `source` is the folder name; `meta` keeps
`label_source`, `lang` and the set's own fields (model, attack) so results can be reported per set,
per label definition and per language. Groups are the query (or the text, for standalone texts), so
every answer to one question lands on one side of a split.
"""

from __future__ import annotations

from pathlib import Path

from ..errors import DatasetError
from .records import Corpus, Example

FOLDER = "labelled_responses"
#: Set-specific fields worth keeping with each example (small strings only).
_META_KEYS = ("label_source", "lang", "model", "attack", "risk_area", "action", "cipher", "setting")
_NULLS = {"", "None", "none", "null"}


def labelled_sets(root: Path) -> list[str]:
    """Names of the labelled sets present under `root/labelled_responses` (sorted; [] when absent)."""
    folder = root / FOLDER
    if not folder.is_dir():
        return []
    return sorted(p.name for p in folder.iterdir() if (p / "data.jsonl.gz").is_file())


def _text(row: dict, key: str, where: str) -> str | None:
    value = row.get(key)
    if value is None:
        return None
    if not isinstance(value, str):
        raise DatasetError(f"{where}: field {key!r} must be a string, got {type(value).__name__}")
    return None if value.strip() in _NULLS else value


def _label(value: object, where: str) -> int:
    if value in (0, 1, "0", "1"):
        return int(value)
    raise DatasetError(f"{where}: label must be 0 or 1, got {value!r}")


def read_labelled_set(root: Path, name: str) -> Corpus:
    """One labelled set as a Corpus (no ranking pairs); empty responses are skipped."""
    from .readers import _digest, _read_jsonl  # the shared JSONL(.gz) reader with per-line error messages

    path = root / FOLDER / name / "data.jsonl.gz"
    examples = []
    for where, row in _read_jsonl(path):
        response = _text(row, "response", where)
        if response is None:
            continue
        query = _text(row, "query", where)
        key = (query or response).strip().lower()
        group = f"{name}:{_digest(key)}"
        meta = {k: str(row[k]) for k in _META_KEYS if row.get(k) not in (None, "", "None")}
        examples.append(Example(response, _label(row.get("label"), where), query, name, group,
                                _text(row, "category", where), meta))
    return Corpus(examples)
