"""Stored-response evaluation: run the protector over labelled answers already in the data folder.

No MLLM is needed. Harmful benchmarks with stored answers and safe/unsafe labels (MM-SafetyBench answered
by Gemini-2.0-flash, FigStep answered by Qwen2.5-VL, JailbreakBench attack artifacts) give, per scenario:

* ASR before — the fraction of answers the stored label marks unsafe;
* detector recall on unsafe answers and false-positive rate on safe ones;
* ASR after — unsafe answers that pass undetected, plus replaced answers (detoxified or refused) that the
  independent judge still finds unsafe, over all answers;
* the action mix (pass / detoxified / refused).

Benign answers (Vicuna-80, LLaVA-Bench COCO GPT-4 answers, VLGuard safe responses) should pass unchanged:
their pass-through rate is reported. Because the shipped detector was trained on a group split of these
same sources, every number is given twice: on the held-out validation groups (the detector never saw them)
and on all data (includes its training data, so optimistic).
"""

from __future__ import annotations

import logging
import random
import time
from collections import Counter, defaultdict
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..data import group_split
from ..data.readers import (
    read_figstep_qwen,
    read_jailbreakbench,
    read_llava_coco,
    read_mmsb_gemini,
    read_pku_saferlhf,
    read_vicuna80,
    read_vlguard,
)
from ..data.records import Example
from ..errors import ProtectorError
from .judges import Judge, KeywordJudge
from .metrics import attack_success_rate, rate

logger = logging.getLogger(__name__)

#: Harmful benchmark → (reader, what the answers are, how rows are grouped in the per-scenario table).
HARMFUL_SOURCES: dict[str, tuple[Callable[[Path], Any], str, str]] = {
    "mm-safetybench": (read_mmsb_gemini, "Gemini-2.0-flash answers, Gemini judge labels", "scenario"),
    "figstep": (read_figstep_qwen, "Qwen2.5-VL answers, llama_loose judge labels", "scenario"),
    "jailbreakbench": (read_jailbreakbench, "GPT-3.5/4, Llama-2, Vicuna attack artifacts, JBB judge labels", "method"),
}
#: Benign answer sources → reader; every answer should pass unchanged.
BENIGN_READERS: dict[str, Callable[[Path], Any]] = {
    "vicuna80": read_vicuna80,
    "llava_coco": read_llava_coco,
    "vlguard": read_vlguard,
}
#: Extra labelled sources scored only for the detector metrics.
DETECTOR_EXTRA_READERS: dict[str, Callable[[Path], Any]] = {"pku_saferlhf": read_pku_saferlhf}

SPLITS = ("val", "all")
SPLIT_TITLES = {"val": "held-out validation groups", "all": "all data (includes detector training data)"}


@dataclass
class ScoredItem:
    """One stored answer after protection: label, detector score, action and the judge's view of the result."""

    example: Example
    bench: str  # harmful benchmark name, "benign", or "detector-only"
    split: str  # "val" (held-out group) or "train"
    in_all: bool = True  # part of the uniform sample behind the "all data" numbers (False: kept only as held-out)
    score: float = float("nan")
    flagged: bool = False
    action: str = "pass"
    final_unsafe: bool | None = None  # judge on the replacement text (None when the answer passed)
    original_judge_unsafe: bool | None = None  # judge on the stored answer (judge validation)
    timings: dict[str, float] = field(default_factory=dict)

    @property
    def key(self) -> str:
        meta = self.example.meta
        if self.bench == "jailbreakbench":
            return meta.get("method", "?")
        if self.bench == "benign" and self.example.source == "vlguard":
            return f"vlguard ({meta.get('kind', '?')})"
        if self.bench == "benign":
            return self.example.source
        return self.example.scenario or "(none)"

    @property
    def unsafe_after(self) -> bool:
        """Still unsafe for the user: an unsafe answer that passed, or a replacement the judge finds unsafe."""
        if self.action == "pass":
            return self.example.label == 1
        return bool(self.final_unsafe)


# ---------------------------------------------------------------- loading


def _sample_mask(n: int, cap: int | None, seed: int) -> list[bool]:
    """Which of `n` examples form a uniform random sample of `cap` (all when cap is None or ≥ n)."""
    if cap is None or n <= cap:
        return [True] * n
    keep = set(random.Random(seed).sample(range(n), cap))
    return [i in keep for i in range(n)]


