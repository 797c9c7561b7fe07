"""HarmDetector with the shipped default: threshold sides, save/load, long-answer windowing."""

from __future__ import annotations

import pytest

from mllm_protector import HarmDetector
from mllm_protector.detector import DetectorConfig, encode_windows
from mllm_protector.errors import ModelNotFoundError, ProtectorError
from mllm_protector.models import load_tokenizer

from .conftest import BENIGN, HARMFUL


def test_default_separates_harmful_and_benign(detector):
    harmful, benign = detector.score([HARMFUL, BENIGN])
    assert 0.0 <= benign < detector.threshold <= harmful <= 1.0
    assert detector.is_harmful([HARMFUL, BENIGN]) == [True, False]


def test_save_load_roundtrip_gives_identical_scores(detector, tmp_path):
    detector.save_pretrained(tmp_path / "copy")
    again = HarmDetector.from_pretrained(tmp_path / "copy")
    assert again.config == detector.config
    assert again.score([HARMFUL, BENIGN]) == pytest.approx(detector.score([HARMFUL, BENIGN]), abs=1e-6)


def test_harm_after_the_first_window_is_caught(detector):
    filler = " ".join([BENIGN] * 12)  # several windows of harmless text before the harmful part
    long_answer = filler + " " + HARMFUL
    windows = detector.encode([long_answer])["input_ids"]
    assert len(windows) > 2
    first_window_only = detector.tokenizer.decode(windows[0], skip_special_tokens=True)
    assert detector.score([first_window_only])[0] < detector.threshold
    assert detector.score([long_answer])[0] >= detector.threshold


def test_windows_overlap_and_respect_max_length():
    tokenizer = load_tokenizer("minilm-l6")
    config = DetectorConfig(max_length=32, stride=8)
    text = " ".join(f"word{i}" for i in range(200))
    enc = encode_windows(tokenizer, config, [text, "short"])
    assert all(len(w) <= 32 for w in enc["input_ids"])
    assert enc["sample"].count(1) == 1 and enc["sample"].count(0) > 3
    first, second = enc["input_ids"][0][1:-1], enc["input_ids"][1][1:-1]
    assert first[-8:] == second[:8]  # consecutive windows share `stride` tokens


def test_query_prefix_in_every_window():
    tokenizer = load_tokenizer("minilm-l6")
    config = DetectorConfig(max_length=40, stride=8, input_format="query_response")
    enc = encode_windows(tokenizer, config, ["x " * 100], ["which colour"])
    prefix = tokenizer("Question: which colour", add_special_tokens=False)["input_ids"]
    assert len(enc["input_ids"]) > 1
    assert all(w[1 : 1 + len(prefix)] == prefix for w in enc["input_ids"])


def test_mismatched_queries_are_rejected(detector):
    with pytest.raises(ProtectorError, match="2 responses but 1 queries"):
        detector.score(["a", "b"], ["q"])


def test_unknown_detector_folder_has_clear_error(tmp_path):
    with pytest.raises(ModelNotFoundError, match="not a saved detector"):
        HarmDetector.from_pretrained(tmp_path)
