"""Dataset readers mapping every labelled source onto one record type, plus leakage-free splits."""

from .readers import (
    BENIGN_SOURCES,
    FIGSTEP_JUDGES,
    PAIRS_PER_GROUP,
    SOURCES,
    load_corpus,
    read_figstep_qwen,
    read_hh_rlhf,
    read_jailbreakbench,
    read_jsonl_examples,
    read_llava_coco,
    read_llava_wild,
    read_mmsb_gemini,
    read_pku_saferlhf,
    read_safety_tuned_llamas,
    read_vicuna80,
    read_vlguard,
)
from .records import HARMFUL, HARMLESS, Corpus, Example, Pair
from .splits import group_split, leave_out, split_pairs

__all__ = [
    "BENIGN_SOURCES",
    "FIGSTEP_JUDGES",
    "HARMFUL",
    "HARMLESS",
    "PAIRS_PER_GROUP",
    "SOURCES",
    "Corpus",
    "Example",
    "Pair",
    "group_split",
    "leave_out",
    "load_corpus",
    "read_figstep_qwen",
    "read_hh_rlhf",
    "read_jailbreakbench",
    "read_jsonl_examples",
    "read_llava_coco",
    "read_llava_wild",
    "read_mmsb_gemini",
    "read_pku_saferlhf",
    "read_safety_tuned_llamas",
    "read_vicuna80",
    "read_vlguard",
    "split_pairs",
]
