"""The Protector behind an asyncio server: it schedules Protector calls and decides nothing itself.

Detector calls are CPU/GPU-bound torch work, so they never run on the event loop. Texts from concurrent
requests are queued and scored together (one `Protector.score` call per batch, which isolates a text
the detector cannot score); each request then asks the Protector for its decision. Detoxification
(rare, slow) has its own single-thread pool so a 5-15 s rewrite never blocks other requests' checks;
flagged answers that wait together are detoxified in one `Protector.detoxify_batch` call. Timeouts are
measured here and handed to `Protector.fail`, which applies the failure policy.
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections import deque
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, replace
from typing import Any, Optional

from ..config import ProtectorSettings
from ..input_guard import InputVerdict
from ..protector import Detection, Failure, Protector, Verdict, build_protector
from .config import GuardConfig, StreamConfig
from .metrics import Metrics


class SerializedDetector:
    """Delegates to a HarmDetector with one lock around `score` and `detect`: one forward pass at a time, so
    the batch workers and the detoxification thread never share the tokenizer/model concurrently."""

    def __init__(self, detector: Any):
        self._detector = detector
        self._lock = threading.Lock()

    def score(self, responses: Sequence[str], queries: Sequence[Optional[str]] | None = None, **kwargs: Any) -> list[float]:
        with self._lock:
            return self._detector.score(responses, queries, **kwargs)

    def detect(self, responses: Sequence[str], queries: Sequence[Optional[str]] | None = None, **kwargs: Any) -> list[Any]:
        with self._lock:
            return self._detector.detect(responses, queries, **kwargs)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._detector, name)


def protector_from_config(guard: GuardConfig, stream: StreamConfig) -> Protector:
    """Detector + detoxifier + decision settings from the `guard` and `stream` config sections (loads the models)."""
    settings = ProtectorSettings(max_rounds=guard.max_rounds, threshold=guard.threshold, refusal=guard.refusal,
                                 fail_mode=guard.fail_mode, window_threshold=stream.window_threshold,
                                 context_threshold=stream.context_threshold, context_chars=stream.context_chars,
                                 allow_categories=tuple(guard.allow_categories), input_policy=guard.input_policy,
                                 input_threshold=guard.input_threshold)
    return build_protector(guard.detector, guard.detoxifier, guard.detox_model, settings, guard.detox_timeout,
                           guard.input_guard if guard.input_policy != "off" else None)


class FairQueue:
    """Jobs taken round-robin across owners (API keys or client addresses), so one client's many or large
    checks cannot starve another's: an owner's next job waits behind at most one job of every other owner.

    Two lanes: jobs whose client has seen nothing of its answer yet (a whole answer, a stream's first window)
    go before continuations (later stream windows), so under load the time to the first content stays short;
    the work done, and so the throughput, is the same."""

    def __init__(self) -> None:
        self._lanes: tuple[dict[str, deque[Any]], ...] = ({}, {})  # insertion order is the round-robin order
        self._ready = asyncio.Event()

    def put(self, owner: str, job: Any, later: bool = False) -> None:
        """Queue `job`; `later` puts it in the continuation lane."""
        self._lanes[int(later)].setdefault(owner, deque()).append(job)
        self._ready.set()

    def empty(self) -> bool:
        return not any(self._lanes)

    def get_nowait(self) -> Any:
        """The next owner's oldest job of the first lane that has one; that owner moves to the back of its round."""
        lane = next(lane for lane in self._lanes if lane)
        owner = next(iter(lane))
        jobs = lane.pop(owner)
        job = jobs.popleft()
        if jobs:
            lane[owner] = jobs
        if self.empty():
            self._ready.clear()
        return job

    async def get(self) -> Any:
        while self.empty():
            await self._ready.wait()
        return self.get_nowait()


@dataclass
class _Job:
    items: list[tuple[Optional[str], str]]
    future: asyncio.Future
    later: bool = False  # a continuation (a later stream window): queued and batched after first checks


@dataclass
class _DetoxJob:
    query: Optional[str]
    verdict: Verdict
    category: Optional[str]
    prefix: str
    future: asyncio.Future


class AsyncGuard:
    """Async front of a Protector. Create inside or outside a loop; `start()` runs in the serving loop."""

    def __init__(self, protector: Protector, cfg: GuardConfig, metrics: Metrics | None = None,
                 stream: StreamConfig | None = None):
        # A copy with the config's failure policy and stream settings, whose detector is serialized: the
        # caller's Protector object is left untouched.
        stream = stream or StreamConfig()
        changes: dict[str, Any] = {"fail_mode": cfg.fail_mode, "context_chars": stream.context_chars, "input_policy": cfg.input_policy}
        changes.update({k: v for k, v in (("window_threshold", stream.window_threshold),
                                          ("context_threshold", stream.context_threshold),
                                          ("input_threshold", cfg.input_threshold)) if v is not None})
        self.protector = protector.with_settings(**changes)
        if not isinstance(protector.detector, SerializedDetector):
            self.protector.detector = SerializedDetector(protector.detector)  # type: ignore[assignment]
        self.cfg = cfg
        self.metrics = metrics or Metrics()
        self.threshold: float = protector.threshold
        self.refusal: str = protector.refusal
        self._score_pool = ThreadPoolExecutor(max_workers=cfg.workers, thread_name_prefix="guard-detector")
        self._detox_pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="guard-detox")
        self._queue: FairQueue | None = None
        self._detox_queue: FairQueue | None = None
        self._workers: list[asyncio.Task] = []

    # --- lifecycle ------------------------------------------------------------------------------
    def start(self) -> None:
        """Start the batch workers in the running loop (idempotent)."""
        if self._queue is None:
            self._queue, self._detox_queue = FairQueue(), FairQueue()
            self._workers = [asyncio.create_task(self._batch_worker(), name=f"guard-batch-{i}") for i in range(self.cfg.workers)]
            self._workers.append(asyncio.create_task(self._detox_worker(), name="guard-detox"))

    async def aclose(self) -> None:
        for task in self._workers:
            task.cancel()
        await asyncio.gather(*self._workers, return_exceptions=True)
        self._workers, self._queue, self._detox_queue = [], None, None
        self._score_pool.shutdown(wait=False, cancel_futures=True)
        self._detox_pool.shutdown(wait=False, cancel_futures=True)

    # --- scheduling -----------------------------------------------------------------------------
    @staticmethod
    async def _serve(queue: FairQueue, take: Callable[[list[Any], Any], bool], pool: ThreadPoolExecutor,
                     fn: Callable[[list[Any]], list[Any]]) -> None:
        """Forever: take queued jobs while `take(batch, job)` allows, run `fn(jobs)` in `pool`, resolve each future."""
        loop = asyncio.get_running_loop()
        carry: Any = None  # a job that did not fit the previous batch starts the next one
        while True:
            jobs = [carry if carry is not None else await queue.get()]
            carry = None
            while not queue.empty():
                job = queue.get_nowait()
                if not take(jobs, job):
                    carry = job
                    break
                jobs.append(job)
            jobs = [j for j in jobs if not j.future.done()]  # callers that timed out meanwhile
            if not jobs:
                continue
            try:
                results = await loop.run_in_executor(pool, fn, jobs)
                if len(results) != len(jobs):
                    raise RuntimeError(f"got {len(results)} results for {len(jobs)} jobs")
            except asyncio.CancelledError:
                for j in jobs:
                    j.future.cancel()
                raise
            except Exception as exc:  # every waiting request must learn about the failure
                results = [exc] * len(jobs)
            for j, result in zip(jobs, results, strict=True):
                if not j.future.done():
                    if isinstance(result, Exception):
                        j.future.set_exception(result)
                    else:
                        j.future.set_result(result)

    def _take_scores(self, batch: list[_Job], job: _Job) -> bool:
        """A detector batch holds at most `max_batch` texts and `max_batch_chars` characters (a job always fits alone);
        a continuation does not join first checks (they finish sooner without it)."""
        if job.later and not batch[0].later:
            return False
        texts = sum(len(j.items) for j in batch) + len(job.items)
        chars = sum(len(t) for j in batch + [job] for _, t in j.items)
        return texts <= self.cfg.max_batch and chars <= self.cfg.max_batch_chars

    def _score_jobs(self, jobs: list[_Job]) -> list[list[Detection | Failure]]:
        items = [item for job in jobs for item in job.items]
        t0 = time.perf_counter()
        try:
            scores = self.protector.detect([q for q, _ in items], [t for _, t in items])
        finally:
            self.metrics.detector_seconds.observe(time.perf_counter() - t0)
            self.metrics.detector_batch.observe(len(items))
        out, k = [], 0
        for job in jobs:
            out.append(scores[k : k + len(job.items)])
            k += len(job.items)
        return out

    async def _batch_worker(self) -> None:
        assert self._queue is not None
        await self._serve(self._queue, self._take_scores, self._score_pool, self._score_jobs)

    async def _detox_worker(self) -> None:
        """Flagged answers waiting together are detoxified by one `detoxify_batch` call (its detector
        calls are batched; rewrites still run one after another)."""
        assert self._detox_queue is not None
        await self._serve(self._detox_queue, lambda batch, job: len(batch) < self.cfg.detox_batch, self._detox_pool,
                          lambda jobs: self.protector.detoxify_batch([j.query for j in jobs], [j.verdict for j in jobs],
                                                                     [j.category for j in jobs], [j.prefix for j in jobs]))

    async def score(self, items: list[tuple[Optional[str], str]], owner: str = "", later: bool = False) -> list[Detection | Failure]:
        """Detections (score, category) of (query, text) items, batched with concurrent checks (round-robin
        across owners; `later`: a continuation, queued after checks whose client has nothing yet); a timeout or
        error is a Failure per item."""
        self.start()
        assert self._queue is not None
        future: asyncio.Future = asyncio.get_running_loop().create_future()
        self._queue.put(owner, _Job(items, future, later), later)
        try:
            scores: list[Detection | Failure] = await asyncio.wait_for(future, self.cfg.detector_timeout)
        except TimeoutError:
            scores = [Failure("detector", "timeout", f"detector timed out after {self.cfg.detector_timeout:g}s")] * len(items)
        except Exception as exc:  # reported as a failure; the policy decides
            scores = [Failure("detector", "error", f"detector failed: {type(exc).__name__}")] * len(items)
        for failure in {s for s in scores if isinstance(s, Failure)}:
            self.metrics.guard_failures.labels(failure.stage, failure.kind).inc()
        return scores

    # --- Protector calls ------------------------------------------------------------------------
    async def check(self, query: Optional[str], text: str, owner: str = "") -> Verdict:
        """The Protector's verdict on one whole answer, without detoxifying (pass, flagged, refused, unchecked)."""
        t0 = time.perf_counter()
        found = (await self.score([(query, text)], owner))[0]
        verdict = self.protector.judge(text, found)
        verdict.timings["detect_ms"] = (time.perf_counter() - t0) * 1000
        return verdict

    async def check_window(self, query: Optional[str], approved: str, window: str, owner: str = "") -> Verdict:
        """The Protector's verdict on one stream window, judged alone and after the approved answer."""
        texts = self.protector.window_checks(approved, window)
        found = await self.score([(query, t) for t in texts], owner, later=bool(approved))
        verdict = self.protector.decide_window(window, *(d if isinstance(d, Failure) else d.score for d in found))
        if verdict.action == "flagged":
            verdict.category = next((d.category for d in found if isinstance(d, Detection) and d.category), None)
        return verdict

    async def detoxify(self, query: Optional[str], verdict: Verdict, category: Optional[str] = None,
                       original: Optional[str] = None, prefix: str = "", owner: str = "") -> Verdict:
        """Replace a flagged verdict's text (its `original`, or `original` given here) with a checked rewrite,
        the refusal when that fails or times out; `prefix` is what a streaming client already has."""
        if verdict.action != "flagged":
            return verdict
        if original is not None:
            verdict = replace(verdict, original=original)
        t0 = time.perf_counter()
        self.start()
        assert self._detox_queue is not None
        future: asyncio.Future = asyncio.get_running_loop().create_future()
        self._detox_queue.put(owner, _DetoxJob(query, verdict, category, prefix, future))
        try:
            result: Verdict = await asyncio.wait_for(future, self.cfg.detox_timeout)
        except TimeoutError:
            result = self._detox_failed(verdict, Failure("detoxifier", "timeout",
                                                         f"detoxification timed out after {self.cfg.detox_timeout:g}s"))
        except Exception as exc:  # reported as a failure; the policy refuses
            result = self._detox_failed(verdict, Failure("detoxifier", "error", f"detoxification failed: {type(exc).__name__}"))
        finally:
            self.metrics.detox_seconds.observe(time.perf_counter() - t0)
        result.timings["detox_ms"] = (time.perf_counter() - t0) * 1000  # queueing included
        return result

    async def block_input(self, request: InputVerdict) -> Verdict:
        """The Protector's answer to a blocked request, on the detoxification thread; the refusal when that
        fails or times out."""
        self.start()
        loop = asyncio.get_running_loop()
        try:
            return await asyncio.wait_for(loop.run_in_executor(self._detox_pool, self.protector.block_input, request),
                                          self.cfg.detox_timeout)
        except Exception as exc:  # a timeout or failure: the refusal, as for a failed detoxification
            self.metrics.guard_failures.labels("detoxifier", "timeout" if isinstance(exc, TimeoutError) else "error").inc()
            return self.protector.block_input(request, detoxify=False)

    def _detox_failed(self, verdict: Verdict, failure: Failure) -> Verdict:
        self.metrics.guard_failures.labels(failure.stage, failure.kind).inc()
        return self.protector.fail(verdict.original, failure, verdict.score)

    def over_budget(self, text: str, max_chars: int) -> Verdict:
        """The Protector's verdict on an answer longer than the per-request detector budget (always refused)."""
        self.metrics.guard_failures.labels("budget", "limit").inc()
        message = f"the answer exceeds the per-request detector budget of {max_chars} characters"
        return self.protector.fail(text, Failure("budget", "limit", message))

    async def protect(self, query: Optional[str], text: str, category: Optional[str] = None,
                      detoxify: bool = True, owner: str = "") -> Verdict:
        """Check one answer; a flagged one is detoxified (or, with detoxify=False, stays `flagged`: the refusal)."""
        verdict = await self.check(query, text, owner)
        return await self.detoxify(query, verdict, category, owner=owner) if detoxify else verdict


def verdict_info(verdict: Verdict) -> dict[str, Any]:
    """The `protector` object added to OpenAI responses (and the audit line) for one verdict."""
    data: dict[str, Any] = {"action": verdict.action, "score": _round(verdict.score), "rounds": verdict.rounds}
    if verdict.final_score is not None and verdict.action != "pass":
        data["final_score"] = _round(verdict.final_score)
    if verdict.error:
        data["error"] = verdict.error
    if verdict.category is not None:
        data["category"] = verdict.category
    return data


def _round(value: Optional[float]) -> Optional[float]:
    return None if value is None else round(value, 4)
