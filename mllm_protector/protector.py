"""Protector: the one place that turns detector scores into decisions.

detect → threshold → detoxify → re-check, at most `max_rounds`, then a fixed refusal; the failure policy
(fail closed or open) and per-item isolation (one text the detector cannot score never fails the texts
scored with it); and the check of one stream window in context. Callers (CLI, proxy, evaluation) only
schedule these calls. Invariant: `Verdict.text` is never something the detector flagged.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field, replace
from typing import Any, Literal

from .config import ProtectorSettings
from .detector import Detection, HarmDetector
from .detox_llamacpp import LlamaCppDetoxifier, llamacpp_available
from .detoxifier import Detoxifier, LMDetoxifier, OpenAIDetoxifier, RefusalDetoxifier
from .errors import InputError, ProtectorError
from .input_guard import POLICIES, InputGuard, InputReading, InputVerdict, compose_request
from .mllm import MLLM

logger = logging.getLogger(__name__)

Action = Literal["pass", "detoxified", "refused", "flagged", "unchecked", "blocked_input"]
#: How bad an outcome is, to summarise several (choices, stream windows) by the worst.
SEVERITY: dict[str, int] = {"pass": 0, "unchecked": 1, "detoxified": 2, "flagged": 3, "refused": 4, "blocked_input": 5}
#: Actions whose `text` is the checked answer itself (the user sees what the model said).
RELEASED = ("pass", "unchecked")
#: Between the part of a streamed answer a client already has and a replacement continuation.
SEPARATOR = "\n\n"
#: Stream thresholds for the shipped detector, chosen by `benchmarks/stream_calibration.py` on partial
#: answers (see docs/serving.md); a window is flagged when either view reaches its threshold.
WINDOW_THRESHOLD = 0.85
CONTEXT_THRESHOLD = 0.84


@dataclass(frozen=True)
class Failure:
    """Why a text could not be checked: `stage` (detector, detoxifier, budget), `kind` (error, timeout, limit)."""

    stage: str
    kind: str
    message: str


Score = float | Failure


@dataclass
class Verdict:
    """What the protector decided for one answer; `text` is what the user may see."""

    text: str
    original: str
    harmful: bool
    score: float | None
    action: Action
    rounds: int = 0
    final_score: float | None = None
    timings: dict[str, float] = field(default_factory=dict)
    error: str | None = None
    category: str | None = None
    #: The detector's reading of `original` (window scores and their spans), when it was scored whole.
    detection: Detection | None = None
    #: The input guard's decision on the request (policy `flag` or `block`).
    input: InputVerdict | None = None

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-ready dict (the CLI writes these fields back into each JSONL line)."""
        return asdict(self)


def clean_text(text: str) -> str:
    """`text` with invalid Unicode (lone surrogates) replaced, so tokenizers and UTF-8 writers accept it;
    anything that is not a string is left for the detector to reject (as that item's failure)."""
    if not isinstance(text, str):
        return text
    try:
        text.encode("utf-8")
        return text
    except UnicodeEncodeError:
        return text.encode("utf-8", "replace").decode("utf-8")


