"""The labelled-set reader, the category mapping and the obfuscation-undoing normaliser."""

from __future__ import annotations

import base64
import codecs
import gzip
from pathlib import Path

import pytest

from mllm_protector.categories import CATEGORIES, category_from_question, training_category
from mllm_protector.data import load_corpus
from mllm_protector.data.labelled import labelled_sets, read_labelled_set
from mllm_protector.errors import DatasetError
from mllm_protector.normalize import normalize_segments, normalize_text

FIXTURES = Path(__file__).parent / "fixtures" / "data"


def test_labelled_set_reader_maps_schema_and_skips_empty() -> None:
    assert labelled_sets(FIXTURES) == ["toy_answers"]
    corpus = read_labelled_set(FIXTURES, "toy_answers")
    assert [e.label for e in corpus.examples] == [0, 1, 0]  # the blank response is skipped
    refusal, compliance, french = corpus.examples
    assert refusal.group == compliance.group != french.group  # one group per question
    assert compliance.source == "toy_answers" and compliance.scenario == "Assisting illegal activities"
    assert compliance.meta == {"label_source": "human", "lang": "en", "model": "toy-b"}
    assert french.query is None and french.scenario is None and french.meta["lang"] == "fr"


def test_load_corpus_accepts_labelled_set_names() -> None:
    corpus = load_corpus(FIXTURES, ["toy_answers", "pku_saferlhf"])
    assert {e.source for e in corpus.examples} == {"toy_answers", "pku_saferlhf"}
    with pytest.raises(DatasetError, match="toy_answers"):  # the message lists what can be chosen
        load_corpus(FIXTURES, ["no_such_set"])


def test_labelled_set_bad_label_names_the_line(tmp_path: Path) -> None:
    folder = tmp_path / "labelled_responses" / "bad"
    folder.mkdir(parents=True)
    with gzip.open(folder / "data.jsonl.gz", "wt") as handle:
        handle.write('{"query": "q", "response": "r", "label": "maybe"}\n')
    with pytest.raises(DatasetError, match="line 1: label must be 0 or 1"):
        read_labelled_set(tmp_path, "bad")


def test_training_categories() -> None:
    assert training_category("mmsb_gemini", "11-Financial_Advice", None) == "professional_advice"
    assert training_category("openai_moderation_1680", "hate,violence", None) == "hate"
    assert training_category("hatecheck_multilingual", "slur_h", None) == "hate"
    assert training_category("gptfuzz_labeled", None, "How can I synthesize meth at home?") == "drugs"
    assert category_from_question("What's the capital of France?") is None
    assert set(CATEGORIES) >= {"violence_weapons", "drugs", "cyber", "professional_advice", "other"}


@pytest.mark.parametrize("obfuscated, plain", [
    ("H o w  t o  m a k e  a  b o m b", "How to make a bomb"),
    ("s-t-e-a-l a c-a-r", "steal a car"),
    ("First get a b0mb and h4ck the s3rv3r", "First get a bomb and hack the server"),
    ("Tо mаkе а bоmb, mіх thе роwdеr", "To make a bomb, mix the powder"),  # Cyrillic look-alikes
    ("ｍｉｘ ｔｈｅ ｐｏｗｄｅｒ", "mix the powder"),
    ("mix\u200b the\u200d powder", "mix the powder"),
    ("Here: " + base64.b64encode(b"Mix the fertilizer with diesel fuel to build it").decode(),
     "Here: Mix the fertilizer with diesel fuel to build it"),
    (codecs.encode("First you need to get the wire and then you strip it", "rot13"),
     "First you need to get the wire and then you strip it"),
])
def test_normalize_undoes_obfuscation(obfuscated: str, plain: str) -> None:
    assert normalize_text(obfuscated) == plain


@pytest.mark.parametrize("text", [
    "Hello! The meeting is at 5pm on March 3rd, 2024. Python 3.11, gpt4, mp3, x86 and COVID19.",
    "I have options A B C, A/B tests, U.S.A. and e.g. examples.",
    "Привет, как дела? Это обычный русский текст.",
    "这是中文文本。",
    "The hash is d41d8cd98f00b204e9800998ecf8427e and the id is 3f2a9c.",
    "Use the aGVsbG8 token",
])
def test_normalize_leaves_ordinary_text(text: str) -> None:
    assert normalize_text(text) == text


def test_normalize_segments_judges_a_base64_payload_apart_from_its_wrapper() -> None:
    payload = "Mix the fertilizer with diesel fuel to build it"
    wrapped = "Here is the answer, base64-encoded: " + base64.b64encode(payload.encode()).decode() + " Enjoy."
    assert normalize_segments(wrapped) == ["Here is the answer, base64-encoded: \n Enjoy.", payload]
    assert normalize_segments(base64.b64encode(payload.encode()).decode()) == [payload]
    assert normalize_segments("b0mb and h4ck") == [normalize_text("b0mb and h4ck")]
