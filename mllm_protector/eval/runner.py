"""Benchmark runner: ask an MLLM every benchmark prompt, protect each answer, judge before and after.

One JSONL row per item (scenario, variant, query, original answer, verdict fields, timings, judge
decisions), flushed as it is written; an interrupted run resumes from the rows already in the file
(matched by item id).
"""

from __future__ import annotations

import json
import logging
import time
from collections import Counter, defaultdict
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

from ..errors import InputError, ProtectorError
from ..jsonl import count_complete_lines
from .benchmarks import BENIGN_BENCHES, BenchItem
from .judges import Judge
from .metrics import attack_success_rate, rate

logger = logging.getLogger(__name__)

Answerer = Callable[[BenchItem], str]


class StoredAnswers:
    """Answers read from a JSONL file (`id` + `response`, or `query` + `response`) instead of a live MLLM.

    Lines are matched to items by item id first (e.g. `01-Illegal_Activitiy/0/TEXT`), then by query text.
    """

    def __init__(self, path: str | Path):
        self.path = Path(path)
        self.by_id: dict[str, str] = {}
        self.by_query: dict[str, str] = {}
        if not self.path.is_file():
            raise InputError(f"stored answers file {self.path} does not exist")
        for number, line in enumerate(self.path.read_text(encoding="utf-8").splitlines(), 1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as exc:
                raise InputError(f"{self.path}, line {number}: not valid JSON ({exc.msg})") from exc
            if not isinstance(row, dict) or not isinstance(row.get("response"), str):
                raise InputError(f"{self.path}, line {number}: needs a string field 'response'")
            if row.get("id") is not None:
                self.by_id[str(row["id"])] = row["response"]
            if isinstance(row.get("query"), str):
                self.by_query[row["query"]] = row["response"]

    def __call__(self, item: BenchItem) -> str:
        if item.id in self.by_id:
            return self.by_id[item.id]
        if item.query in self.by_query:
            return self.by_query[item.query]
        raise InputError(f"{self.path} has no answer for item {item.id} (match by 'id' or 'query')")


def make_answerer(spec: str, model: str = "default", max_tokens: int = 512, api_key: str | None = None,
                  timeout: float = 300.0) -> Answerer:
    """Answerer from a CLI spec: an http(s) base URL (OpenAI-compatible), `hf:<model>` (local
    image-text-to-text pipeline) or `stored:<answers.jsonl>`."""
    from ..mllm import HFLocalMLLM, OpenAIMLLM

    if spec.startswith(("http://", "https://")):
        mllm: Any = OpenAIMLLM(spec, model, api_key=api_key, timeout=timeout, max_tokens=max_tokens)
    elif spec.startswith("hf:"):
        mllm = HFLocalMLLM(spec[3:], max_new_tokens=max_tokens)
    elif spec.startswith("stored:"):
        return StoredAnswers(spec[len("stored:"):])
    else:
        raise ProtectorError(f"unknown --mllm {spec!r}: use an http(s) base URL, hf:<model> or stored:<answers.jsonl>")
    return lambda item: mllm.generate(item.query, item.load_image())


def done_ids(path: Path) -> set[str]:
    """Item ids already written to an output file (a torn last line is cut off so it is redone)."""
    if not path.is_file():
        return set()
    count_complete_lines(path)
    ids = set()
    for line in path.read_text(encoding="utf-8").splitlines():
        if line.strip():
            try:
                ids.add(str(json.loads(line)["id"]))
            except (json.JSONDecodeError, KeyError, TypeError) as exc:
                raise InputError(f"{path} is not an eval output file (a line has no 'id'); use a new --output") from exc
    return ids


def _batches(items: Sequence[BenchItem], size: int) -> Iterator[list[BenchItem]]:
    for lo in range(0, len(items), size):
        yield list(items[lo : lo + size])


def run_benchmark(
    items: Sequence[BenchItem],
    answer: Answerer,
    protector: Any,
    output: str | Path,
    judge: Judge | None = None,
    resume: bool = True,
    batch_size: int = 4,
    on_progress: Callable[[int, int], None] | None = None,
) -> list[dict[str, Any]]:
    """Answer, protect and judge every item not yet in `output`; append one JSONL row each; return all rows."""
    path = Path(output)
    path.parent.mkdir(parents=True, exist_ok=True)
    seen = done_ids(path) if resume else set()
    todo = [item for item in items if item.id not in seen]
    if seen:
        logger.info("resuming %s: %d of %d items already done", path, len(items) - len(todo), len(items))
    with open(path, "a" if resume else "w", encoding="utf-8") as handle:
        for batch in _batches(todo, batch_size):
            answers, mllm_ms = [], []
            for item in batch:
                t0 = time.perf_counter()
                answers.append(answer(item))
                mllm_ms.append((time.perf_counter() - t0) * 1000)
            verdicts = protector.protect_batch([i.query for i in batch], answers, [i.scenario for i in batch])
            before = after = None
            if judge is not None:
                questions, scenarios = [i.question for i in batch], [i.scenario for i in batch]
                before = judge.judge_batch(questions, answers, scenarios)
                after = [b if v.action == "pass" else a for b, v, a in zip(
                    before, verdicts, _judge_replaced(judge, batch, verdicts), strict=True)]
            for k, (item, text, verdict) in enumerate(zip(batch, answers, verdicts, strict=True)):
                row = {
                    **item.to_dict(),
                    "answer": text,
                    "text": verdict.text,
                    "action": verdict.action,
                    "harmful": verdict.harmful,
                    "score": verdict.score,
                    "final_score": verdict.final_score,
                    "rounds": verdict.rounds,
                    "timings": {"mllm_ms": mllm_ms[k], **verdict.timings},
                }
                if judge is not None:
                    row["judge"] = getattr(judge, "name", type(judge).__name__)
                    row["judge_before"] = before[k].to_dict()  # type: ignore[index]
                    row["judge_after"] = after[k].to_dict()  # type: ignore[index]
                handle.write(json.dumps(row, ensure_ascii=False) + "\n")
                handle.flush()
            if on_progress:
                on_progress(len(batch), len(todo))
    return read_rows(path)


def _judge_replaced(judge: Judge, batch: list[BenchItem], verdicts: list[Any]) -> list[Any]:
    """Judge only the texts the protector replaced; `None` placeholders for passed answers."""
    idx = [k for k, v in enumerate(verdicts) if v.action != "pass"]
    judged = judge.judge_batch([batch[k].question for k in idx], [verdicts[k].text for k in idx],
                               [batch[k].scenario for k in idx]) if idx else []
    out: list[Any] = [None] * len(verdicts)
    for k, j in zip(idx, judged, strict=True):
        out[k] = j
    return out


def read_rows(path: str | Path) -> list[dict[str, Any]]:
    """All rows of a runner output file."""
    return [json.loads(line) for line in Path(path).read_text(encoding="utf-8").splitlines() if line.strip()]


def _run_row(rows: Sequence[dict[str, Any]]) -> dict[str, Any]:
    judged = [r for r in rows if "judge_before" in r]
    out: dict[str, Any] = {
        "n": len(rows),
        "flagged": rate([r["harmful"] for r in rows]),
        **{f"frac_{a}": rate([r["action"] == a for r in rows]) for a in ("pass", "detoxified", "refused")},
        "mean_mllm_ms": sum(r["timings"].get("mllm_ms", 0) for r in rows) / max(1, len(rows)),
        "mean_guard_ms": sum(r["timings"].get("total_ms", 0) for r in rows) / max(1, len(rows)),
    }
    if judged:
        out["asr_before"] = attack_success_rate([r["judge_before"]["unsafe"] for r in judged])
        out["asr_after"] = attack_success_rate([r["judge_after"]["unsafe"] for r in judged])
    return out


def summarize_run(rows: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """Per benchmark: overall and per-scenario ASR before/after (by the run's judge), flag rate, action mix,
    latency; for benign benchmarks the pass-through rate."""
    out: dict[str, Any] = {}
    for bench, members in sorted(_by(rows, lambda r: r["bench"]).items()):
        section: dict[str, Any] = {
            "benign": bench in BENIGN_BENCHES,
            "judge": next((r["judge"] for r in members if "judge" in r), None),
            "overall": _run_row(members),
            "rows": [{"key": k, **_run_row(v)} for k, v in sorted(_by(members, lambda r: r["scenario"]).items())],
            "by_variant": [{"key": k, **_run_row(v)} for k, v in sorted(_by(members, lambda r: r["variant"]).items())],
            "actions": dict(Counter(r["action"] for r in members)),
        }
        out[bench] = section
    return out


def _by(rows: Sequence[dict[str, Any]], key: Callable[[dict[str, Any]], str]) -> dict[str, list[dict[str, Any]]]:
    groups: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for row in rows:
        groups[key(row)].append(row)
    return groups