class Protector:
    """Guards MLLM answers with a harm detector and a detoxifier."""

    def __init__(
        self,
        detector: HarmDetector,
        detoxifier: Detoxifier | None = None,
        settings: ProtectorSettings = ProtectorSettings(),
        input_guard: InputGuard | None = None,
    ):
        if settings.fail_mode not in ("closed", "open"):
            raise InputError(f"fail_mode must be 'closed' or 'open', got {settings.fail_mode!r}")
        if settings.input_policy not in POLICIES:
            raise InputError(f"input_policy must be one of {', '.join(POLICIES)}, got {settings.input_policy!r}")
        if settings.input_policy != "off" and input_guard is None:
            raise ProtectorError(f"input_policy {settings.input_policy!r} needs an input guard: pass InputGuard.from_pretrained()")
        self.detector = detector
        self.detoxifier = detoxifier
        self.settings = settings
        self.input_guard = input_guard
        self.input_threshold = (settings.input_threshold if settings.input_threshold is not None
                                else input_guard.threshold if input_guard is not None else None)
        self.threshold = settings.threshold if settings.threshold is not None else detector.threshold
        self.window_threshold = settings.window_threshold if settings.window_threshold is not None else WINDOW_THRESHOLD
        # Partial answers in context score differently from whole ones, so their calibrated threshold stands on
        # its own; an operator who pins a stricter whole-answer threshold gets stricter stream checks too.
        self.context_threshold = (settings.context_threshold if settings.context_threshold is not None
                                  else CONTEXT_THRESHOLD if settings.threshold is None
                                  else min(CONTEXT_THRESHOLD, settings.threshold))
        refusal_score = detector.score([settings.refusal])[0]
        if refusal_score >= min(self.threshold, self.window_threshold, self.context_threshold):
            raise ProtectorError(
                f"the refusal text itself scores {refusal_score:.3f} ≥ threshold {self.threshold:.3f}; "
                "choose another refusal or threshold"
            )

    @classmethod
    def default(cls, detector: str = "default", settings: ProtectorSettings = ProtectorSettings()) -> Protector:
        """The shipped detector with the local LM detoxifier (works offline)."""
        return cls(HarmDetector.from_pretrained(detector), LMDetoxifier(), settings)

    def with_settings(self, **changes: Any) -> Protector:
        """A copy with some settings changed; the models are shared."""
        return type(self)(self.detector, self.detoxifier, replace(self.settings, **changes), self.input_guard)

    @property
    def refusal(self) -> str:
        return self.settings.refusal

    # --- scoring ------------------------------------------------------------------------------------
    def score(self, queries: Sequence[str | None], responses: Sequence[str]) -> list[Score]:
        """P(harmful) per response in one batch; a text the detector cannot score becomes a `Failure` on
        its own (the batch is retried item by item), so one bad input never fails the others."""
        return [d if isinstance(d, Failure) else d.score for d in self.detect(queries, responses, categorize=False)]

    def detect(self, queries: Sequence[str | None], responses: Sequence[str], categorize: bool = True) -> list[Detection | Failure]:
        """Like `score`, keeping the detector's harm category of flagged answers (when it names one)."""
        if len(queries) != len(responses):
            raise ProtectorError(f"got {len(queries)} queries but {len(responses)} responses")
        texts = [clean_text(r) for r in responses]
        plain = [clean_text(q) if q else q for q in queries]
        try:
            found = self.detector.detect(texts, self._detector_queries(plain), categorize=categorize, threshold=self.threshold)
            if len(found) != len(texts):
                raise RuntimeError(f"{len(found)} scores for {len(texts)} texts")
        except Exception as exc:  # any detector error must stay with the item that caused it
            if len(texts) == 1:
                logger.warning("detector failed on one text: %s: %s", type(exc).__name__, str(exc)[:200])
                return [Failure("detector", "error", f"detector failed: {type(exc).__name__}")]
            return [d for q, t in zip(plain, texts, strict=True) for d in self.detect([q], [t], categorize)]
        return [d if math.isfinite(d.score) and 0.0 <= d.score <= 1.0
                else Failure("detector", "error", f"detector returned an invalid score ({d.score!r})") for d in found]

    def _detector_queries(self, queries: Sequence[str | None]) -> list[str | None] | None:
        """Queries go to the detector only when it was trained with them."""
        return list(queries) if self.detector.config.input_format == "query_response" else None

    # --- decisions ----------------------------------------------------------------------------------
    def decide(self, text: str, score: Score, category: str | None = None) -> Verdict:
        """Threshold one scored answer: `pass`, `flagged` (text becomes the refusal), or the failure policy.
        A flagged answer whose `category` the deployment allows (`allow_categories`) passes, category kept."""
        if isinstance(score, Failure):
            return self.fail(text, score)
        flagged = score >= self.threshold
        verdict = self._verdict(text, score, flagged and category not in self.settings.allow_categories)
        verdict.category = category if flagged else None
        return verdict

    def judge(self, text: str, found: Detection | Failure) -> Verdict:
        """`decide` on one detection (or failure); the verdict keeps the detection, so callers can show
        which part of the answer scored what."""
        if isinstance(found, Failure):
            return self.decide(text, found)
        verdict = self.decide(text, found.score, found.category)
        verdict.detection = found
        return verdict

    def _verdict(self, text: str, score: float, harmful: bool) -> Verdict:
        text = clean_text(text)
        if harmful:
            return Verdict(text=self.refusal, original=text, harmful=True, score=score, action="flagged", final_score=score)
        return Verdict(text=text, original=text, harmful=False, score=score, action="pass", final_score=score)

    def fail(self, text: str, failure: Failure, score: float | None = None) -> Verdict:
        """The failure policy: a text the detector could not check is refused (`closed`) or released
        unchecked (`open`); a flagged answer, a failed detoxification or a text over budget is always refused."""
        text = clean_text(text)
        if failure.stage == "detector" and score is None and self.settings.fail_mode == "open":
            return Verdict(text=text, original=text, harmful=False, score=None, action="unchecked", error=failure.message)
        return Verdict(text=self.refusal, original=text, harmful=score is not None, score=score, action="refused",
                       final_score=score, error=failure.message)

    def check_batch(self, queries: Sequence[str | None], responses: Sequence[str]) -> list[Verdict]:
        """Detect and decide, without detoxifying: each answer is `pass`, `flagged`, `refused` or `unchecked`."""
        start = time.perf_counter()
        found = self.detect(queries, responses)
        detect_ms = (time.perf_counter() - start) * 1000 / max(1, len(responses))
        verdicts = [self.judge(r, d) for r, d in zip(responses, found, strict=True)]
        for v in verdicts:
            v.timings["detect_ms"] = detect_ms
        return verdicts

    # --- detoxification -----------------------------------------------------------------------------
    def detoxify_batch(
        self,
        queries: Sequence[str | None],
        verdicts: Sequence[Verdict],
        categories: Sequence[str | None] | None = None,
        prefixes: Sequence[str] | None = None,
    ) -> list[Verdict]:
        """Rewrite each `flagged` verdict's original (detoxify → re-check, at most `max_rounds`), the refusal
        as last resort; other verdicts come back unchanged. With `prefixes` (what a streaming client already
        has), a rewrite must also pass as the continuation of its prefix. The originals are not re-scored."""
        categories = categories or [None] * len(verdicts)
        prefixes = prefixes or [""] * len(verdicts)
        out = [replace(v, timings=dict(v.timings)) for v in verdicts]
        pending = [i for i, v in enumerate(out) if v.action == "flagged"]
        current = {i: out[i].original for i in pending}
        for round_no in range(1, self.settings.max_rounds + 1):
            if not pending or self.detoxifier is None:
                break
            candidates: dict[int, str] = {}
            for i in pending:
                candidate = self._rewrite(queries[i] or "", current[i], categories[i] or out[i].category, out[i])
                out[i].rounds = round_no
                if candidate:
                    candidates[i] = clean_text(candidate)
            for i, passed in self._recheck(queries, candidates, prefixes, out).items():
                if passed:
                    out[i].text, out[i].action = candidates[i], "detoxified"
                else:
                    current[i] = candidates[i]  # the next round starts from the partly cleaned text
            pending = [i for i in pending if out[i].action != "detoxified"]
        for i in pending:
            out[i].text, out[i].action = self.refusal, "refused"
        for v in out:
            v.timings["total_ms"] = v.timings.get("detect_ms", 0.0) + v.timings.get("detox_ms", 0.0)
        return out

    def _recheck(self, queries: Sequence[str | None], candidates: dict[int, str], prefixes: Sequence[str],
                 verdicts: list[Verdict]) -> dict[int, bool]:
        """Score rewrites (and, after a stream prefix, the joined continuation) in one batch; True = passes."""
        if not candidates:
            return {}
        idx = list(candidates)
        texts = [candidates[i] for i in idx]
        joined = [i for i in idx if prefixes[i]]
        texts += [self.continuation_context(prefixes[i], candidates[i]) for i in joined]
        t0 = time.perf_counter()
        scores = self.score([queries[i] for i in idx] + [queries[i] for i in joined], texts)
        ms = (time.perf_counter() - t0) * 1000 / len(idx)
        by_item = {i: [scores[k]] for k, i in enumerate(idx)}
        for k, i in enumerate(joined):
            by_item[i].append(scores[len(idx) + k])
        result = {}
        for i, item_scores in by_item.items():
            verdicts[i].timings["detect_ms"] = verdicts[i].timings.get("detect_ms", 0.0) + ms
            numbers = [s for s in item_scores if not isinstance(s, Failure)]
            verdicts[i].final_score = max(numbers) if numbers else None
            result[i] = len(numbers) == len(item_scores) and max(numbers) < self.threshold
        return result

    def _rewrite(self, query: str, text: str, category: str | None, verdict: Verdict) -> str | None:
        """One detoxifier call; a failure is logged in one line and counts as a failed round (fail closed)."""
        t0 = time.perf_counter()
        try:
            return self.detoxifier.rewrite(query, text, category)  # type: ignore[union-attr]
        except Exception as exc:  # any detoxifier failure must end in refusal, never unchecked text
            logger.warning("detoxifier failed (%s: %s); counting the round as failed", type(exc).__name__, str(exc)[:200])
            verdict.error = f"detoxifier failed: {type(exc).__name__}"
            return None
        finally:
            verdict.timings["detox_ms"] = verdict.timings.get("detox_ms", 0.0) + (time.perf_counter() - t0) * 1000

    # --- whole answers ------------------------------------------------------------------------------
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
        return self.detoxify_batch(queries, self.check_batch(queries, responses), categories)

    # --- requests (input guard) ----------------------------------------------------------------------
    def check_input(self, query: str | None, image: Any = None) -> InputVerdict:
        """Read the request (user text + the text in its image) and decide: harmful at `input_threshold`.
        An unreadable or oversized image raises InputError; a classifier failure follows the failure policy
        (closed: the request counts as harmful)."""
        if self.input_guard is None:
            raise ProtectorError("this Protector has no input guard: pass input_guard=InputGuard.from_pretrained()")
        try:
            reading = self.input_guard.read(clean_text(query) if query else query, image)
        except ProtectorError:
            raise
        except Exception as exc:  # a classifier or OCR failure is this request's, decided by the failure policy
            logger.warning("input guard failed: %s: %s", type(exc).__name__, str(exc)[:200])
            return InputVerdict(None, self.settings.fail_mode == "closed", None, compose_request(query, ""), "",
                                error=f"input guard failed: {type(exc).__name__}")
        return self.decide_input(reading)

    def decide_input(self, reading: InputReading) -> InputVerdict:
        """Threshold one scored request: harmful at `input_threshold` unless its category is one the deployment
        allows (`allow_categories`, as for answers); the category is kept whenever the threshold is reached."""
        if self.input_threshold is None:
            raise ProtectorError("this Protector has no input guard: pass input_guard=InputGuard.from_pretrained()")
        flagged = reading.detection.score >= self.input_threshold
        harmful = flagged and reading.detection.category not in self.settings.allow_categories
        return InputVerdict(reading.detection.score, harmful, reading.detection.category if flagged else None,
                            reading.text, reading.image_text, reading.timings, part_scores=reading.part_scores)

    def block_input(self, request: InputVerdict, detoxify: bool = True) -> Verdict:
        """The answer to a blocked request, without the MLLM: the detoxifier's answer to the request when the
        detector passes it, else (or with detoxify=False) the refusal; action `blocked_input`."""
        verdict = Verdict(text=self.refusal, original="", harmful=True, score=None, action="blocked_input",
                          category=request.category, input=request)
        if detoxify and self.detoxifier is not None:
            candidate = self._rewrite(request.text, "", request.category, verdict)
            verdict.rounds = 1
            if candidate and self._recheck([request.text], {0: clean_text(candidate)}, [""], [verdict])[0]:
                verdict.text = clean_text(candidate)
        return verdict

    def protect_requests(self, requests: Sequence[InputVerdict | None], queries: Sequence[str | None], responses: Sequence[str],
                         categories: Sequence[str | None] | None = None) -> list[Verdict]:
        """`protect_batch` under the input policy: with `block`, the answer to a harmful request is never shown
        (`block_input`); otherwise each answer is checked with the scored request (user text + image text) as its query."""
        categories = categories or [None] * len(responses)
        block = self.settings.input_policy == "block"
        blocked = {i: r for i, r in enumerate(requests) if r is not None and r.harmful and block}
        rest = [i for i in range(len(responses)) if i not in blocked]
        asked = [r.text if (r := requests[i]) is not None else queries[i] for i in rest]
        checked = self.protect_batch(asked, [responses[i] for i in rest], [categories[i] for i in rest])
        out = {i: self.block_input(r) for i, r in blocked.items()}
        for i, verdict in zip(rest, checked, strict=True):
            verdict.input = requests[i]
            out[i] = verdict
        return [out[i] for i in range(len(responses))]

    # --- streaming ----------------------------------------------------------------------------------
    def window_texts(self, approved: str, window: str) -> tuple[str, str]:
        """The two texts a stream window is judged on: the window alone, and the window after at most
        `context_chars` of the approved answer, so each check costs the same however long the answer grows."""
        return window, self.continuation_context(approved, window, "")

    def continuation_context(self, prefix: str, text: str, separator: str = SEPARATOR) -> str:
        """`text` after the last `context_chars` of `prefix` (cut at a word boundary)."""
        if not prefix:
            return text
        tail = prefix[-self.settings.context_chars:]
        if len(tail) < len(prefix) and " " in tail:
            tail = tail[tail.index(" ") + 1:]
        return tail + separator + text

    def window_checks(self, approved: str, window: str) -> list[str]:
        """The distinct texts of `window_texts`, the ones to score: for the first window (nothing approved yet)
        alone and in context are the same text, scored once."""
        return list(dict.fromkeys(self.window_texts(approved, window)))

    def decide_window(self, window: str, alone: Score, in_context: Score | None = None) -> Verdict:
        """A stream window passes only below `window_threshold` on its own and `context_threshold` in context
        (`in_context` None: the same text as alone, see `window_checks`)."""
        in_context = alone if in_context is None else in_context
        failure = next((s for s in (alone, in_context) if isinstance(s, Failure)), None)
        if failure is not None:
            return self.fail(window, failure)
        assert isinstance(alone, float) and isinstance(in_context, float)
        harmful = alone >= self.window_threshold or in_context >= self.context_threshold
        return self._verdict(window, max(alone, in_context), harmful)

    def check_window(self, query: str | None, approved: str, window: str) -> Verdict:
        """Judge one new stream window (`approved` is the partial answer the client already has)."""
        texts = self.window_checks(approved, window)
        return self.decide_window(window, *self.score([query] * len(texts), texts))


