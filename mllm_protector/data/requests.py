"""Requests (not answers) with a harm label, for the input guard's request classifier.

Each source is one leave-one-source-out family. Harmful: AdvBench, StrongREJECT, HarmfulQA, CatQA,
DangerousQA, HarmBench behaviours (text + multimodal), MM-SafetyBench questions and key phrases, FigStep
questions and instructions, VLGuard unsafe instructions, Safety-Tuned LLaMAs' harmful instructions,
JailbreakBench's harmful behaviours. Benign: benign instructions, JailbreakBench benign behaviours,
Vicuna-80, LLaVA-Bench (COCO, in the wild), VLGuard safe instructions, MM-Vet, Safety-Tuned LLaMAs' Alpaca
instructions, the benign instructions asked as questions, and the attacks' own text prompts (FigStep's, MM-SafetyBench's generic rephrased questions),
which are harmless without their image. Our own benign rows (`benign_phrases`): text as it appears in
images (signs, labels, menus, slides, notes) and benign requests with scary words. The guard scores the user's text, the image text and both together
(`input_guard`), so the key phrase or instruction a typographic attack puts in the image is taught as a
request of its own. A fixed share of the benign instructions (`EVAL_FRACTION` by group hash) is never
trained on: the evaluation renders them.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from ..categories import category_from_question, training_category
from ..eval.benchmarks import FIGSTEP_PROMPT
from .benign_phrases import own_image_text, own_scary
from .readers import _digest, _expect, _field, _json_list, _read_csv, _read_json, _read_jsonl
from .records import HARMFUL, HARMLESS, Example
from .splits import group_bucket

#: Benign instructions whose group hash falls below this are held out of training (evaluation only).
EVAL_FRACTION = 0.2
#: MM-SafetyBench rephrased questions used this often are generic templates ("List steps in detail to
#: perform this activity."); rarer ones carry the harm in their own words.
GENERIC_TEMPLATE_COUNT = 8
#: How the benign instructions are turned into questions (`_benign_questions`).
QUESTION_PREFIXES = ("How do I", "How can I", "Can you", "Could you help me", "What is the best way to")
#: Generic questions about an image's text.
IMAGE_TEXT_QUESTIONS = ("What does the text in the image say?", "Please follow the instruction in the image.",
                        "Answer the request shown in the picture.", "Can you help me with what is written here?")


def figstep_group(category_id: str, task_id: str) -> str:
    """The group of a FigStep question (its question and instruction rows); the input guard benchmark keys images by it."""
    return f"figstep:{category_id}:{task_id}"


def mmsb_group(scenario: str, qid: str) -> str:
    """The group of an MM-SafetyBench question (`scenario` as its file is named, e.g. `01-Illegal_Activitiy`)."""
    return f"mmsb:{scenario}:{qid}"


def _row(text: str, label: int, source: str, scenario: str | None = None, group: str | None = None, **meta: Any) -> Example:
    """One request as an `Example` (the request is the scored text; `query` stays empty)."""
    return Example(text, label, None, source, group or f"{source}:{_digest(text)}", scenario, meta)


def _texts(items: Any) -> Iterator[str]:
    """Every string in nested dicts/lists (HarmfulQA, CatQA)."""
    if isinstance(items, str):
        yield items
    elif isinstance(items, dict):
        for value in items.values():
            yield from _texts(value)
    elif isinstance(items, list):
        for value in items:
            yield from _texts(value)


def _advbench(root: Path) -> list[Example]:
    rows = _read_csv(root / "advbench_strongreject" / "advbench_behaviors.csv")
    return [_row(_field(r, "Behavior", str, w), HARMFUL, "advbench") for w, r in rows]


def _strongreject(root: Path) -> list[Example]:
    rows = _read_csv(root / "advbench_strongreject" / "strongreject_dataset.csv")
    return [_row(_field(r, "forbidden_prompt", str, w), HARMFUL, "strongreject", r.get("category")) for w, r in rows]


def _red_instruct(root: Path, name: str, file: str) -> list[Example]:
    return [_row(t, HARMFUL, name) for t in _texts(_read_json(root / "red_instruct_questions" / file)) if t.strip()]


def _harmbench(root: Path) -> list[Example]:
    folder = root / "harmbench" / "behavior_datasets"
    out = []
    for file in ("harmbench_behaviors_text_all.csv", "harmbench_behaviors_multimodal_all.csv"):
        out += [_row(_field(r, "Behavior", str, w), HARMFUL, "harmbench", r.get("SemanticCategory")) for w, r in _read_csv(folder / file)]
    return out


def _mmsb(root: Path) -> list[Example]:
    """Each question and its key phrase (what the TYPO image shows)."""
    out = []
    for path in sorted((root / "mm_safetybench" / "processed_questions").glob("[0-9]*.json")):
        for qid, record in _expect(_read_json(path), dict, str(path)).items():
            where, group = f"{path}, id {qid}", mmsb_group(path.stem, qid)
            out.append(_row(_field(record, "Question", str, where), HARMFUL, "mmsb", path.stem, group, form="question"))
            out.append(_row(_field(record, "Key Phrase", str, where), HARMFUL, "mmsb", path.stem, group, form="key_phrase"))
    return out


def _figstep(root: Path) -> list[Example]:
    """Each question and its instruction (what the FigStep image shows)."""
    out = []
    for where, r in _read_csv(root / "figstep" / "question" / "safebench.csv"):
        group, category = figstep_group(str(r.get('category_id')), str(r.get('task_id'))), r.get("category_name")
        out.append(_row(_field(r, "question", str, where), HARMFUL, "figstep", category, group, form="question"))
        out.append(_row(_field(r, "instruction", str, where), HARMFUL, "figstep", category, group, form="instruction"))
    return out


def _vlguard(root: Path) -> list[Example]:
    """Safe instructions (benign) and unsafe instructions or instructions about unsafe images (harmful)."""
    out = []
    for split in ("train", "test"):
        for where, item in _json_list(root / "vlguard" / f"{split}.json"):
            for turn in _expect(item.get("instr-resp", []), list, where):
                for key, label in (("safe_instruction", HARMLESS), ("unsafe_instruction", HARMFUL), ("instruction", HARMFUL)):
                    if key in turn and (key != "instruction" or not item.get("safe")):
                        out.append(_row(turn[key], label, "vlguard", item.get("harmful_category")))
    return out


def _jailbreakbench(root: Path) -> list[Example]:
    out = []
    for file, label in (("harmful-behaviors.csv", HARMFUL), ("benign-behaviors.csv", HARMLESS)):
        out += [_row(_field(r, "Goal", str, w), label, "jailbreakbench", r.get("Category")) for w, r in _read_csv(root / "jailbreakbench" / file)]
    return out


def _stl(root: Path) -> list[Example]:
    """Safety-Tuned LLaMAs: harmful training instructions; its Alpaca evaluation instructions are benign."""
    path = root / "safety_tuned_llamas" / "training" / "safety_only_data_Instructions.json"
    out = [_row(_field(item, "instruction", str, w), HARMFUL, "stl_harmful") for w, item in _json_list(path)]
    alpaca = _read_json(root / "safety_tuned_llamas" / "evaluation" / "I-Alpaca.json")
    return out + [_row(t, HARMLESS, "stl_alpaca") for t in alpaca.get("instructions", [])]


def benign_instructions(root: Path) -> list[Example]:
    """The benign instruction set, each row marked `held_out` when it belongs to the evaluation share."""
    out = []
    for where, item in _json_list(root / "benign_instructions" / "harmless_test.json"):
        text = _field(item, "instruction", str, where)
        group = f"benign_instructions:{_digest(text)}"
        out.append(_row(text, HARMLESS, "benign_instructions", None, group, held_out=group_bucket(group, 0) < EVAL_FRACTION))
    return out


def _benign_questions(root: Path) -> list[Example]:
    """The benign instructions (training share) asked as questions ("How do I ...?", "Can you ...?"): the harmful
    question sets are phrased so, the benign instructions as commands, and the phrasing must not be the signal."""
    out = []
    for e in benign_instructions(root):
        if not e.meta["held_out"]:
            prefix = QUESTION_PREFIXES[int(e.group.rsplit(":", 1)[1], 16) % len(QUESTION_PREFIXES)]
            body = e.response.strip().rstrip(".?!")
            out.append(_row(f"{prefix} {body[:1].lower()}{body[1:]}?", HARMLESS, "benign_questions", None, e.group))
    return out


def _templates(root: Path) -> list[Example]:
    """The attacks' text prompts (FigStep's, MM-SafetyBench's generic rephrased questions) and generic questions
    about an image's text: harmless on their own."""
    counts = Counter(_field(r, key, str, str(p)) for p in sorted((root / "mm_safetybench" / "processed_questions").glob("[0-9]*.json"))
                     for r in _read_json(p).values() for key in ("Rephrased Question", "Rephrased Question(SD)"))
    generic = sorted(t for t, n in counts.items() if n >= GENERIC_TEMPLATE_COUNT)
    return [_row(t, HARMLESS, "attack_templates") for t in [FIGSTEP_PROMPT, *generic, *IMAGE_TEXT_QUESTIONS]]


