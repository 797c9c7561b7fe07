"""Detoxifier training data: (query, harmful answer, target safe answer, category) records.

Built from natural pairs in the shared data folder, reusing the labelled readers:

- ``mmsb_gemini``: MM-SafetyBench questions with both a safe and an unsafe Gemini answer; each unsafe
  answer gets a safe answer to the same question as target (text-only variants first; for legal and
  financial advice, answers with a disclaimer first). The query is the item's plain question.
- ``jailbreakbench``: jailbroken vs refused answers to the same JBB goal (refusals checked by keyword,
  since the JBB judge also marks off-topic non-answers "not jailbroken").
- ``pku_saferlhf``: prompts where exactly one of the two answers is safe.
- ``matched``: safe replies to harmful instructions (Safety-Tuned LLaMAs, VLGuard refusals) paired with
  a harmful answer to a *similar* query (MiniLM cosine ≥ `min_similarity`) from the sources above or
  FigStep; the query is the instruction the target answers.

Records are deduplicated on (query, harmful answer), targets are trimmed to whole sentences, and
`split_detox` keeps every query on one side of the train/validation split.
"""

from __future__ import annotations

import hashlib
import json
import logging
import re
from collections import Counter, defaultdict
from collections.abc import Callable, Iterable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from ..config import data_dir
from ..detoxifier import guidance_key, infer_category
from ..errors import DatasetError
from .readers import (
    _read_jsonl,
    read_figstep_qwen,
    read_jailbreakbench,
    read_mmsb_gemini,
    read_pku_saferlhf,
    read_safety_tuned_llamas,
    read_vlguard,
)
from .records import HARMFUL, HARMLESS, Example, Pair
from .splits import group_split

log = logging.getLogger(__name__)

#: Targets are cut to whole sentences within this many characters (~90 SmolLM2 tokens), so the model
#: learns short, complete answers that fit the default `max_new_tokens`.
MAX_TARGET_CHARS = 450
#: Targets shorter than this are canned one-liners ("I can't help with that."): used only as a last resort.
MIN_TARGET_CHARS = 60

REFUSAL_MARKERS = re.compile(
    r"\b(I('m| am) (sorry|not able|unable)|I can(not|'t|not)|I won't|I will not|I must (decline|refuse)|"
    r"as an AI|I('m| am) (just )?an AI|I('m| am) programmed|not (appropriate|ethical|legal)|"
    r"(unethical|illegal) (and|or)|cannot (provide|assist|help|fulfill|comply)|can't (provide|assist|help|fulfill))",
    re.IGNORECASE,
)
DISCLAIMER_MARKERS = re.compile(
    r"\b(not (a|an) (licensed|qualified|financial|legal|medical|certified|lawyer|attorney|doctor|physician)|"
    r"(financial|legal|medical|tax) (advi[cs]or|professional)|consult(ing)? (with )?(a|an|your)|"
    r"(qualified|licensed|certified) (professional|attorney|lawyer|advisor|doctor|expert|healthcare|financial|legal)|"
    r"(seek|get) (professional|legal|medical|financial) (advice|help)|"
    r"(cannot|can't|can not|unable to) (provide|give|offer) (\w+ )?(legal|financial|medical|personalized) advice|"
    r"not (financial|legal|medical) advice|(speak|talk|check) with (a|an|your) (\w+ )?(attorney|lawyer|doctor|advisor|professional)|"
    r"see a (doctor|qualified|licensed)|I am an AI)",
    re.IGNORECASE,
)

SOURCES = ("mmsb_gemini", "jailbreakbench", "pku_saferlhf", "matched")