def build_detoxifier(spec: str, model: str = "smollm2-135m-instruct", refusal: str | None = None,
                     timeout: float = 60.0) -> Detoxifier | None:
    """A detoxifier from its name: `lm` (local LM + shipped adapter: llama.cpp when it can run the model, else
    transformers), `llamacpp` or `transformers` (that local runtime, forced), `refusal`, an OpenAI-compatible base
    URL, or `none` (no detoxifier: a flagged answer ends in the fixed refusal)."""
    if spec == "none":
        return None
    if spec == "lm" and llamacpp_available(model):
        try:
            return LlamaCppDetoxifier(model)
        except ProtectorError as exc:
            logger.warning("llama.cpp detoxifier unavailable (%s); using transformers", exc)
    if spec in ("lm", "transformers"):
        return LMDetoxifier(model)
    if spec == "llamacpp":
        return LlamaCppDetoxifier(model)
    if spec == "refusal":
        return RefusalDetoxifier(refusal) if refusal is not None else RefusalDetoxifier()
    if spec.startswith(("http://", "https://")):
        return OpenAIDetoxifier(spec, model, timeout=timeout)
    raise InputError(f"unknown --detoxifier / guard.detoxifier '{spec}': use lm, llamacpp, transformers, refusal, none "
                     "or an http(s) base URL")


