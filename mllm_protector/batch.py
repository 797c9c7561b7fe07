"""Batch jobs over records (`score`, `protect`): what each accepts and the fields it writes back, shared by
the single-process CLI loop and the Ray Data actors, so both write the same lines."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from .config import ProtectorSettings
from .errors import InputError, ProtectorError

if TYPE_CHECKING:
    from .protector import Protector, Verdict

Record = dict[str, Any]


@dataclass(frozen=True)
class GuardSpec:
    """The names and settings a Protector is built from: small and picklable, so each Ray actor builds its own."""

    detector: str = "default"
    detoxifier: str = "none"
    detox_model: str = "smollm2-135m-instruct"
    settings: ProtectorSettings = field(default_factory=ProtectorSettings)

    def build(self) -> Protector:
        """Load the models through the project's one builder."""
        from .protector import build_protector

        return build_protector(self.detector, self.detoxifier, self.detox_model, self.settings)


def _extras(verdict: Verdict) -> Record:
    """The optional fields: the harm `category` of a flagged answer and the `error` of a failed check."""
    return {**({"category": verdict.category} if verdict.category is not None else {}),
            **({"error": verdict.error} if verdict.error else {})}


def score_records(guard: Protector, records: list[Record]) -> list[Record]:
    """Each record with `score`, `harmful` (the Protector's decision) and the optional fields; no detoxification."""
    verdicts = guard.check_batch([r.get("query") for r in records], [r["response"] for r in records])
    return [{**r, "score": v.score, "harmful": v.harmful, **_extras(v)} for r, v in zip(records, verdicts, strict=True)]


def protect_records(guard: Protector, records: list[Record]) -> list[Record]:
    """Each record with the Verdict fields: `text` (what the user may see), `action`, `score`, `harmful`, `rounds`;
    under an input policy the request (`query` + `image`) is checked first and its fields are added (see `check-input`)."""
    checked = guard.settings.input_policy != "off"
    requests = [guard.check_input(r.get("query"), r.get("image")) if checked else None for r in records]
    verdicts = guard.protect_requests(requests, [r.get("query") for r in records], [r["response"] for r in records],
                                      [r.get("category") for r in records])
    return [{**r, "text": v.text, "action": v.action, "score": v.score, "harmful": v.harmful, "rounds": v.rounds, **_extras(v),
             **(q.record_fields() if q is not None else {})} for r, v, q in zip(records, verdicts, requests, strict=True)]


def check_image(record: Record, where: str) -> None:
    """An `image` field must name a readable image file; the error starts with `where`."""
    from .mllm import load_image

    if record.get("image"):
        try:
            load_image(record["image"]).close()
        except ProtectorError as exc:
            raise InputError(f"{where}: {exc}") from exc


@dataclass(frozen=True)
class Job:
    """One batch command: the fields a record needs, a per-record check, the processing and the fields it adds."""

    required: tuple[str, ...]
    check: Callable[[Record, str], None]
    process: Callable[[Protector, list[Record]], list[Record]]
    adds: tuple[str, ...]


JOBS: dict[str, Job] = {
    "score": Job(("response",), lambda record, where: None, score_records, ("score", "harmful", "category", "error")),
    "protect": Job(("response",), check_image, protect_records,
                   ("text", "action", "score", "harmful", "rounds", "category", "error")),
}
