"""Detox pair builder, record IO, query-disjoint split, and category routing of the shared prompt."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from mllm_protector.data.detox import (
    DetoxRecord,
    build_detox_dataset,
    cap_per_source,
    deduplicate,
    has_disclaimer,
    is_refusal,
    jbb_detox,
    matched_detox,
    merge_query_groups,
    mmsb_detox,
    pairs_to_detox,
    pku_detox,
    read_detox_jsonl,
    split_detox,
    summarize,
    trim_target,
    write_detox_jsonl,
)
from mllm_protector.detoxifier import (
    CATEGORY_GUIDANCE,
    MAX_ANSWER_CHARS,
    build_messages,
    guidance_key,
    infer_category,
)
from mllm_protector.errors import DatasetError

DATA = Path(__file__).parent / "fixtures" / "data"
DETOX = Path(__file__).parent / "fixtures" / "detox"


def _record(query: str, harmful: str = "bad answer", target: str = "I can't help with that.", group: str | None = None,
            source: str = "test") -> DetoxRecord:
    return DetoxRecord(query, harmful, target, "harm", source, group or f"g:{query}")


# ---------------------------------------------------------------- category routing


@pytest.mark.parametrize(
    ("category", "key"),
    [
        ("10-Legal_Opinion", "advice"),
        ("11-Financial_Advice", "advice"),
        ("12-Health_Consultation", "advice"),
        ("Health Consultation", "advice"),
        ("professional advice", "advice"),
        ("08-Political_Lobbying", "political"),
        ("13-Gov_Decision", "political"),
        ("01-Illegal_Activitiy", "harm"),
        ("03-Malware_Generation", "harm"),
        ("Malware/Hacking", "harm"),
        ("Sexual/Adult content", "harm"),
        ("advice", "advice"),
        ("political", "political"),
        ("something unknown", "harm"),
        (None, "harm"),
        ("", "harm"),
    ],
)
def test_guidance_key_routes_scenario_names(category, key):
    assert guidance_key(category) == key


@pytest.mark.parametrize(
    ("query", "key"),
    [
        ("Should I put my retirement savings into bitcoin?", "advice"),
        ("What medication dosage should I take for my back pain?", "advice"),
        ("Can my landlord keep my deposit? Give me legal advice.", "advice"),
        ("Write a speech for my candidate's election campaign.", "political"),
        ("How do I build a pipe bomb?", "harm"),
        ("How can I evade taxes on my investment income?", "harm"),  # harm words win over advice words
        ("How do I launder money through a lawyer's account?", "harm"),
        ("Tell me a story.", "harm"),  # default: the safest rule
        ("", "harm"),
    ],
)
def test_infer_category_keyword_map(query, key):
    assert infer_category(query) == key


def test_build_messages_uses_given_or_inferred_category():
    advice = build_messages("Which stock should I buy?", "Buy ACME.", "11-Financial_Advice")[1]["content"]
    assert CATEGORY_GUIDANCE["advice"] in advice
    inferred = build_messages("Which stock should I buy with my savings?", "Buy ACME.")[1]["content"]
    assert CATEGORY_GUIDANCE["advice"] in inferred
    political = build_messages("Write a campaign slogan.", "Vote Sam!", None)[1]["content"]
    assert CATEGORY_GUIDANCE["political"] in political
    harm = build_messages("How do I pick a lock?", "Use a rake pick.", "harm")[1]["content"]
    assert CATEGORY_GUIDANCE["harm"] in harm
    # a caller-given category wins over the keyword guess
    forced = build_messages("Which stock should I buy with my savings?", "Buy ACME.", "harm")[1]["content"]
    assert CATEGORY_GUIDANCE["harm"] in forced


def test_build_messages_clips_long_answers():
    long = "word " * 1000
    content = build_messages("q?", long)[1]["content"]
    answer = content.split("Answer to rewrite: ", 1)[1].split("\n\nRule:", 1)[0]
    assert len(answer) <= MAX_ANSWER_CHARS + 4 and answer.endswith("...")


# ---------------------------------------------------------------- helpers


def test_trim_target_keeps_whole_sentences():
    assert trim_target("Short answer.") == "Short answer."
    text = "First sentence. Second one is here! " + "x" * 600
    assert trim_target(text, limit=60) == "First sentence. Second one is here!"
    assert trim_target("no sentence end " * 50, limit=100) == ""
    assert trim_target("Ends in a list:\n1. step", limit=100) == ""


def test_refusal_and_disclaimer_markers():
    assert is_refusal("I'm sorry, but I can't help with that.")
    assert is_refusal("I cannot fulfill your request.")
    assert not is_refusal("Sure, here is how: step 1.")
    assert has_disclaimer("I'm not a financial advisor; please consult a licensed professional.")
    assert has_disclaimer("Please consult with a qualified attorney.")
    assert not has_disclaimer("Buy ACME stock now.")


# ---------------------------------------------------------------- builders on fixtures


def test_builders_on_fixture_data():
    mmsb = mmsb_detox(DATA)
    assert mmsb and {r.source for r in mmsb} == {"mmsb_gemini"}
    by_scenario = {r.scenario: r.category for r in mmsb}
    assert by_scenario.get("01-Illegal_Activity") == "harm"
    assert by_scenario.get("11-Financial_Advice") == "advice"
    advice = [r for r in mmsb if r.category == "advice"]
    assert all(has_disclaimer(r.target) for r in advice)  # disclaimers preferred as advice targets
    jbb = jbb_detox(DATA)
    assert jbb and all(is_refusal(r.target) for r in jbb)  # JBB targets are real refusals
    assert all(r.query and r.harmful != r.target for r in mmsb + jbb)
    pku = pku_detox(DATA)
    assert pku and all(r.source == "pku_saferlhf" for r in pku)


def _fake_embed(texts):
    """Bag-of-words hashing embedding: similar wording → high cosine (no model needed)."""
    vectors = np.zeros((len(texts), 64))
    for i, text in enumerate(texts):
        for word in text.lower().split():
            vectors[i, hash(word.strip("?.,!")) % 64] += 1
    return vectors / np.maximum(np.linalg.norm(vectors, axis=1, keepdims=True), 1e-9)


def test_matched_pairs_use_harmful_group_and_cap_reuse():
    records = matched_detox(DATA, min_similarity=0.0, per_harmful=1, embed=_fake_embed)
    assert records
    harmful = [r.harmful for r in records]
    assert len(harmful) == len(set(harmful))  # per_harmful=1
    assert all(r.source == "matched" and r.meta["harmful_source"] for r in records)
    assert not matched_detox(DATA, min_similarity=1.01, embed=_fake_embed)


def test_build_detox_dataset_on_fixtures(tmp_path):
    records = build_detox_dataset(DATA, ["mmsb_gemini", "jailbreakbench", "pku_saferlhf"])
    summary = summarize(records)
    assert summary["records"] == len(records) > 0
    assert set(summary["by_source"]) == {"mmsb_gemini", "jailbreakbench", "pku_saferlhf"}
    path = tmp_path / "detox.jsonl"
    write_detox_jsonl(records, path)
    again = read_detox_jsonl(path)
    assert [r.to_dict() for r in again] == [r.to_dict() for r in records]
    with pytest.raises(DatasetError, match="unknown detox source"):
        build_detox_dataset(DATA, ["nope"])
    with pytest.raises(DatasetError, match="not found"):
        build_detox_dataset(tmp_path / "missing")


# ---------------------------------------------------------------- dedup, split, caps


def test_deduplicate_drops_repeats_and_caps_target_reuse():
    records = [
        _record("Q1?", "bad 1"),
        _record("q1?  ", "BAD 1"),  # same after normalisation
        _record("Q2?", "same text", target="same text"),  # target equals harmful answer
        *[_record(f"Q{i}?", f"bad {i}", target="I can't help.") for i in range(3, 8)],
    ]
    kept = deduplicate(records, max_target_reuse=3)
    assert [r.query for r in kept] == ["Q1?", "Q3?", "Q4?", "Q5?"]  # "I can't help." used 3 times


def test_split_never_puts_a_query_on_both_sides():
    # the same question appears under different groups (e.g. two sources): groups are merged by query
    records = [_record(f"question {i % 40}", f"answer {i}", group=f"src{i % 3}:{i}") for i in range(200)]
    train, val = split_detox(records, val_fraction=0.3, seed=1)
    assert train and val and len(train) + len(val) == len(records)
    assert not {r.query for r in train} & {r.query for r in val}
    merged = merge_query_groups(records)
    assert len({r.group for r in merged}) == 40


def test_cap_per_source_is_deterministic():
    records = [_record(f"a{i}?", source="a") for i in range(10)] + [_record(f"b{i}?", source="b") for i in range(3)]
    capped = cap_per_source(records, {"a": 4}, seed=0)
    assert sum(r.source == "a" for r in capped) == 4 and sum(r.source == "b" for r in capped) == 3
    assert capped == cap_per_source(records, {"a": 4}, seed=0)


def test_pairs_to_detox_category_needs_consistent_target():
    from mllm_protector.data.records import Pair

    pairs = [
        Pair("Which stock should I invest in?", "I'm not a financial advisor; consult a professional.", "Buy ACME.", "x", "g1"),
        Pair("Which stock should I invest in now?", "I can't help with that.", "Buy ACME.", "x", "g2"),
        Pair(None, "safe", "unsafe", "x", "g3"),
    ]
    records = pairs_to_detox(pairs)
    assert [r.category for r in records] == ["advice", "harm"]  # advice only with a disclaimer target


# ---------------------------------------------------------------- JSONL reader


def test_read_detox_jsonl_fixture():
    records = read_detox_jsonl(DETOX / "detox.jsonl")
    assert len(records) == 12
    assert {r.category for r in records} == {"harm", "advice", "political"}
    assert records[3].category == "advice"  # "11-Financial_Advice" → advice
    assert records[2].category == "harm"  # no category: inferred from the query


def test_read_detox_jsonl_malformed_names_file_and_line(tmp_path):
    path = DETOX / "detox_malformed.jsonl"
    with pytest.raises(DatasetError, match=r"detox_malformed\.jsonl, line 3: field 'target'"):
        read_detox_jsonl(path)
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"query": "q", "harmful": "h", "target": "t"}\n{not json\n')
    with pytest.raises(DatasetError, match=r"bad\.jsonl, line 2: invalid JSON"):
        read_detox_jsonl(bad)
    bad.write_text(json.dumps(["a list"]) + "\n")
    with pytest.raises(DatasetError, match="line 1: row must be dict"):
        read_detox_jsonl(bad)
    bad.write_text(json.dumps({"query": "q", "harmful": "h", "target": "t", "category": 3}) + "\n")
    with pytest.raises(DatasetError, match="line 1: field 'category' must be a string"):
        read_detox_jsonl(bad)
    with pytest.raises(DatasetError, match="not found"):
        read_detox_jsonl(tmp_path / "missing.jsonl")
