"""A tiny real detector training run: the loss goes down, the saved folder reloads and scores."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from mllm_protector import HarmDetector
from mllm_protector.data import load_corpus
from mllm_protector.train.detector import DetectorTrainingArguments, save_detector, split_corpus, train_detector

FIXTURE_DATA = Path(__file__).parent / "fixtures" / "data"


@pytest.mark.slow
def test_few_steps_lower_the_loss_and_save_a_loadable_detector(tmp_path):
    corpus = load_corpus(FIXTURE_DATA)
    train, pairs, val = split_corpus(corpus, 0.2, seed=0)
    assert train and pairs and {e.label for e in train} == {0, 1}
    args = DetectorTrainingArguments(
        output_dir=str(tmp_path / "ckpt"), max_steps=16, per_device_train_batch_size=8, learning_rate=2e-3,
        max_length=64, logging_steps=1, seed=0, truncation_augment=0.0,
    )
    detector, report = train_detector(args, train, pairs, val or train[:4], corpus.summary())
    losses = report["loss_history"]
    assert len(losses) == 16
    assert sum(losses[-4:]) / 4 < sum(losses[:4]) / 4
    save_detector(detector, tmp_path / "det", report)
    saved = json.loads((tmp_path / "det" / "detector_config.json").read_text())
    assert saved["backbone"] == "minilm-l6" and saved["training"]["data"]["examples"] == len(corpus.examples)
    again = HarmDetector.from_pretrained(tmp_path / "det")
    texts = [e.response for e in train[:3]]
    assert again.score(texts) == pytest.approx(detector.score(texts), abs=1e-5)
    # a second stage continues from the saved detector and records how the first stage was trained
    args.init_from, args.max_steps, args.output_dir = str(tmp_path / "det"), 2, str(tmp_path / "ckpt2")
    second, _ = train_detector(args, train, pairs, val or train[:4], corpus.summary())
    stage = second.config.training["init_from_training"]
    assert stage["arguments"]["max_steps"] == 16 and stage["train_examples"] == len(train)


def test_calibrate_rechooses_the_threshold_on_benign_fpr_and_keeps_the_weights(tmp_path, detector):
    import shutil

    from typer.testing import CliRunner

    from mllm_protector.cli import app
    from mllm_protector.config import PRETRAINED_DIR
    from mllm_protector.data.readers import BENIGN_SOURCES

    folder = tmp_path / "det"
    shutil.copytree(PRETRAINED_DIR / "detector-default", folder)
    weights = (folder / "adapter_model.safetensors").read_bytes()
    result = CliRunner().invoke(app, ["train", "calibrate", str(folder), "--data-dir", str(FIXTURE_DATA), "--max-fpr", "0.0"])
    assert result.exit_code == 0, result.output
    saved = json.loads((folder / "detector_config.json").read_text())
    calibration = saved["training"]["calibration"]
    assert calibration["max_fpr"] == 0.0 and calibration["threshold"] == saved["threshold"]
    assert calibration["command"].startswith("mllm-protector ")  # the invoking command line, for the model card
    assert (folder / "adapter_model.safetensors").read_bytes() == weights
    # the rule holds on the split it was chosen on: no benign (else no harmless) validation answer is flagged
    _, _, val = split_corpus(load_corpus(FIXTURE_DATA), 0.15, seed=0)
    benign = [e.response for e in val if e.source in BENIGN_SOURCES and e.label == 0]
    assert calibration["fpr_on"] == ("benign sources" if benign else "all harmless")
    benign = benign or [e.response for e in val if e.label == 0]
    again = HarmDetector.from_pretrained(folder, backend="torch")  # calibrate scores on torch; ONNX differs by ~1e-7
    assert benign and max(again.score(benign)) < again.threshold
    assert again.score(benign) == pytest.approx(detector.score(benign), abs=1e-6)