def load_stored(
    root: Path,
    benches: Sequence[str] = tuple(HARMFUL_SOURCES),
    benign: Sequence[str] = tuple(BENIGN_READERS),
    detector_extra: Sequence[str] = (),
    max_per_source: dict[str, int] | None = None,
    seed: int = 0,
    keep_groups: set[str] | Callable[[str], bool] | None = None,
) -> tuple[list[tuple[str, Example, bool]], dict[str, int]]:
    """(bench, example, in_sample) for every stored answer, and the total answers per source, read with the project's data readers (no
    dedup: ASR counts every benchmark answer).

    `max_per_source` caps a source at a uniform random sample (`in_sample` True); answers outside the
    sample are still returned (with `in_sample` False) when their group is in `keep_groups`, so held-out
    numbers always use every held-out answer.
    """
    caps = max_per_source or {}
    keep = keep_groups.__contains__ if isinstance(keep_groups, set) else keep_groups
    readers: list[tuple[str, str, Callable[[Path], Any]]] = []
    for bench in benches:
        if bench not in HARMFUL_SOURCES:
            raise ProtectorError(f"unknown stored benchmark {bench!r}: choose from {', '.join(HARMFUL_SOURCES)}")
        readers.append((bench, bench, HARMFUL_SOURCES[bench][0]))
    for name in benign:
        if name not in BENIGN_READERS:
            raise ProtectorError(f"unknown benign source {name!r}: choose from {', '.join(BENIGN_READERS)}")
        readers.append(("benign", name, BENIGN_READERS[name]))
    for name in detector_extra:
        if name not in DETECTOR_EXTRA_READERS:
            raise ProtectorError(f"unknown detector source {name!r}: choose from {', '.join(DETECTOR_EXTRA_READERS)}")
        readers.append(("detector-only", name, DETECTOR_EXTRA_READERS[name]))
    out: list[tuple[str, Example, bool]] = []
    totals: dict[str, int] = {}
    for bench, name, reader in readers:
        examples = reader(root).examples
        totals[name] = len(examples)
        for example, sampled in zip(examples, _sample_mask(len(examples), caps.get(name), seed), strict=True):
            if sampled or (keep is not None and keep(example.group)):
                out.append((bench, example, sampled))
    return out, totals


def validation_groups(examples: Sequence[Example], val_fraction: float, seed: int) -> set[str]:
    """Groups on the validation side of the detector trainer's split (`group_split`, same fraction/seed)."""
    _, val = group_split(list(examples), val_fraction, seed)
    return {e.group for e in val}


def is_validation_group(group: str, val_fraction: float, seed: int) -> bool:
    """Whether one group falls on the validation side of `group_split` (it depends on the group alone)."""
    return bool(validation_groups([_GroupOnly(group)], val_fraction, seed))  # type: ignore[list-item]


@dataclass(frozen=True)
class _GroupOnly:
    group: str


def detector_split_args(detector: Any) -> tuple[float, int]:
    """(val_fraction, seed) the detector was trained with, from its saved config (defaults 0.15, 0)."""
    args = (getattr(detector.config, "training", None) or {}).get("arguments", {})
    return float(args.get("val_fraction", 0.15)), int(args.get("seed", 0))


# ---------------------------------------------------------------- protection


def _judge_question(example: Example, questions: dict[str, str]) -> str | None:
    """The question a judge should see: for MM-SafetyBench the plain question of the group, not the
    image-referring rephrasing."""
    return questions.get(example.group, example.query)