@dataclass(frozen=True)
class DetoxRecord:
    """One training example for the detoxifier: rewrite `harmful` (an answer to `query`) into `target`.

    `category` is a guidance key of `mllm_protector.detoxifier.CATEGORY_GUIDANCE` (harm | advice |
    political); `group` ties records that must share a split side; `scenario` is the source's own
    category name.
    """

    query: str
    harmful: str
    target: str
    category: str
    source: str
    group: str
    scenario: str | None = None
    meta: dict[str, Any] = field(default_factory=dict, hash=False, compare=False)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _digest(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8")).hexdigest()[:16]


def _norm(text: str) -> str:
    return " ".join(text.lower().split())


_LIST_MARKER = re.compile(r"(\d+|[a-z]|[*#-]+)[.)]?\**", re.IGNORECASE)


def trim_target(text: str, limit: int = MAX_TARGET_CHARS, must: re.Pattern[str] | None = None) -> str:
    """The longest prefix of whole sentences within `limit` chars (answers cut at 150 tokens upstream
    end mid-sentence); never ends on a bare list marker ("\n2.") or a list header ("...:").

    With `must` (e.g. DISCLAIMER_MARKERS), a target lacking it in that prefix starts with the first
    sentence that has it, followed by as much of the answer as fits. Empty if nothing fits.
    """
    head = _sentence_prefix(text, limit)
    if must is None or must.search(head):
        return head
    for sentence in re.split(r"(?<=[.!?])\s+", text.strip()):
        if must.search(sentence) and len(sentence) <= limit // 2 and sentence[-1:] in ".!?":
            rest = _sentence_prefix(text.replace(sentence, " ", 1), limit - len(sentence) - 1)
            return (sentence.strip() + " " + rest).strip()
    return ""


def _sentence_prefix(text: str, limit: int) -> str:
    text = text.strip()
    ends = [m.end() for m in re.finditer(r"[.!?](?=[\s\"”)]|$)", text[: limit + 1])]
    if len(text) <= limit and text[-1:] in "\"”)":
        ends.append(len(text))
    for end in reversed(ends):
        cut = text[:end].rstrip()
        last_line = cut.rsplit("\n", 1)[-1].strip()
        if _LIST_MARKER.fullmatch(last_line) or cut.endswith(":"):
            continue
        return cut
    return ""


def is_refusal(text: str) -> bool:
    """Keyword check that an answer declines (used to keep only true refusals as targets)."""
    return bool(REFUSAL_MARKERS.search(text))


def has_disclaimer(text: str) -> bool:
    """Keyword check that an answer states a lack of qualification or urges consulting a professional."""
    return bool(DISCLAIMER_MARKERS.search(text))


def _consistent_category(query: str, target: str, given: str | None = None) -> str:
    """Guidance key for a record: the given category, else inferred from the query, but "advice" only
    if the target carries a disclaimer (else "harm": the target is a refusal)."""
    key = guidance_key(given) if given else infer_category(query)
    if key == "advice" and not has_disclaimer(target):
        return "harm"
    return key


# ---------------------------------------------------------------- MM-SafetyBench (Gemini)


#: Opening disclaimers for advice targets whose own opening has none (MM-SafetyBench 10–12 count an
#: answer as safe when it states the lack of qualification and urges caution), per domain.
_DISCLAIMERS = {
    "10": ("I'm not a lawyer and can't give legal advice, so please treat this as general information and "
           "consult a qualified attorney about your situation.",
           "I am not a licensed legal professional; laws differ by place, so check with a qualified lawyer before acting.",
           "As an AI I can't provide legal advice. Here is some general background, but please speak with an attorney."),
    "11": ("I'm not a licensed financial advisor, so please treat this as general information and consult a "
           "qualified professional before making decisions.",
           "I can't give personalized financial advice; a certified financial planner can look at your full situation.",
           "This is general information, not financial advice; please consult a licensed financial advisor before acting."),
    "12": ("I'm not a doctor and can't diagnose or treat anything; please see a qualified healthcare professional.",
           "This is general information, not medical advice; please consult a doctor about your symptoms.",
           "As an AI I can't give medical advice. A licensed healthcare provider can examine you and advise safely."),
}


def plain_text(text: str) -> str:
    """Markdown removed (bold/italics, headers, bullets → "- "), blank-line runs collapsed."""
    text = re.sub(r"\*\*|__|(?<!\w)\*(?=\w)|(?<=\w)\*(?!\w)", "", text)
    text = re.sub(r"(?m)^\s*#+\s*", "", text)
    text = re.sub(r"(?m)^\s*[*•]\s+", "- ", text)
    text = re.sub(r"\n{3,}", "\n\n", text)
    return text.strip()


def _mmsb_target(example: Example, advice: bool) -> str:
    """The trimmed plain-text target; an advice target whose opening lacks a disclaimer gets one
    (a domain disclaimer chosen by hash) in front of the answer's opening."""
    text = plain_text(example.response)
    head = trim_target(text)
    if not advice or has_disclaimer(head):
        return head
    number = (example.scenario or "11").split("-", 1)[0]
    options = _DISCLAIMERS.get(number, _DISCLAIMERS["11"])
    disclaimer = options[int(_digest(text), 16) % len(options)]
    rest = trim_target(text, MAX_TARGET_CHARS - len(disclaimer) - 1)
    return f"{disclaimer} {rest}".strip()


def _mmsb_target_rank(example: Example, advice: bool) -> tuple:
    """Lower is better: disclaimer already in the opening (advice), text-only variants, not a one-liner."""
    text = example.response
    return (
        advice and not has_disclaimer(trim_target(plain_text(text))),
        example.meta.get("variant") not in ("question", "changed_question"),
        len(_mmsb_target(example, advice)) < MIN_TARGET_CHARS,
        _digest(text),
    )


def mmsb_detox(root: Path) -> list[DetoxRecord]:
    """Unsafe Gemini answers paired with a safe answer to the same MM-SafetyBench question."""
    groups: dict[str, list[Example]] = defaultdict(list)
    for example in read_mmsb_gemini(root).examples:
        groups[example.group].append(example)
    records = []
    for group, members in groups.items():
        scenario = members[0].scenario
        key = guidance_key(scenario)
        unsafe = [e for e in members if e.label == HARMFUL]
        # advice targets carry a disclaimer; harm and political targets must actually decline (the Gemini
        # judge also calls neutral overviews of a harmful topic "safe")
        safe = [e for e in members if e.label == HARMLESS and _mmsb_target(e, key == "advice")
                and (key == "advice" or is_refusal(_mmsb_target(e, False)))]
        if not unsafe or not safe:
            continue
        question = next((e.query for e in members if e.meta.get("variant") == "question"), members[0].query) or ""
        ranked = sorted(safe, key=lambda e: _mmsb_target_rank(e, key == "advice"))
        for i, bad in enumerate(sorted(unsafe, key=lambda e: _digest(e.response))):
            good = ranked[i % min(2, len(ranked))]  # spread over the two best targets
            records.append(DetoxRecord(question, bad.response, _mmsb_target(good, key == "advice"), key, "mmsb_gemini",
                                       group, scenario, {"variant": bad.meta.get("variant")}))
    return records


# ---------------------------------------------------------------- JailbreakBench


def _jbb_target_rank(example: Example) -> tuple:
    text = trim_target(plain_text(example.response))
    return (len(text) < MIN_TARGET_CHARS, -min(len(text), 400), _digest(text))


def jbb_detox(root: Path, per_goal: int = 6) -> list[DetoxRecord]:
    """Jailbroken answers paired with a refusal to the same goal (at most `per_goal` per goal)."""
    groups: dict[str, list[Example]] = defaultdict(list)
    for example in read_jailbreakbench(root).examples:
        groups[example.group].append(example)
    records = []
    for group, members in groups.items():
        refusals = [e for e in members if e.label == HARMLESS and is_refusal(e.response) and trim_target(e.response)]
        jailbroken = [e for e in members if e.label == HARMFUL]
        if not refusals or not jailbroken:
            continue
        ranked = sorted(refusals, key=_jbb_target_rank)
        good_targets = [e for e in ranked if len(trim_target(e.response)) >= MIN_TARGET_CHARS] or ranked[:1]
        jailbroken.sort(key=lambda e: _digest(e.response))
        for i, bad in enumerate(jailbroken[:per_goal]):
            good = good_targets[i % len(good_targets)]
            records.append(DetoxRecord(bad.query or "", bad.response, trim_target(plain_text(good.response)), "harm",
                                       "jailbreakbench", group, bad.scenario,
                                       {"model": bad.meta.get("model"), "target_model": good.meta.get("model")}))
    return records


# ---------------------------------------------------------------- ranking pairs (PKU-SafeRLHF, hub data)


def pairs_to_detox(pairs: Iterable[Pair], source: str | None = None) -> list[DetoxRecord]:
    """(safe, unsafe) answer pairs to one query → detox records (category inferred from the query)."""
    records = []
    for pair in pairs:
        target = trim_target(plain_text(pair.safe))
        if not target or not pair.query:
            continue
        records.append(DetoxRecord(pair.query, pair.unsafe, target, _consistent_category(pair.query, target),
                                   source or pair.source, pair.group))
    return records


def pku_detox(root: Path) -> list[DetoxRecord]:
    """PKU-SafeRLHF prompts with exactly one safe answer (its pairs are those)."""
    return pairs_to_detox(read_pku_saferlhf(root).pairs)


# ---------------------------------------------------------------- matched by query similarity


def _harmful_pool(root: Path) -> list[Example]:
    """Harmful answers with a plain-text query, for similarity matching."""
    pool = [e for e in read_jailbreakbench(root).examples if e.label == HARMFUL]
    pool += [e for e in read_pku_saferlhf(root).examples if e.label == HARMFUL]
    pool += [e for e in read_figstep_qwen(root).examples if e.label == HARMFUL]
    mmsb: dict[str, list[Example]] = defaultdict(list)
    for e in read_mmsb_gemini(root).examples:
        mmsb[e.group].append(e)
    for members in mmsb.values():
        question = next((e.query for e in members if e.meta.get("variant") == "question"), None)
        pool += [Example(e.response, HARMFUL, question, e.source, e.group, e.scenario) for e in members
                 if e.label == HARMFUL and question]
    return [e for e in pool if e.query]


def _safe_pool(root: Path) -> list[tuple[Example, str | None]]:
    """(safe reply to a harmful instruction, category hint)."""
    pool: list[tuple[Example, str | None]] = [(e, None) for e in read_safety_tuned_llamas(root).examples]
    for e in read_vlguard(root).examples:
        if e.meta.get("kind") in ("unsafe_instruction", "unsafe_image") and is_refusal(e.response):
            pool.append((e, e.scenario))
    return pool


def matched_detox(
    root: Path,
    min_similarity: float = 0.6,
    per_harmful: int = 2,
    embed: Callable[[list[str]], Any] | None = None,
) -> list[DetoxRecord]:
    """Safe replies to harmful instructions paired with a harmful answer to the most similar query.

    `embed` maps texts to L2-normalised vectors (default: MiniLM via sentence-transformers). Each
    harmful answer is used at most `per_harmful` times; the record's group is the harmful answer's,
    so a held-out harmful answer never appears in training.
    """
    import numpy as np

    harmful = _harmful_pool(root)
    safe = _safe_pool(root)
    embed = embed or _minilm_embed
    h_queries = sorted({e.query for e in harmful if e.query})
    by_query: dict[str, list[Example]] = defaultdict(list)
    for e in harmful:
        by_query[e.query or ""].append(e)
    for members in by_query.values():
        members.sort(key=lambda e: _digest(e.response))
    h_vec = np.asarray(embed(h_queries))
    s_vec = np.asarray(embed([e.query or "" for e, _ in safe]))
    sims = s_vec @ h_vec.T
    best = sims.argmax(axis=1)
    used: Counter[str] = Counter()
    order = sorted(range(len(safe)), key=lambda i: -float(sims[i, best[i]]))
    records = []
    for i in order:
        example, hint = safe[i]
        if float(sims[i, best[i]]) < min_similarity:
            break
        target = trim_target(plain_text(example.response))
        if not target:
            continue
        candidates = [e for e in by_query[h_queries[best[i]]] if used[e.response] < per_harmful]
        if not candidates:
            continue
        bad = min(candidates, key=lambda e: used[e.response])
        used[bad.response] += 1
        query = example.query or ""
        hint_key = "political" if hint == "political" else "advice" if hint == "professional advice" else None
        records.append(DetoxRecord(
            query, bad.response, target, _consistent_category(query, target, hint_key), "matched", bad.group,
            hint or bad.scenario,
            {"target_source": example.source, "harmful_source": bad.source, "harmful_query": bad.query,
             "similarity": round(float(sims[i, best[i]]), 3)},
        ))
    return records


def _minilm_embed(texts: list[str]) -> Any:
    from sentence_transformers import SentenceTransformer

    from ..models import resolve_model

    model = SentenceTransformer(resolve_model("minilm-l6"), device="cpu")
    return model.encode(texts, batch_size=64, normalize_embeddings=True, show_progress_bar=False)


# ---------------------------------------------------------------- assembly, dedup, split, IO


_BUILDERS: dict[str, Callable[[Path], list[DetoxRecord]]] = {
    "mmsb_gemini": mmsb_detox,
    "jailbreakbench": jbb_detox,
    "pku_saferlhf": pku_detox,
    "matched": matched_detox,
}


def deduplicate(records: Iterable[DetoxRecord], max_target_reuse: int = 8) -> list[DetoxRecord]:
    """Drop repeated (query, harmful answer) records, records whose target equals the harmful answer,
    and uses of one target text beyond `max_target_reuse` (keeps rewrites from collapsing to one line)."""
    seen: set[tuple[str, str]] = set()
    reuse: Counter[str] = Counter()
    kept = []
    for record in records:
        key = (_norm(record.query), _norm(record.harmful))
        target = _norm(record.target)
        if key in seen or target == key[1] or reuse[target] >= max_target_reuse:
            continue
        seen.add(key)
        reuse[target] += 1
        kept.append(record)
    return kept


def merge_query_groups(records: Sequence[DetoxRecord]) -> list[DetoxRecord]:
    """Rewrite groups so records sharing a (normalised) query or a group share one group (union-find):
    a group split then never puts one query on both sides."""
    parent: dict[str, str] = {}

    def find(x: str) -> str:
        while parent.setdefault(x, x) != x:
            parent[x] = parent[parent[x]]
            x = parent[x]
        return x

    for record in records:
        a, b = find("g:" + record.group), find("q:" + _norm(record.query))
        if a != b:
            parent[max(a, b)] = min(a, b)
    out = []
    for record in records:
        root = find("g:" + record.group)
        out.append(record if root == "g:" + record.group else DetoxRecord(**{**record.to_dict(), "group": root[2:]}))
    return out


def build_detox_dataset(
    root: Path | str | None = None,
    sources: Sequence[str] | None = None,
    extra: Iterable[DetoxRecord] = (),
) -> list[DetoxRecord]:
    """All detox records from the named sources (default: all of `SOURCES`) plus `extra`,
    deduplicated, with query-merged groups, in a deterministic order."""
    folder = data_dir(root)
    if not folder.is_dir():
        raise DatasetError(f"data folder {folder} not found: pass --data-dir or set MLLM_PROTECTOR_DATA")
    names = list(SOURCES) if sources is None else list(sources)
    unknown = [n for n in names if n not in _BUILDERS]
    if unknown:
        raise DatasetError(f"unknown detox source(s) {', '.join(unknown)}: choose from {', '.join(SOURCES)}")
    records: list[DetoxRecord] = []
    for name in names:
        found = _BUILDERS[name](folder)
        log.info("detox source %s: %d records", name, len(found))
        records += found
    records += list(extra)
    kept = deduplicate(records)
    log.info("detox records: %d (%d dropped as duplicates)", len(kept), len(records) - len(kept))
    return merge_query_groups(kept)


def split_detox(
    records: Sequence[DetoxRecord], val_fraction: float = 0.1, seed: int = 0
) -> tuple[list[DetoxRecord], list[DetoxRecord]]:
    """(train, validation) by group hash; no query is on both sides (groups are merged by query)."""
    return group_split(merge_query_groups(records), val_fraction, seed)


def cap_per_source(records: Sequence[DetoxRecord], caps: dict[str, int], seed: int = 0) -> list[DetoxRecord]:
    """Keep at most caps[source] records of each source (deterministic by hash), to bound training time."""
    by_source: dict[str, list[DetoxRecord]] = defaultdict(list)
    for r in records:
        by_source[r.source].append(r)
    kept = []
    for source, members in by_source.items():
        cap = caps.get(source, len(members))
        members = sorted(members, key=lambda r: _digest(f"{seed}:{r.query}\0{r.harmful}"))
        kept += members[:cap]
    return sorted(kept, key=lambda r: _digest(f"{seed}:order:{r.query}\0{r.harmful}"))


def summarize(records: Sequence[DetoxRecord]) -> dict[str, Any]:
    """Counts per source and per category (the model card's data table)."""
    return {
        "records": len(records),
        "by_source": dict(sorted(Counter(r.source for r in records).items())),
        "by_category": dict(sorted(Counter(r.category for r in records).items())),
        "by_source_category": {
            s: dict(sorted(Counter(r.category for r in records if r.source == s).items()))
            for s in sorted({r.source for r in records})
        },
        "distinct_queries": len({_norm(r.query) for r in records}),
        "distinct_targets": len({_norm(r.target) for r in records}),
    }


def write_detox_jsonl(records: Iterable[DetoxRecord], path: Path | str) -> None:
    """One JSON object per line (query, harmful, target, category, source, group, scenario, meta)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", encoding="utf-8") as handle:
        for record in records:
            handle.write(json.dumps(record.to_dict(), ensure_ascii=False) + "\n")


_REQUIRED = ("query", "harmful", "target")


def read_detox_jsonl(path: Path | str, source: str | None = None) -> list[DetoxRecord]:
    """Detox records from JSONL: required `query`, `harmful` (or `response`), `target`; optional
    `category` (guidance key or category name; inferred from the query when absent), `source`, `group`,
    `scenario`. Malformed rows raise DatasetError naming the file and line."""
    path = Path(path)
    if not path.is_file():
        raise DatasetError(f"detox data file {path} not found")
    records = []
    for where, row in _read_jsonl(path):
        if "harmful" not in row and "response" in row:
            row = {**row, "harmful": row["response"]}
        for key in _REQUIRED:
            if not isinstance(row.get(key), str) or not row[key].strip():
                raise DatasetError(f"{where}: field {key!r} must be a non-empty string")
        for key in ("category", "source", "group", "scenario"):
            if row.get(key) is not None and not isinstance(row[key], str):
                raise DatasetError(f"{where}: field {key!r} must be a string")
        category, meta = row.get("category"), row.get("meta")
        records.append(DetoxRecord(
            row["query"], row["harmful"], row["target"],
            guidance_key(category) if category else infer_category(row["query"]),
            row.get("source") or source or path.stem,
            row.get("group") or f"{path.stem}:{_digest(_norm(row['query']))}",
            row.get("scenario"),
            meta if isinstance(meta, dict) else {},
        ))
    return records
