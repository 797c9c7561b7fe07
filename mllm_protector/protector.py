"""Protector: detect → detoxify → re-detect, at most `max_rounds`, then a fixed refusal.

Invariant: `Verdict.text` is never something the detector flagged. Detoxifier failures (exceptions,
timeouts of a remote endpoint) count as failed rounds, so the loop fails closed.
"""

from __future__ import annotations

import logging
import time
from dataclasses import asdict, dataclass, field
from typing import Any, Literal, Sequence

from .config import ProtectorSettings
from .detector import HarmDetector
from .detoxifier import Detoxifier, LMDetoxifier
from .errors import ProtectorError
from .mllm import MLLM

logger = logging.getLogger(__name__)

Action = Literal["pass", "detoxified", "refused"]


@dataclass
class Verdict:
    """What the protector decided for one answer; `text` is what the user may see."""

    text: str
    original: str
    harmful: bool
    score: float
    action: Action
    rounds: int = 0
    final_score: float | None = None
    timings: dict[str, float] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-ready dict (the CLI writes these fields back into each JSONL line)."""
        return asdict(self)


class Protector:
    """Guards MLLM answers with a harm detector and a detoxifier."""

    def __init__(
        self,
        detector: HarmDetector,
        detoxifier: Detoxifier | None = None,
        settings: ProtectorSettings = ProtectorSettings(),
    ):
        self.detector = detector
        self.detoxifier = detoxifier
        self.settings = settings
        self.threshold = settings.threshold if settings.threshold is not None else detector.threshold
        refusal_score = detector.score([settings.refusal])[0]
        if refusal_score >= self.threshold:
            raise ProtectorError(
                f"the refusal text itself scores {refusal_score:.3f} ≥ threshold {self.threshold:.3f}; "
                "choose another refusal or threshold"
            )

    @classmethod
    def default(cls, detector: str = "default", settings: ProtectorSettings = ProtectorSettings()) -> "Protector":
        """The shipped detector with the local LM detoxifier (works offline)."""
        return cls(HarmDetector.from_pretrained(detector), LMDetoxifier(), settings)

    def protect(self, query: str, response: str, category: str | None = None) -> Verdict:
        """Check one answer and, if it is harmful, replace it with a harmless one."""
        return self.protect_batch([query], [response], [category])[0]

    def protect_batch(
        self,
        queries: Sequence[str | None],
        responses: Sequence[str],
        categories: Sequence[str | None] | None = None,
    ) -> list[Verdict]:
        """Score all answers in one batched call; detoxify and re-score only the flagged ones."""
        if len(queries) != len(responses):
            raise ProtectorError(f"got {len(queries)} queries but {len(responses)} responses")
        categories = categories or [None] * len(responses)
        start = time.perf_counter()
        scores = self.detector.score(responses, self._detector_queries(queries))
        detect_ms = (time.perf_counter() - start) * 1000 / max(1, len(responses))
        verdicts = [
            Verdict(text=r, original=r, harmful=s >= self.threshold, score=s, action="pass", final_score=s,
                    timings={"detect_ms": detect_ms})
            for r, s in zip(responses, scores)
        ]
        pending = [i for i, v in enumerate(verdicts) if v.harmful]
        for round_no in range(1, self.settings.max_rounds + 1):
            if not pending or self.detoxifier is None:
                break
            candidates: dict[int, str] = {}
            for i in pending:
                candidate = self._rewrite(queries[i] or "", verdicts[i].text, categories[i], verdicts[i])
                verdicts[i].rounds = round_no
                if candidate:
                    candidates[i] = candidate
            if not candidates:  # every rewrite failed (e.g. endpoint down): retry next round, then refuse
                continue
            t0 = time.perf_counter()
            idx = list(candidates)
            new_scores = self.detector.score([candidates[i] for i in idx], self._detector_queries([queries[i] for i in idx]))
            for i, s in zip(idx, new_scores):
                verdicts[i].timings["detect_ms"] += (time.perf_counter() - t0) * 1000 / len(idx)
                verdicts[i].final_score = s
                if s < self.threshold:
                    verdicts[i].text, verdicts[i].action = candidates[i], "detoxified"
                else:
                    verdicts[i].text = candidates[i]  # the next round starts from the partly cleaned text
            pending = [i for i in pending if verdicts[i].action != "detoxified"]
        for i in pending:
            verdicts[i].text, verdicts[i].action = self.settings.refusal, "refused"
        for v in verdicts:
            v.timings["total_ms"] = v.timings["detect_ms"] + v.timings.get("detox_ms", 0.0)
        return verdicts

    def _detector_queries(self, queries: Sequence[str | None]) -> list[str | None] | None:
        """Queries go to the detector only when it was trained with them."""
        return list(queries) if self.detector.config.input_format == "query_response" else None

    def _rewrite(self, query: str, text: str, category: str | None, verdict: Verdict) -> str | None:
        """One detoxifier call; a failure is logged and counts as a failed round (fail closed)."""
        t0 = time.perf_counter()
        try:
            return self.detoxifier.rewrite(query, text, category)  # type: ignore[union-attr]
        except Exception as exc:  # any detoxifier failure must end in refusal, never in unchecked text
            logger.warning("detoxifier failed (%s); counting the round as failed", exc)
            return None
        finally:
            verdict.timings["detox_ms"] = verdict.timings.get("detox_ms", 0.0) + (time.perf_counter() - t0) * 1000


class ProtectedMLLM:
    """Wraps anything that answers (query, image) with text, and guards every answer."""

    def __init__(self, mllm: MLLM, protector: Protector):
        self.mllm = mllm
        self.protector = protector

    def generate(self, query: str, image: Any = None, category: str | None = None) -> Verdict:
        """Ask the MLLM, then protect its answer; the MLLM's latency is recorded in the verdict."""
        t0 = time.perf_counter()
        answer = self.mllm.generate(query, image)
        mllm_ms = (time.perf_counter() - t0) * 1000
        verdict = self.protector.protect(query, answer, category)
        verdict.timings["mllm_ms"] = mllm_ms
        return verdict