def build_protector(detector: str = "default", detoxifier: str = "lm", detox_model: str = "smollm2-135m-instruct",
                    settings: ProtectorSettings = ProtectorSettings(), detox_timeout: float = 60.0,
                    input_guard: str | None = None) -> Protector:
    """A Protector from names (CLI options, proxy config, evaluation): detector folder or preset, a
    detoxifier spec (see `build_detoxifier`) and a request classifier (loaded when named or when the
    input policy is not `off`; `default` is the shipped one). Loads the models."""
    detox = build_detoxifier(detoxifier, detox_model, settings.refusal, detox_timeout)
    name = input_guard or ("default" if settings.input_policy != "off" else None)
    guard = InputGuard.from_pretrained(name) if name else None
    return Protector(HarmDetector.from_pretrained(detector), detox, settings, guard)


class ProtectedMLLM:
    """Wraps anything that answers (query, image) with text, and guards every answer."""

    def __init__(self, mllm: MLLM, protector: Protector):
        self.mllm = mllm
        self.protector = protector

    def generate(self, query: str, image: Any = None, category: str | None = None) -> Verdict:
        """Ask the MLLM, then protect its answer; the MLLM's latency is recorded in the verdict. Under the
        input policy the request is checked first: `block` answers a harmful one without asking the MLLM."""
        request = self.protector.check_input(query, image) if self.protector.settings.input_policy != "off" else None
        if request is not None and request.harmful and self.protector.settings.input_policy == "block":
            return self.protector.block_input(request)
        t0 = time.perf_counter()
        answer = self.mllm.generate(query, image)
        mllm_ms = (time.perf_counter() - t0) * 1000
        verdict = self.protector.protect_requests([request], [query], [answer], [category])[0]
        verdict.timings["mllm_ms"] = mllm_ms
        return verdict
