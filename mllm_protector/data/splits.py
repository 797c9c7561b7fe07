"""Leakage-free splits: every record of one group (a source question) lands on the same side."""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Iterable, Sequence
from typing import Protocol, TypeVar

from .records import Example, Pair


class _Grouped(Protocol):
    @property
    def group(self) -> str: ...


G = TypeVar("G", bound=_Grouped)


def group_bucket(group: str, seed: int) -> float:
    """A stable number in [0, 1) for a group: the same group always falls on the same side."""
    digest = hashlib.sha256(f"{seed}:{group}".encode()).digest()
    return int.from_bytes(digest[:8], "big") / 2**64


def group_split(items: Sequence[G], val_fraction: float, seed: int = 0) -> tuple[list[G], list[G]]:
    """Split examples (or pairs) into (train, val) by a hash of group and seed, so no group is on both
    sides; the same seed puts a group's examples and its pairs on the same side."""
    if not 0.0 <= val_fraction < 1.0:
        raise ValueError(f"val_fraction must be in [0, 1), got {val_fraction}")
    train: list[G] = []
    val: list[G] = []
    for item in items:
        (val if group_bucket(item.group, seed) < val_fraction else train).append(item)
    return train, val


def leave_out(
    examples: Sequence[Example], key: Callable[[Example], str | None], value: str
) -> tuple[list[Example], list[Example]]:
    """Split into (train, held_out) holding out every group with an example where key(e) == value:
    leave-one-scenario-out (key=lambda e: e.scenario) or leave-one-source-out (lambda e: e.source)."""
    held_groups = {e.group for e in examples if key(e) == value}
    train = [e for e in examples if e.group not in held_groups]
    held_out = [e for e in examples if e.group in held_groups]
    return train, held_out


def split_pairs(pairs: Sequence[Pair], held_out: Iterable[Example]) -> tuple[list[Pair], list[Pair]]:
    """Split pairs into (train, held_out) to match an example split: a pair is held out when its group
    is among the held-out examples' groups (use after `leave_out`)."""
    held_groups = {e.group for e in held_out}
    train = [p for p in pairs if p.group not in held_groups]
    held = [p for p in pairs if p.group in held_groups]
    return train, held
