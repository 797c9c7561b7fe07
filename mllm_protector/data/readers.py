"""Readers that map each labelled data set in the shared data folder onto `Example`s and `Pair`s.

One small function per source, each taking the data root and returning a `Corpus`. Malformed rows
raise `DatasetError` naming the file and row; legitimately empty answers are skipped and counted in
the log. `load_corpus` combines sources by name and removes duplicate records.
"""

from __future__ import annotations

import csv
import gzip
import hashlib
import json
import logging
from collections import Counter, defaultdict
from collections.abc import Callable, Hashable, Iterator, Mapping, Sequence
from itertools import product
from pathlib import Path
from typing import Any, NamedTuple, TypeVar

from ..config import data_dir
from ..errors import DatasetError
from .labelled import labelled_sets, read_labelled_set
from .records import HARMFUL, HARMLESS, Corpus, Example, Pair

log = logging.getLogger(__name__)
T = TypeVar("T")

_HINT = "pass --data-dir or set MLLM_PROTECTOR_DATA"
_NONE = type(None)

#: At most this many (harmless, harmful) pairs are drawn from one group, so big groups don't dominate.
PAIRS_PER_GROUP = 4

#: Sources whose answers are all benign: used to measure the detector's false-positive rate.
BENIGN_SOURCES = ("vicuna80", "llava_coco", "vlguard")

#: FigStep judge name -> result file under figstep_qwen25vl_responses/safebench/.
FIGSTEP_JUDGES = {
    "auto": "figstep_qwen25vl_auto_judge_results.csv",
    "llama_loose": "figstep_qwen25vl_llama_loose_judge.csv",
}

#: JailbreakBench files that sit beside the artifacts but hold no responses.
_JBB_AUXILIARY = frozenset({"attack-info.json", "evaluation.json", "submission.json"})

#: VLGuard instruction key -> meta "kind"; a plain "instruction" is asked about an unsafe image.
_VLGUARD_KINDS = {
    "safe_instruction": "safe_instruction",
    "unsafe_instruction": "unsafe_instruction",
    "instruction": "unsafe_image",
}

_LABEL_WORDS = {"harmful": HARMFUL, "unsafe": HARMFUL, "1": HARMFUL, "true": HARMFUL,
                "harmless": HARMLESS, "safe": HARMLESS, "0": HARMLESS, "false": HARMLESS}


# ---------------------------------------------------------------- file and field helpers


def _require(path: Path) -> Path:
    if not path.exists():
        raise DatasetError(f"data file {path} not found: {_HINT}")
    return path