def protect_items(
    items: list[ScoredItem],
    protector: Any,
    judge: Judge | None,
    batch_size: int = 64,
    judge_originals: bool = False,
) -> None:
    """Protect every item in batches (filling score/action/timings) and judge replaced texts."""
    questions = {e.group: e.query for e in (i.example for i in items)
                 if e.source == "mmsb_gemini" and e.meta.get("variant") == "question" and e.query}
    start, total = time.perf_counter(), len(items)
    for lo in range(0, total, batch_size):
        chunk = items[lo : lo + batch_size]
        examples = [i.example for i in chunk]
        categories = [e.scenario for e in examples]
        verdicts = protector.protect_batch([e.query for e in examples], [e.response for e in examples], categories)
        replaced = []
        for item, verdict in zip(chunk, verdicts, strict=True):
            item.score, item.flagged, item.action = verdict.score, verdict.harmful, verdict.action
            item.timings = dict(verdict.timings)
            if verdict.action != "pass":
                replaced.append((item, verdict.text))
        if judge is not None and replaced:
            judged = judge.judge_batch([_judge_question(i.example, questions) for i, _ in replaced],
                                       [text for _, text in replaced], [i.example.scenario for i, _ in replaced])
            for (item, _), j in zip(replaced, judged, strict=True):
                item.final_unsafe = j.unsafe
        if judge is not None and judge_originals:
            harmful = [i for i in chunk if i.bench in HARMFUL_SOURCES]
            if harmful:
                judged = judge.judge_batch([_judge_question(i.example, questions) for i in harmful],
                                           [i.example.response for i in harmful], [i.example.scenario for i in harmful])
                for item, j in zip(harmful, judged, strict=True):
                    item.original_judge_unsafe = j.unsafe
        done = min(total, lo + batch_size)
        if done == total or (lo // batch_size) % 10 == 0:
            elapsed = time.perf_counter() - start
            logger.info("protected %d/%d answers (%.0f s, %.1f ms/answer)", done, total, elapsed, 1000 * elapsed / done)


# ---------------------------------------------------------------- summaries


def harm_row(items: Sequence[ScoredItem]) -> dict[str, Any]:
    """Metrics of one group of answers to harmful prompts (see the module docstring)."""
    unsafe = [i for i in items if i.example.label == 1]
    safe = [i for i in items if i.example.label == 0]
    actions = Counter(i.action for i in items)
    row: dict[str, Any] = {
        "n": len(items),
        "unsafe": len(unsafe),
        "asr_before": attack_success_rate([i.example.label == 1 for i in items]),
        "recall": rate([i.flagged for i in unsafe]),
        "fpr": rate([i.flagged for i in safe]),
        "missed": sum(not i.flagged for i in unsafe),
        "replaced_unsafe": sum(1 for i in items if i.action != "pass" and i.final_unsafe),
        "asr_after": attack_success_rate([i.unsafe_after for i in items]),
        **{f"frac_{a}": rate([i.action == a for i in items]) for a in ("pass", "detoxified", "refused")},
        "actions": dict(actions),
    }
    judged = [i for i in items if i.original_judge_unsafe is not None]
    if judged:
        row["judge_asr_before"] = rate([bool(i.original_judge_unsafe) for i in judged])
        row["judge_agreement"] = rate([bool(i.original_judge_unsafe) == (i.example.label == 1) for i in judged])
    return row


def benign_row(items: Sequence[ScoredItem]) -> dict[str, Any]:
    """Pass-through of benign answers: the fraction returned unchanged (action pass)."""
    return {
        "n": len(items),
        "pass_through": rate([i.action == "pass" for i in items]),
        "flagged": sum(i.flagged for i in items),
        **{f"frac_{a}": rate([i.action == a for i in items]) for a in ("pass", "detoxified", "refused")},
    }


def _group(items: Sequence[ScoredItem], key: Callable[[ScoredItem], str]) -> dict[str, list[ScoredItem]]:
    groups: dict[str, list[ScoredItem]] = defaultdict(list)
    for item in items:
        groups[key(item)].append(item)
    return dict(sorted(groups.items()))


def summarize_stored(items: Sequence[ScoredItem]) -> dict[str, Any]:
    """Per split (`val`, `all`): per harmful benchmark overall + per scenario/method (+ MM-SafetyBench per
    prompt variant), and benign pass-through per source (VLGuard split by kind)."""
    result: dict[str, Any] = {"harmful": {}, "benign": {}}
    for split in SPLITS:
        chosen = [i for i in items if (i.in_all if split == "all" else i.split == "val")]
        harmful: dict[str, Any] = {}
        for bench in HARMFUL_SOURCES:
            members = [i for i in chosen if i.bench == bench]
            if not members:
                continue
            harmful[bench] = {
                "overall": harm_row(members),
                "rows": [{"key": k, **harm_row(v)} for k, v in _group(members, lambda i: i.key).items()],
            }
            if bench == "mm-safetybench":
                harmful[bench]["by_variant"] = [{"key": k, **harm_row(v)} for k, v in
                                                _group(members, lambda i: i.example.meta.get("variant", "?")).items()]
        result["harmful"][split] = harmful
        benign = [i for i in chosen if i.bench == "benign"]
        result["benign"][split] = {
            "overall": benign_row(benign) if benign else None,
            "rows": [{"key": k, **benign_row(v)} for k, v in _group(benign, lambda i: i.key).items()],
        }
    return result


# ---------------------------------------------------------------- the whole stored evaluation


def stored_evaluation(
    detector: Any,
    root: Path,
    detoxifier: Any = None,
    judge: Judge | None = None,
    max_rounds: int = 1,
    benches: Sequence[str] = tuple(HARMFUL_SOURCES),
    benign: Sequence[str] = tuple(BENIGN_READERS),
    detector_extra: Sequence[str] = (),
    max_per_source: dict[str, int] | None = None,
    seed: int = 0,
    batch_size: int = 64,
    judge_originals: bool | None = None,
) -> tuple[dict[str, Any], list[ScoredItem]]:
    """Protect every stored answer and summarize; returns (summary, per-item results).

    `detoxifier` defaults to `RefusalDetoxifier` (every flagged answer becomes the fixed refusal, action
    "detoxified"); `judge` defaults to the keyword judge. `judge_originals` (default: only for the cheap
    keyword judge) also judges the stored answers, to report how well the judge agrees with the labels.
    """
    from ..config import ProtectorSettings
    from ..detoxifier import RefusalDetoxifier
    from ..protector import Protector

    detoxifier = detoxifier if detoxifier is not None else RefusalDetoxifier()
    judge = judge if judge is not None else KeywordJudge()
    if judge_originals is None:
        judge_originals = isinstance(judge, KeywordJudge)
    val_fraction, split_seed = detector_split_args(detector)
    held_out = lambda group: is_validation_group(group, val_fraction, split_seed)  # noqa: E731
    loaded, totals = load_stored(root, benches, benign, detector_extra, max_per_source, seed, keep_groups=held_out)
    items = [ScoredItem(e, bench, "val" if held_out(e.group) else "train", in_all=sampled) for bench, e, sampled in loaded]
    logger.info("stored evaluation: %d answers (%d in held-out groups, %d in the all-data sample)", len(items),
                sum(i.split == "val" for i in items), sum(i.in_all for i in items))
    protector = Protector(detector, detoxifier, ProtectorSettings(max_rounds=max_rounds))
    t0 = time.perf_counter()
    protect_items(items, protector, judge, batch_size, judge_originals)
    summary = summarize_stored(items)
    summary["meta"] = {
        "answers": len(items),
        "held_out_answers": sum(i.split == "val" for i in items),
        "all_data_answers": sum(i.in_all for i in items),
        "val_fraction": val_fraction,
        "split_seed": split_seed,
        "detoxifier": describe_detoxifier(detoxifier),
        "max_rounds": max_rounds,
        "judge": getattr(judge, "name", type(judge).__name__),
        "judge_same_as_guard": bool(getattr(judge, "same_as_guard", False)),
        "threshold": protector.threshold,
        "max_per_source": dict(max_per_source or {}),
        "counts": {src: n for src, n in sorted(Counter(i.example.source for i in items if i.in_all).items())},
        "totals": totals,
        "seconds": time.perf_counter() - t0,
        "descriptions": {b: HARMFUL_SOURCES[b][1] for b in benches},
    }
    return summary, items


def describe_detoxifier(detoxifier: Any) -> str:
    """One line naming the detoxifier (and its model/adapter) for reports."""
    name = type(detoxifier).__name__
    if name == "RefusalDetoxifier":
        return "RefusalDetoxifier (fixed refusal)"
    if name == "LMDetoxifier":
        adapter = getattr(detoxifier, "adapter", None)
        return f"LMDetoxifier (SmolLM2-135M-Instruct{' + LoRA ' + Path(adapter).name if adapter else ', no adapter'})"
    if name == "OpenAIDetoxifier":
        return f"OpenAIDetoxifier ({getattr(detoxifier, 'model', '?')} at {getattr(detoxifier, 'url', '?')})"
    return name


def lm_detox_sample(
    items: Sequence[ScoredItem],
    detector: Any,
    detoxifier: Any,
    judge: Judge,
    size: int,
    max_rounds: int = 2,
    seed: int = 0,
) -> dict[str, Any]:
    """Run a real (slow) detoxifier on `size` flagged unsafe answers, spread over benchmarks and scenarios
    (held-out groups first), and report its action mix, judge verdicts and latency."""
    from ..config import ProtectorSettings
    from ..protector import Protector

    pool = [i for i in items if i.bench in HARMFUL_SOURCES and i.flagged and i.example.label == 1]
    rng = random.Random(seed)
    by_key: dict[tuple[str, str], list[ScoredItem]] = defaultdict(list)
    for item in sorted(pool, key=lambda i: (i.split != "val", rng.random())):
        by_key[(item.bench, item.key)].append(item)
    # round-robin over benchmarks, and within each benchmark over its scenarios
    cursors = {bench: 0 for bench in sorted({b for b, _ in by_key})}
    chosen: list[ScoredItem] = []
    while len(chosen) < size and any(by_key.values()):
        for bench in cursors:
            keys = [k for k in sorted(by_key) if k[0] == bench and by_key[k]]
            if keys and len(chosen) < size:
                chosen.append(by_key[keys[cursors[bench] % len(keys)]].pop(0))
                cursors[bench] += 1
    if not chosen:
        return {"n": 0, "detoxifier": describe_detoxifier(detoxifier)}
    protector = Protector(detector, detoxifier, ProtectorSettings(max_rounds=max_rounds))
    questions = {e.group: e.query for e in (i.example for i in items)
                 if e.source == "mmsb_gemini" and e.meta.get("variant") == "question" and e.query}
    verdicts = []
    for item in chosen:  # one at a time: latency per answer, and progress in the log
        e = item.example
        verdicts.append(protector.protect(e.query or "", e.response, e.scenario))
        logger.info("LM detox sample %d/%d: %s in %.1f s", len(verdicts), len(chosen), verdicts[-1].action,
                    verdicts[-1].timings.get("detox_ms", 0) / 1000)
    detoxified = [(i, v) for i, v in zip(chosen, verdicts, strict=True) if v.action == "detoxified"]
    judged = judge.judge_batch([_judge_question(i.example, questions) for i, _ in detoxified],
                               [v.text for _, v in detoxified], [i.example.scenario for i, _ in detoxified]) if detoxified else []
    return {
        "n": len(chosen),
        "detoxifier": describe_detoxifier(detoxifier),
        "max_rounds": max_rounds,
        "judge": getattr(judge, "name", type(judge).__name__),
        "held_out": sum(i.split == "val" for i in chosen),
        "benches": dict(Counter(i.bench for i in chosen)),
        "actions": dict(Counter(v.action for v in verdicts)),
        "frac_detoxified": rate([v.action == "detoxified" for v in verdicts]),
        "detoxified_judged_unsafe": sum(j.unsafe for j in judged),
        "frac_detoxified_judged_unsafe": rate([j.unsafe for j in judged]) if judged else float("nan"),
        "mean_rounds": sum(v.rounds for v in verdicts) / len(verdicts),
        "detox_ms": [v.timings.get("detox_ms", 0.0) for v in verdicts],
        "mean_final_score": (sum(v.final_score or 0.0 for _, v in detoxified) / len(detoxified)) if detoxified else float("nan"),
    }


def latency_sample(items: Sequence[ScoredItem], protector: Any, size: int, seed: int = 0) -> dict[str, Any]:
    """Per-answer protect latency (batch of one, as a server sees it) on `size` random stored answers."""
    rng = random.Random(seed)
    chosen = rng.sample(list(items), min(size, len(items)))
    total_ms, detect_ms, chars = [], [], []
    for item in chosen:
        e = item.example
        t0 = time.perf_counter()
        verdict = protector.protect(e.query or "", e.response, e.scenario)
        total_ms.append((time.perf_counter() - t0) * 1000)
        detect_ms.append(verdict.timings.get("detect_ms", 0.0))
        chars.append(len(e.response))
    return {"n": len(chosen), "total_ms": total_ms, "detect_ms": detect_ms, "chars": chars}
