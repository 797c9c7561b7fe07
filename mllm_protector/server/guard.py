"""The Protector behind an asyncio server: batched detector checks in a thread pool, timeouts, fail policy.

Detector calls are CPU/GPU-bound torch work, so they never run on the event loop. Checks from concurrent
requests are queued and scored together (one `detector.score` call per batch), which keeps throughput
up under load without unbounded threads. Detoxification (rare, slow) has its own single-thread pool so a
5-15 s rewrite never blocks the checks of other requests; flagged answers that wait together are
detoxified in one `Protector.protect_batch` call.

Failure policy (`guard.fail_mode`): when the detector errors or times out, `closed` answers with the
refusal and `open` releases the text unchecked (action `unchecked`). A flagged answer is never released,
whatever the mode: if detoxification fails or times out, the answer is the refusal.
"""

from __future__ import annotations

import asyncio
import copy
import logging
import math
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any, Optional, Sequence

from ..protector import Protector
from .config import GuardConfig
from .metrics import Metrics

logger = logging.getLogger(__name__)


class GuardFailure(Exception):
    """The detector could not give a score (error, timeout, non-finite output)."""

    def __init__(self, kind: str, message: str):
        super().__init__(message)
        self.kind = kind


@dataclass
class Outcome:
    """What the guard decided for one answer; `text` is what the client may see."""

    text: str
    action: str  # pass | detoxified | refused | flagged | unchecked
    harmful: bool
    score: Optional[float]
    final_score: Optional[float] = None
    rounds: int = 0
    timings: dict[str, float] = field(default_factory=dict)
    error: Optional[str] = None

    def info(self) -> dict[str, Any]:
        """The `protector` field added to OpenAI responses."""
        data: dict[str, Any] = {"action": self.action, "score": _round(self.score), "rounds": self.rounds}
        if self.final_score is not None and self.action != "pass":
            data["final_score"] = _round(self.final_score)
        if self.error:
            data["error"] = self.error
        return data


def _round(value: Optional[float]) -> Optional[float]:
    return None if value is None else round(value, 4)


SEVERITY = {"pass": 0, "unchecked": 1, "detoxified": 2, "flagged": 3, "refused": 4}


class SerializedDetector:
    """Delegates to a HarmDetector with one lock around `score`: one forward pass at a time, so the
    batch workers and the detoxification thread never share the tokenizer/model concurrently."""

    def __init__(self, detector: Any):
        self._detector = detector
        self._lock = threading.Lock()

    def score(self, responses: Sequence[str], queries: Sequence[Optional[str]] | None = None, **kwargs: Any) -> list[float]:
        with self._lock:
            return self._detector.score(responses, queries, **kwargs)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._detector, name)


def build_protector(cfg: GuardConfig) -> Protector:
    """Detector + detoxifier + loop settings from the `guard` config section (loads the models)."""
    from ..config import ProtectorSettings
    from ..detector import HarmDetector
    from ..detoxifier import LMDetoxifier, OpenAIDetoxifier, RefusalDetoxifier
    from ..errors import InputError

    if cfg.detoxifier == "lm":
        detox: Any = LMDetoxifier(cfg.detox_model)
    elif cfg.detoxifier == "refusal":
        detox = RefusalDetoxifier(cfg.refusal)
    elif cfg.detoxifier.startswith(("http://", "https://")):
        detox = OpenAIDetoxifier(cfg.detoxifier, cfg.detox_model, timeout=cfg.detox_timeout)
    else:
        raise InputError(f"unknown guard.detoxifier '{cfg.detoxifier}': use lm, refusal or an http(s) base URL")
    settings = ProtectorSettings(max_rounds=cfg.max_rounds, threshold=cfg.threshold, refusal=cfg.refusal)
    return Protector(HarmDetector.from_pretrained(cfg.detector), detox, settings)


@dataclass
class _Job:
    query: Optional[str]
    text: str
    future: asyncio.Future
    category: Optional[str] = None