def _digest(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8")).hexdigest()[:16]


def _expect(value: Any, kind: type | tuple[type, ...], where: str, what: str = "value") -> Any:
    if not isinstance(value, kind):
        kinds = kind if isinstance(kind, tuple) else (kind,)
        expected = " or ".join("null" if k is _NONE else k.__name__ for k in kinds)
        raise DatasetError(f"{where}: {what} must be {expected}, got {type(value).__name__}")
    return value


def _field(row: Mapping[str, Any], key: str, kind: type | tuple[type, ...], where: str) -> Any:
    if key not in row:
        raise DatasetError(f"{where}: missing field {key!r}")
    return _expect(row[key], kind, where, f"field {key!r}")


def _optional(row: Mapping[str, Any], key: str, where: str) -> str | None:
    return _field(row, key, (str, _NONE), where) if key in row else None


def _parse_bool(value: bool | str, where: str) -> bool:
    if isinstance(value, bool):
        return value
    if value.strip().lower() in ("true", "false"):
        return value.strip().lower() == "true"
    raise DatasetError(f"{where}: expected True or False, got {value!r}")


def _read_json(path: Path) -> Any:
    try:
        with _require(path).open(encoding="utf-8") as handle:
            return json.load(handle)
    except json.JSONDecodeError as exc:
        raise DatasetError(f"{path}, line {exc.lineno}: invalid JSON ({exc.msg})") from exc
    except UnicodeDecodeError as exc:
        raise DatasetError(f"{path}: not UTF-8 text ({exc})") from exc


def _read_jsonl(path: Path) -> Iterator[tuple[str, dict[str, Any]]]:
    """Yield (location, object) for each non-blank line of a .jsonl or .jsonl.gz file."""
    opener = gzip.open if path.suffix == ".gz" else open
    try:
        with opener(_require(path), "rt", encoding="utf-8") as handle:
            for number, line in enumerate(handle, 1):
                if not line.strip():
                    continue
                where = f"{path}, line {number}"
                try:
                    row = json.loads(line)
                except json.JSONDecodeError as exc:
                    raise DatasetError(f"{where}: invalid JSON ({exc.msg})") from exc
                yield where, _expect(row, dict, where, "row")
    except (gzip.BadGzipFile, UnicodeDecodeError) as exc:
        raise DatasetError(f"{path}: cannot decode ({exc})") from exc


def _read_csv(path: Path) -> list[tuple[str, dict[str, Any]]]:
    try:
        with _require(path).open(encoding="utf-8", newline="") as handle:
            reader = csv.DictReader(handle)
            return [(f"{path}, line {reader.line_num}", row) for row in reader]
    except (csv.Error, UnicodeDecodeError) as exc:
        raise DatasetError(f"{path}: cannot parse CSV ({exc})") from exc


def _json_list(path: Path) -> Iterator[tuple[str, Any]]:
    """Yield (location, item) for each item of a file holding one JSON array."""
    items = _expect(_read_json(path), list, str(path), "top level")
    for number, item in enumerate(items):
        yield f"{path}, item {number}", item


def _log_skipped(where: Path | str, count: int, what: str) -> None:
    if count:
        log.info("%s: skipped %d %s", where, count, what)


def _contrast_pairs(examples: Sequence[Example], query: str | None, cap: int = PAIRS_PER_GROUP) -> list[Pair]:
    """(harmless, harmful) answer pairs within one group: a deterministic spread of at most `cap`."""
    combos = [
        (safe, unsafe)
        for safe, unsafe in product(examples, examples)
        if safe.label == HARMLESS and unsafe.label == HARMFUL and safe.response != unsafe.response
    ]
    combos.sort(key=lambda c: _digest(c[0].response + "\0" + c[1].response))
    return [Pair(query, safe.response, unsafe.response, safe.source, safe.group) for safe, unsafe in combos[:cap]]


# ---------------------------------------------------------------- MM-SafetyBench (Gemini answers)


def read_mmsb_gemini(root: Path) -> Corpus:
    """Gemini-2.0-flash answers to MM-SafetyBench, judged safe/unsafe; the 4 prompt variants of a
    question share one group, and its safe vs unsafe variant answers become ranking pairs."""
    folder = _require(root / "mm_safetybench_gemini_responses")
    files = sorted(folder.glob("*.json"))
    if not files:
        raise DatasetError(f"no *.json files in {folder}: {_HINT}")
    return sum((_mmsb_file(path) for path in files), Corpus())


def _mmsb_file(path: Path) -> Corpus:
    scenario = path.stem
    number = scenario.split("-", 1)[0]
    items = _expect(_read_json(path), dict, str(path), "top level")
    corpus, skipped = Corpus(), 0
    for qid, variants in items.items():
        where = f"{path}, item {qid!r}"
        examples: list[Example] = []
        for variant, record in _expect(variants, dict, where).items():
            at = f"{where}, variant {variant!r}"
            record = _expect(record, dict, at)
            prompt = _field(record, "prompt", str, at)
            answer = _field(record, "answer", str, at)
            verdict = _field(record, "verdict", str, at)
            if verdict not in ("safe", "unsafe"):
                raise DatasetError(f"{at}: verdict must be 'safe' or 'unsafe', got {verdict!r}")
            if not answer.strip():
                skipped += 1
                continue
            examples.append(Example(answer, int(verdict == "unsafe"), prompt, "mmsb_gemini",
                                    f"mmsb:{number}:{qid}", scenario, {"variant": variant}))
        question = next((e.query for e in examples if e.meta["variant"] == "question"), None)
        corpus.examples.extend(examples)
        corpus.pairs.extend(_contrast_pairs(examples, question))
    _log_skipped(path, skipped, "empty answers")
    return corpus


# ---------------------------------------------------------------- FigStep (Qwen2.5-VL answers)


def read_figstep_qwen(root: Path, judge: str = "llama_loose") -> Corpus:
    """Qwen2.5-VL answers to FigStep SafeBench labelled by one automatic judge (default llama_loose).

    The auto judge's labels are close to random (it marks 83 of the 161 verbatim refusals
    "I'm sorry, but I can't assist with that." jailbroken); llama_loose never marks a refusal
    jailbroken. SafeBench-Tiny is not read: its 50 rows repeat safebench rows verbatim.
    """
    if judge not in FIGSTEP_JUDGES:
        raise DatasetError(f"unknown FigStep judge {judge!r}: choose one of {', '.join(FIGSTEP_JUDGES)}")
    path = root / "figstep_qwen25vl_responses" / "safebench" / FIGSTEP_JUDGES[judge]
    rows = _read_csv(path)
    categories = _figstep_categories(root / "figstep" / "question" / "safebench.csv", rows)
    examples, skipped = [], 0
    for (where, row), category in zip(rows, categories, strict=True):
        index = _field(row, "index", str, where)
        question = _field(row, "question", str, where)
        answer = _strip_chat(_field(row, "response", str, where), where)
        jailbroken = _parse_bool(_field(row, "is_jailbroken", str, where), where)
        if not answer:
            skipped += 1
            continue
        examples.append(Example(answer, int(jailbroken), question, "figstep_qwen", f"figstep:{index}",
                                category, {"judge": judge}))
    _log_skipped(path, skipped, "empty answers")
    return Corpus(examples)


def _strip_chat(transcript: str, where: str) -> str:
    """The model's answer: the text after the last "assistant\\n" of the decoded chat transcript."""
    marker = "assistant\n"
    cut = transcript.rfind(marker)
    if cut < 0:
        raise DatasetError(f"{where}: response has no 'assistant' turn to extract the answer from")
    return transcript[cut + len(marker):].strip()


def _figstep_categories(path: Path, rows: list[tuple[str, dict[str, Any]]]) -> list[str | None]:
    """Topic of each response row, from the SafeBench question file whose rows align 1:1 (None if absent)."""
    if not path.exists():
        log.info("%s not found: FigStep examples get no scenario", path)
        return [None] * len(rows)
    questions = _read_csv(path)
    if len(questions) != len(rows):
        raise DatasetError(f"{path}: {len(questions)} questions but {len(rows)} FigStep answers; rows must align")
    categories = []
    for (where, row), (q_where, q_row) in zip(rows, questions, strict=True):
        if _field(row, "question", str, where) != _field(q_row, "question", str, q_where):
            raise DatasetError(f"{where}: question differs from {q_where}; rows must align 1:1")
        categories.append(_field(q_row, "category_name", str, q_where))
    return categories


# ---------------------------------------------------------------- JailbreakBench artifacts


def read_jailbreakbench(root: Path) -> Corpus:
    """JailbreakBench attack artifacts: responses labelled by the JBB judge, grouped by behavior index;
    jailbroken vs refused answers to the same behavior become ranking pairs."""
    folder = _require(root / "jailbreakbench" / "artifacts")
    files = sorted(p for p in folder.rglob("*.json") if p.name not in _JBB_AUXILIARY)
    if not files:
        raise DatasetError(f"no artifact *.json files under {folder}: {_HINT}")
    examples, skipped = [], 0
    for path in files:
        found, missing = _jbb_file(path)
        examples += found
        skipped += missing
    _log_skipped(folder, skipped, "jailbreaks without a response")
    groups: dict[str, list[Example]] = defaultdict(list)
    for example in examples:
        groups[example.group].append(example)
    pairs = [pair for members in groups.values() for pair in _contrast_pairs(members, members[0].query)]
    return Corpus(examples, pairs)


def _jbb_file(path: Path) -> tuple[list[Example], int]:
    data = _expect(_read_json(path), dict, str(path), "top level")
    params = _field(data, "parameters", dict, str(path))
    meta = {key: _field(params, key, str, f"{path}, parameters") for key in ("method", "model")}
    examples, skipped = [], 0
    for number, entry in enumerate(_field(data, "jailbreaks", list, str(path))):
        where = f"{path}, jailbreaks[{number}]"
        entry = _expect(entry, dict, where)
        response = _field(entry, "response", (str, _NONE), where)
        jailbroken = _field(entry, "jailbroken", bool, where)
        goal = _field(entry, "goal", str, where)
        category = _field(entry, "category", str, where)
        index = _field(entry, "index", int, where)
        behavior = _field(entry, "behavior", str, where)
        if response is None or not response.strip():
            skipped += 1
            continue
        examples.append(Example(response, int(jailbroken), goal, "jailbreakbench", f"jbb:{index}", category,
                                {**meta, "behavior": behavior}))
    return examples, skipped


# ---------------------------------------------------------------- PKU-SafeRLHF


def read_pku_saferlhf(root: Path) -> Corpus:
    """PKU-SafeRLHF: two human-labelled responses per prompt; a pair where exactly one is safe."""
    path = root / "pku_saferlhf_sample" / "test_sample.jsonl"
    corpus, skipped = Corpus(), 0
    for where, row in _read_jsonl(path):
        prompt = _field(row, "prompt", str, where)
        examples = []
        for i in (0, 1):
            response = _field(row, f"response_{i}", str, where)
            safe = _parse_bool(_field(row, f"is_response_{i}_safe", (bool, str), where), where)
            if not response.strip():
                skipped += 1
                continue
            examples.append(Example(response, int(not safe), prompt, "pku_saferlhf", f"pku:{_digest(prompt)}"))
        corpus.examples.extend(examples)
        corpus.pairs.extend(_contrast_pairs(examples, prompt))
    _log_skipped(path, skipped, "empty responses")
    return corpus


# ---------------------------------------------------------------- Anthropic hh-rlhf (pairs only)


class _Exchange(NamedTuple):
    context: str  # everything before the final assistant turn
    opener: str  # the first human turn: groups dialogues that start the same way
    query: str  # the last human turn
    answer: str  # the final assistant turn


def read_hh_rlhf(root: Path) -> Corpus:
    """hh-rlhf harmless-base: the final chosen vs rejected answers as ranking pairs only (no labels:
    "chosen" is only *less* harmful, and both answers are often harmful or both benign)."""
    path = root / "hh_rlhf" / "test.jsonl.gz"
    pairs: list[Pair] = []
    skipped: Counter[str] = Counter()
    for where, row in _read_jsonl(path):
        chosen = _last_exchange(_field(row, "chosen", str, where), where)
        rejected = _last_exchange(_field(row, "rejected", str, where), where)
        reason = _hh_skip_reason(chosen, rejected)
        if reason:
            skipped[reason] += 1
            continue
        pairs.append(Pair(chosen.query, chosen.answer, rejected.answer, "hh_rlhf", f"hh:{_digest(chosen.opener)}"))
    for reason, count in skipped.items():
        _log_skipped(path, count, reason)
    return Corpus(pairs=pairs)


def _last_exchange(transcript: str, where: str) -> _Exchange:
    human, assistant = "\n\nHuman:", "\n\nAssistant:"
    cut = transcript.rfind(assistant)
    asked = transcript.rfind(human, 0, cut) if cut >= 0 else -1
    if asked < 0:
        raise DatasetError(f"{where}: transcript lacks a final '{human.strip()} ... {assistant.strip()}' exchange")
    opener = transcript.split(assistant, 1)[0]
    return _Exchange(transcript[:cut], opener.strip(), transcript[asked + len(human):cut].strip(),
                     transcript[cut + len(assistant):].strip())


def _hh_skip_reason(chosen: _Exchange, rejected: _Exchange) -> str | None:
    if chosen.context != rejected.context:
        return "pairs whose dialogues differ before the final answer"
    if not chosen.answer or not rejected.answer:
        return "pairs with an empty final answer"
    if chosen.answer == rejected.answer:
        return "pairs with identical final answers"
    return None


# ---------------------------------------------------------------- harmless-only sources


def read_safety_tuned_llamas(root: Path) -> Corpus:
    """Safety-Tuned LLaMAs: harmless refusal-style replies (label 0) to harmful instructions."""
    path = root / "safety_tuned_llamas" / "training" / "safety_only_data_Instructions.json"
    examples, skipped = [], 0
    for where, item in _json_list(path):
        item = _expect(item, dict, where)
        instruction = _field(item, "instruction", str, where)
        extra = _optional(item, "input", where)
        output = _field(item, "output", str, where)
        query = f"{instruction}\n\n{extra}" if extra and extra.strip() else instruction
        if not output.strip():
            skipped += 1
            continue
        examples.append(Example(output, HARMLESS, query, "safety_tuned_llamas", f"stl:{_digest(query)}"))
    _log_skipped(path, skipped, "empty outputs")
    return Corpus(examples)


def read_vlguard(root: Path) -> Corpus:
    """VLGuard GPT-4V responses, all harmless (label 0): helpful answers to safe instructions and
    refusals to unsafe instructions or unsafe images; grouped by image id."""
    folder = root / "vlguard"
    examples = [e for split in ("train", "test") for e in _vlguard_split(folder / f"{split}.json", split)]
    examples += _vlguard_references(folder / "gpt4_safe_safes.json")
    return Corpus(examples)


def _vlguard_split(path: Path, split: str) -> list[Example]:
    examples, skipped = [], 0
    for where, item in _json_list(path):
        item = _expect(item, dict, where)
        image_id = _field(item, "id", str, where)
        scenario = _field(item, "harmful_category", str, where) if "harmful_category" in item else "benign"
        for number, turn in enumerate(_field(item, "instr-resp", list, where)):
            at = f"{where}, instr-resp[{number}]"
            turn = _expect(turn, dict, at)
            keys = [key for key in _VLGUARD_KINDS if key in turn]
            if len(keys) != 1:
                raise DatasetError(f"{at}: expected exactly one of {', '.join(_VLGUARD_KINDS)}")
            instruction = _field(turn, keys[0], str, at)
            response = _field(turn, "response", str, at)
            if not response.strip():
                skipped += 1
                continue
            examples.append(Example(response, HARMLESS, instruction, "vlguard", f"vlguard:{image_id}", scenario,
                                    {"kind": _VLGUARD_KINDS[keys[0]], "split": split}))
    _log_skipped(path, skipped, "empty responses")
    return examples


def _vlguard_references(path: Path) -> list[Example]:
    """gpt4_safe_safes.json: flat {id, instruction, response} answers to safe instructions on safe images."""
    examples = []
    for where, item in _json_list(path):
        item = _expect(item, dict, where)
        image_id = _field(item, "id", str, where)
        instruction = _field(item, "instruction", str, where)
        response = _field(item, "response", str, where)
        examples.append(Example(response, HARMLESS, instruction, "vlguard", f"vlguard:{image_id}", "benign",
                                {"kind": "safe_instruction", "split": "gpt4_safe_safes"}))
    return examples


def _questions_by_id(path: Path) -> dict[int, dict[str, Any]]:
    questions = {}
    for where, row in _read_jsonl(path):
        _field(row, "text", str, where)
        questions[_field(row, "question_id", int, where)] = row
    return questions


def _question(questions: dict[int, dict[str, Any]], qid: int, where: str, path: Path) -> dict[str, Any]:
    if qid not in questions:
        raise DatasetError(f"{where}: question_id {qid} not found in {path}")
    return questions[qid]


def read_vicuna80(root: Path) -> Corpus:
    """Vicuna-80 benign questions answered by 5 LLMs: harmless answers (label 0) for false-positive rates."""
    folder = root / "vicuna80_text_answers"
    questions_path = folder / "question.jsonl"
    questions = _questions_by_id(questions_path)
    files = sorted(_require(folder / "answer").glob("answer_*.jsonl"))
    if not files:
        raise DatasetError(f"no answer_*.jsonl files in {folder / 'answer'}: {_HINT}")
    examples, skipped = [], 0
    for path in files:
        for where, row in _read_jsonl(path):
            qid = _field(row, "question_id", int, where)
            text = _field(row, "text", str, where)
            model = _field(row, "model_id", str, where)
            question = _question(questions, qid, where, questions_path)
            if not text.strip():
                skipped += 1
                continue
            examples.append(Example(text, HARMLESS, question["text"], "vicuna80", f"vicuna80:{qid}",
                                    question.get("category"), {"model": model}))
    _log_skipped(folder / "answer", skipped, "empty answers")
    return Corpus(examples)


def read_llava_coco(root: Path) -> Corpus:
    """LLaVA-Bench (COCO) qa90 GPT-4 answers: benign multimodal QA (label 0), grouped by image."""
    folder = root / "llava_bench_coco"
    questions_path = folder / "qa90_questions.jsonl"
    questions = _questions_by_id(questions_path)
    examples = []
    for where, row in _read_jsonl(folder / "qa90_gpt4_answer.jsonl"):
        qid = _field(row, "question_id", int, where)
        text = _field(row, "text", str, where)
        question = _question(questions, qid, where, questions_path)
        image = _field(question, "image", str, f"{questions_path}, question_id {qid}")
        examples.append(Example(text, HARMLESS, question["text"], "llava_coco", f"llava_coco:{image}",
                                question.get("category")))
    return Corpus(examples)


def read_llava_wild(root: Path) -> Corpus:
    """LLaVA-Bench in-the-wild GPT-4 answers: benign multimodal answers (label 0)."""
    path = root / "llava_bench_wild" / "answers_gpt4.jsonl"
    examples = []
    for where, row in _read_jsonl(path):
        qid = _field(row, "question_id", int, where)
        prompt = _field(row, "prompt", str, where)
        text = _field(row, "text", str, where)
        model = _field(row, "model_id", str, where)
        examples.append(Example(text, HARMLESS, prompt, "llava_wild", f"llava_wild:{qid}", None, {"model": model}))
    return Corpus(examples)


# ---------------------------------------------------------------- user data


def read_jsonl_examples(path: Path, source: str = "jsonl") -> list[Example]:
    """Labelled responses from a user's JSONL file: `response`, `label` (0/1, bool, harmful/harmless,
    unsafe/safe), optional `query`, `source`, `group` (default: one group per distinct query)."""
    examples, skipped = [], 0
    for where, row in _read_jsonl(Path(path)):
        response = _field(row, "response", str, where)
        label = parse_label(_field(row, "label", (int, str), where), where)
        query = _optional(row, "query", where)
        row_source = _optional(row, "source", where) or source
        group = _optional(row, "group", where) or f"{row_source}:{_digest(query or response)}"
        if not response.strip():
            skipped += 1
            continue
        examples.append(Example(response, label, query, row_source, group, _optional(row, "scenario", where)))
    _log_skipped(path, skipped, "empty responses")
    return examples


def parse_label(value: int | str, where: str) -> int:
    """A harm label as 1 (harmful) or 0 (harmless) from 0/1, a bool or a word; a clear error otherwise."""
    if isinstance(value, bool) or value in (HARMFUL, HARMLESS):
        return int(value)
    if isinstance(value, str) and value.strip().lower() in _LABEL_WORDS:
        return _LABEL_WORDS[value.strip().lower()]
    raise DatasetError(f"{where}: label must be 0/1, true/false, harmful/harmless or unsafe/safe, got {value!r}")


# ---------------------------------------------------------------- registry


SOURCES: dict[str, Callable[[Path], Corpus]] = {
    "mmsb_gemini": read_mmsb_gemini,
    "figstep_qwen": read_figstep_qwen,
    "jailbreakbench": read_jailbreakbench,
    "pku_saferlhf": read_pku_saferlhf,
    "hh_rlhf": read_hh_rlhf,
    "safety_tuned_llamas": read_safety_tuned_llamas,
    "vlguard": read_vlguard,
    "vicuna80": read_vicuna80,
    "llava_coco": read_llava_coco,
    "llava_wild": read_llava_wild,
}


def load_corpus(root: Path | None = None, sources: Sequence[str] | None = None) -> Corpus:
    """Read the named sources (default: all of `SOURCES`) from the data folder into one deduplicated
    corpus; `root` defaults to `config.data_dir()` (option, MLLM_PROTECTOR_DATA, ../shared/data).
    A name may also be a folder of `labelled_responses/` (e.g. `do_not_answer_en`)."""
    folder = data_dir(root)
    if not folder.is_dir():
        raise DatasetError(f"data folder {folder} not found: {_HINT}")
    names = list(SOURCES) if sources is None else list(sources)
    sets = labelled_sets(folder)
    unknown = [name for name in names if name not in SOURCES and name not in sets]
    if unknown:
        raise DatasetError(f"unknown data source(s) {', '.join(unknown)}: choose from {', '.join([*SOURCES, *sets])}")
    corpora = (SOURCES[name](folder) if name in SOURCES else read_labelled_set(folder, name) for name in names)
    return _deduplicate(sum(corpora, Corpus()))


def _first_of(items: list[T], key: Callable[[T], Hashable]) -> list[T]:
    seen: set[Hashable] = set()
    kept = []
    for item in items:
        if key(item) not in seen:
            seen.add(key(item))
            kept.append(item)
    return kept


def _deduplicate(corpus: Corpus) -> Corpus:
    """Keep the first of identical (response, label) examples and identical pairs; log what was dropped."""
    examples = _first_of(corpus.examples, lambda e: (e.response, e.label))
    pairs = _first_of(corpus.pairs, lambda p: (p.query, p.safe, p.unsafe))
    _log_skipped("corpus", len(corpus.examples) - len(examples), "duplicate examples")
    _log_skipped("corpus", len(corpus.pairs) - len(pairs), "duplicate pairs")
    labels_of: dict[str, set[int]] = defaultdict(set)
    for example in examples:
        labels_of[example.response].add(example.label)
    conflicts = sum(len(labels) > 1 for labels in labels_of.values())
    if conflicts:
        log.warning("corpus: %d responses occur with both labels (label noise between sources or judges)",
                    conflicts)
    return Corpus(examples, pairs)
