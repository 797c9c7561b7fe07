"""Input guard: read the text in a request's image and score the request before the MLLM answers.

Typographic jailbreaks put the harmful request in the image and ask an innocent question about it; the
output guard sees only the answer. Here a request classifier (a detector trained on requests,
`mllm-protector train input-guard`: the `default` LoRA fine-tune or the `probe` preset) scores the user's text, the OCR text, and both together (marked,
`compose_request`); the request's score is the highest, since either part may carry the request. This module reads and scores; the Protector decides (threshold,
failure policy) and applies the policy: `off`, `flag` or `block`.
"""

from __future__ import annotations

import os
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal

from .config import PRETRAINED_DIR
from .detector import Detection, HarmDetector
from .ocr import ImageLimits, ImageReader, ImageSource

InputPolicy = Literal["off", "flag", "block"]
POLICIES: tuple[str, ...] = ("off", "flag", "block")
#: Shipped request classifiers: short names for folders under `mllm_protector/pretrained/`. The default is the LoRA
#: fine-tune (cross-fitted detection of typographic attacks 95-96%, against 64% for FigStep with the probe;
#: docs/results/input_guard.md); `probe` is the frozen-backbone probe (fewer flags on benign renderings).
PRESETS = {"default": "input-guard-finetune", "finetune": "input-guard-finetune", "probe": "input-guard-probe"}


@dataclass
class InputReading:
    """What the input guard read and scored for one request (no decision yet)."""

    text: str
    image_text: str
    detection: Detection
    timings: dict[str, float] = field(default_factory=dict)
    #: P(harmful) of each part scored: `text` (the user's), `image` (the OCR text), `combined`.
    part_scores: dict[str, float] = field(default_factory=dict)


@dataclass
class InputVerdict:
    """The Protector's decision on a request: `text` is what was scored (user text + marked image text)."""

    score: float | None
    harmful: bool
    category: str | None
    text: str
    image_text: str
    timings: dict[str, float] = field(default_factory=dict)
    error: str | None = None
    part_scores: dict[str, float] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-ready dict."""
        return asdict(self)

    def record_fields(self) -> dict[str, Any]:
        """The fields the CLI writes into each JSONL line: input_score, input_harmful, input_category, ocr_text
        (and input_error when the check failed)."""
        return {"input_score": self.score, "input_harmful": self.harmful, "input_category": self.category,
                "ocr_text": self.image_text, **({"input_error": self.error} if self.error else {})}


def compose_request(query: str | None, image_text: str | None) -> str:
    """The text the request classifier scores: the user's text, then the text read from the image, marked."""
    parts = [(query or "").strip()]
    if image_text and image_text.strip():
        parts.append(f"[Text in the image]: {image_text.strip()}")
    return "\n".join(p for p in parts if p)


def resolve_input_guard(name_or_path: str | os.PathLike[str]) -> Path:
    """The folder of a request classifier: a preset name (`default`) or a saved folder."""
    return PRETRAINED_DIR / PRESETS[str(name_or_path)] if str(name_or_path) in PRESETS else Path(name_or_path)


class InputGuard:
    """Request classifier + image reader; `read` returns the scored request, the Protector decides."""

    def __init__(self, classifier: HarmDetector, reader: ImageReader | None = None):
        self.classifier = classifier
        self.reader = reader or ImageReader()

    @classmethod
    def from_pretrained(cls, name_or_path: str | os.PathLike[str] = "default", limits: ImageLimits = ImageLimits()) -> InputGuard:
        """The shipped request classifier (or a saved one) with a lazily loaded OCR engine."""
        return cls(HarmDetector.from_pretrained(resolve_input_guard(name_or_path), device="cpu"), ImageReader(limits=limits))

    @property
    def threshold(self) -> float:
        """The request classifier's threshold, chosen on leave-one-source-out scores."""
        return self.classifier.threshold

    def read(self, query: str | None, image: ImageSource | list[ImageSource] | None = None) -> InputReading:
        """OCR the image (or each of a list, texts joined), compose the request and score it; InputError for an
        image that cannot be opened or is over the size limits."""
        images = image if isinstance(image, list) else [] if image is None else [image]
        texts: list[str] = []
        timings: dict[str, float] = {}
        for item in images:
            found = self.reader.read(item)
            texts.append(found.text)
            for key, ms in found.timings.items():
                timings[key] = timings.get(key, 0.0) + ms
        return self.score(query, " ".join(t for t in texts if t), timings)

    def score(self, query: str | None, image_text: str, timings: dict[str, float] | None = None) -> InputReading:
        """Score a request whose image text is already known (the evaluation reuses OCR results)."""
        timings = dict(timings or {})
        text = compose_request(query, image_text)
        parts = {"combined": text}
        if image_text.strip():
            parts.update({name: part.strip() for name, part in (("text", query or ""), ("image", image_text)) if part.strip()})
        t0 = time.perf_counter()
        found = self.classifier.detect(list(parts.values()), threshold=0.0)  # a category for every part; the Protector decides
        timings["classify_ms"] = (time.perf_counter() - t0) * 1000
        scores = {name: d.score for name, d in zip(parts, found, strict=True)}
        return InputReading(text, image_text, max(found, key=lambda d: d.score), timings, scores)
