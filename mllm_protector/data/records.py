"""The one internal record type every dataset reader produces: labelled responses and ranking pairs."""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from typing import Any

HARMFUL = 1
HARMLESS = 0


@dataclass(frozen=True)
class Example:
    """One MLLM response with a harm label (1 = harmful, 0 = harmless).

    `group` ties together records that must land on the same side of a train/validation split
    (e.g. the four prompt variants of one MM-SafetyBench question); `scenario` is the benchmark
    scenario or category, used for leave-one-scenario-out evaluation.
    """

    response: str
    label: int
    query: str | None
    source: str
    group: str
    scenario: str | None = None
    meta: dict[str, Any] = field(default_factory=dict, hash=False, compare=False)

    def __post_init__(self) -> None:
        if self.label not in (HARMFUL, HARMLESS):
            raise ValueError(f"label must be 0 (harmless) or 1 (harmful), got {self.label!r}")


@dataclass(frozen=True)
class Pair:
    """Two answers to the same query where `safe` must score less harmful than `unsafe` (ranking loss)."""

    query: str | None
    safe: str
    unsafe: str
    source: str
    group: str


@dataclass(frozen=True)
class Corpus:
    """Labelled examples plus ranking pairs, as loaded from one or more sources."""

    examples: list[Example] = field(default_factory=list)
    pairs: list[Pair] = field(default_factory=list)

    def __add__(self, other: Corpus) -> Corpus:
        return Corpus(self.examples + other.examples, self.pairs + other.pairs)

    def summary(self) -> dict[str, Any]:
        """Counts per source and label and pairs per source: the training-data section of a model card."""
        labels = Counter((e.source, e.label) for e in self.examples)
        sources = sorted({source for source, _ in labels})
        pair_sources = Counter(p.source for p in self.pairs)
        return {
            "examples": len(self.examples),
            "harmful": sum(e.label for e in self.examples),
            "harmless": sum(1 - e.label for e in self.examples),
            "pairs": len(self.pairs),
            "by_source": {
                s: {"harmful": labels[(s, HARMFUL)], "harmless": labels[(s, HARMLESS)]} for s in sources
            },
            "pairs_by_source": dict(sorted(pair_sources.items())),
        }