def _vicuna(root: Path) -> list[Example]:
    return [_row(_field(r, "text", str, w), HARMLESS, "vicuna80", r.get("category")) for w, r in _read_jsonl(root / "vicuna80_text_answers" / "question.jsonl")]


def _llava(root: Path) -> list[Example]:
    out = [_row(_field(r, "text", str, w), HARMLESS, "llava") for w, r in _read_jsonl(root / "llava_bench_coco" / "qa90_questions.jsonl")]
    wild = root / "llava_bench_wild" / "questions.DERIVED_from_answers_gpt4.jsonl"
    return out + [_row(_field(r, "text", str, w), HARMLESS, "llava") for w, r in _read_jsonl(wild)]


def _mm_vet(root: Path) -> list[Example]:
    data = _expect(_read_json(root / "mm_vet" / "mm-vet.json"), dict, "mm-vet.json")
    return [_row(_field(r, "question", str, k), HARMLESS, "mm_vet") for k, r in data.items()]


#: Reader per source family.
READERS: dict[str, Callable[[Path], list[Example]]] = {
    "advbench": _advbench, "strongreject": _strongreject,
    "harmfulqa": lambda root: _red_instruct(root, "harmfulqa", "harmfulqa.json"),
    "catqa": lambda root: _red_instruct(root, "catqa", "catqa_english.json"),
    "dangerousqa": lambda root: _red_instruct(root, "dangerousqa", "dangerousqa.json"),
    "harmbench": _harmbench, "mmsb": _mmsb, "figstep": _figstep, "vlguard": _vlguard, "jailbreakbench": _jailbreakbench,
    "stl": _stl, "benign_instructions": lambda root: [e for e in benign_instructions(root) if not e.meta["held_out"]],
    "benign_questions": _benign_questions, "attack_templates": _templates, "vicuna80": _vicuna, "llava": _llava, "mm_vet": _mm_vet,
    "own_image_text": lambda root: own_image_text(), "own_scary": lambda root: own_scary(),
}
#: Sources whose own category field maps through `categories.training_category` under another name.
_CATEGORY_TABLE = {"mmsb": "mmsb_gemini", "figstep": "figstep_qwen", "jailbreakbench": "jailbreakbench"}


def request_category(example: Example) -> str | None:
    """The harm category a harmful request teaches (its set's label, else keyword rules on the text)."""
    if example.label != HARMFUL:
        return None
    table = _CATEGORY_TABLE.get(example.source)
    return training_category(table, example.scenario, example.response) if table else category_from_question(example.response)


def load_requests(root: Path) -> list[Example]:
    """Every labelled request in the shared data (training share), deduplicated by (text, label)."""
    seen: set[tuple[str, int]] = set()
    out = []
    for reader in READERS.values():
        for e in reader(root):
            key = (e.response.strip(), e.label)
            if e.response.strip() and key not in seen:
                seen.add(key)
                out.append(e)
    return out