class AsyncGuard:
    """Async front of a Protector. Create inside or outside a loop; `start()` runs in the serving loop."""

    def __init__(self, protector: Protector, cfg: GuardConfig, metrics: Metrics | None = None):
        # A shallow copy whose detector is serialized: the caller's Protector object is left untouched.
        self.protector = copy.copy(protector)
        if not isinstance(protector.detector, SerializedDetector):
            self.protector.detector = SerializedDetector(protector.detector)  # type: ignore[assignment]
        self.detector = self.protector.detector
        self.cfg = cfg
        self.metrics = metrics or Metrics()
        self.threshold: float = protector.threshold
        self.refusal: str = protector.settings.refusal
        self._score_pool = ThreadPoolExecutor(max_workers=cfg.workers, thread_name_prefix="guard-detector")
        self._detox_pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="guard-detox")
        self._queue: asyncio.Queue[_Job] | None = None
        self._detox_queue: asyncio.Queue[_Job] | None = None
        self._workers: list[asyncio.Task] = []

    # --- lifecycle ------------------------------------------------------------------------------
    def start(self) -> None:
        """Start the batch workers in the running loop (idempotent)."""
        if self._queue is None:
            self._queue, self._detox_queue = asyncio.Queue(), asyncio.Queue()
            self._workers = [asyncio.create_task(self._batch_worker(), name=f"guard-batch-{i}") for i in range(self.cfg.workers)]
            self._workers.append(asyncio.create_task(self._detox_worker(), name="guard-detox"))

    async def aclose(self) -> None:
        for task in self._workers:
            task.cancel()
        await asyncio.gather(*self._workers, return_exceptions=True)
        self._workers, self._queue, self._detox_queue = [], None, None
        self._score_pool.shutdown(wait=False, cancel_futures=True)
        self._detox_pool.shutdown(wait=False, cancel_futures=True)

    # --- scoring --------------------------------------------------------------------------------
    def _score_batch(self, texts: list[str], queries: list[Optional[str]]) -> list[float]:
        t0 = time.perf_counter()
        try:
            return self.detector.score(texts, queries)
        finally:
            self.metrics.detector_seconds.observe(time.perf_counter() - t0)
            self.metrics.detector_batch.observe(len(texts))

    @staticmethod
    async def _serve_batches(queue: asyncio.Queue, max_batch: int, pool: ThreadPoolExecutor, fn: Any) -> None:
        """Forever: take the queued jobs (up to max_batch), run `fn(jobs)` in `pool`, resolve each future."""
        loop = asyncio.get_running_loop()
        while True:
            jobs = [await queue.get()]
            while len(jobs) < max_batch and not queue.empty():
                jobs.append(queue.get_nowait())
            jobs = [j for j in jobs if not j.future.done()]  # callers that timed out meanwhile
            if not jobs:
                continue
            try:
                results = await loop.run_in_executor(pool, fn, jobs)
                if len(results) != len(jobs):
                    raise RuntimeError(f"got {len(results)} results for {len(jobs)} inputs")
            except asyncio.CancelledError:
                for j in jobs:
                    if not j.future.done():
                        j.future.cancel()
                raise
            except Exception as exc:  # every waiting request must learn about the failure
                for j in jobs:
                    if not j.future.done():
                        j.future.set_exception(exc)
                continue
            for j, result in zip(jobs, results):
                if not j.future.done():
                    j.future.set_result(result)

    async def _batch_worker(self) -> None:
        assert self._queue is not None
        await self._serve_batches(self._queue, self.cfg.max_batch, self._score_pool,
                                  lambda jobs: self._score_batch([j.text for j in jobs], [j.query for j in jobs]))

    async def _detox_worker(self) -> None:
        """Flagged answers waiting together are detoxified by one `protect_batch` call (its detector
        calls are batched; rewrites still run one after another)."""
        assert self._detox_queue is not None
        await self._serve_batches(self._detox_queue, self.cfg.detox_batch, self._detox_pool,
                                  lambda jobs: self.protector.protect_batch([j.query or "" for j in jobs],
                                                                            [j.text for j in jobs],
                                                                            [j.category for j in jobs]))

    async def check(self, query: Optional[str], text: str) -> float:
        """P(harmful) of `text`, batched with concurrent checks; raises GuardFailure on error/timeout."""
        self.start()
        assert self._queue is not None
        future: asyncio.Future = asyncio.get_running_loop().create_future()
        await self._queue.put(_Job(query, text, future))
        try:
            score = await asyncio.wait_for(future, self.cfg.detector_timeout)
        except asyncio.TimeoutError:
            self.metrics.guard_failures.labels("detector", "timeout").inc()
            raise GuardFailure("timeout", f"detector timed out after {self.cfg.detector_timeout:g}s") from None
        except Exception as exc:
            self.metrics.guard_failures.labels("detector", "error").inc()
            logger.exception("detector failed")
            raise GuardFailure("error", f"detector failed: {type(exc).__name__}") from exc
        if not isinstance(score, float) or not math.isfinite(score):
            self.metrics.guard_failures.labels("detector", "error").inc()
            raise GuardFailure("error", f"detector returned a non-finite score ({score!r})")
        return score

    # --- decisions ------------------------------------------------------------------------------
    def failed(self, text: str, failure: GuardFailure) -> Outcome:
        """Outcome when the detector could not score: refusal (closed) or the text unchecked (open)."""
        if self.cfg.fail_mode == "open":
            return Outcome(text=text, action="unchecked", harmful=False, score=None, error=str(failure))
        return Outcome(text=self.refusal, action="refused", harmful=False, score=None, error=str(failure))

    async def protect(self, query: Optional[str], text: str, category: Optional[str] = None,
                      detoxify: bool = True) -> Outcome:
        """Check one answer; a flagged one is detoxified (or, with detoxify=False, replaced by the refusal)."""
        t0 = time.perf_counter()
        try:
            score = await self.check(query, text)
        except GuardFailure as failure:
            return self.failed(text, failure)
        detect_ms = (time.perf_counter() - t0) * 1000
        if score < self.threshold:
            return Outcome(text=text, action="pass", harmful=False, score=score, final_score=score,
                           timings={"detect_ms": detect_ms})
        if not detoxify:
            return Outcome(text=self.refusal, action="flagged", harmful=True, score=score, final_score=score,
                           timings={"detect_ms": detect_ms})
        outcome = await self.replace(query, text, category, score)
        outcome.timings["detect_ms"] = detect_ms + outcome.timings.get("detect_ms", 0.0)
        return outcome

    async def replace(self, query: Optional[str], text: str, category: Optional[str] = None,
                      score: Optional[float] = None) -> Outcome:
        """Detoxify an answer already flagged; the refusal when that fails, times out, or disagrees."""
        t0 = time.perf_counter()
        self.start()
        assert self._detox_queue is not None
        future: asyncio.Future = asyncio.get_running_loop().create_future()
        await self._detox_queue.put(_Job(query, text, future, category))
        try:
            verdict = await asyncio.wait_for(future, self.cfg.detox_timeout)
        except asyncio.TimeoutError:
            self.metrics.guard_failures.labels("detoxifier", "timeout").inc()
            return Outcome(text=self.refusal, action="refused", harmful=True, score=score,
                           error=f"detoxification timed out after {self.cfg.detox_timeout:g}s",
                           timings={"detox_ms": (time.perf_counter() - t0) * 1000})
        except Exception as exc:
            self.metrics.guard_failures.labels("detoxifier", "error").inc()
            logger.exception("detoxification failed")
            return Outcome(text=self.refusal, action="refused", harmful=True, score=score,
                           error=f"detoxification failed: {type(exc).__name__}",
                           timings={"detox_ms": (time.perf_counter() - t0) * 1000})
        finally:
            self.metrics.detox_seconds.observe(time.perf_counter() - t0)
        if verdict.action == "pass":
            # The full-answer check disagreed with the flagged window: still never release flagged text.
            return Outcome(text=self.refusal, action="refused", harmful=True, score=score,
                           final_score=verdict.score, timings=dict(verdict.timings))
        return Outcome(text=verdict.text, action=verdict.action, harmful=True,
                       score=score if score is not None else verdict.score, final_score=verdict.final_score,
                       rounds=verdict.rounds, timings=dict(verdict.timings))
