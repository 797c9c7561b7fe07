"""Probe detectors: features → heads → save/load round trip, LOSO threshold, categories, window combination."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest

from mllm_protector import HarmDetector
from mllm_protector.data import load_corpus
from mllm_protector.train.loso import Data, assign_folds, choose_transfer_threshold, loso_scores
from mllm_protector.train.probe import build_feature_cache, sample, train_probe

from .conftest import BENIGN, HARMFUL

FIXTURES = Path(__file__).parent / "fixtures" / "data"


@pytest.fixture(scope="module")
def cache(tmp_path_factory) -> Path:
    """Features of the fixture corpus (every source, real MiniLM backbone)."""
    folder = tmp_path_factory.mktemp("features")
    build_feature_cache(sample(load_corpus(FIXTURES).examples, 50, 0), folder, "minilm-l6", ["response"])
    return folder


def test_feature_cache_matches_examples(cache: Path) -> None:
    data = Data.load(cache)
    x = data.matrix(["response"])
    assert x.shape == (len(data.rows), 6 * 384) and np.isfinite(x).all()
    assert {"pku_saferlhf", "jailbreakbench", "vicuna80"} <= set(data.sources)


def test_loso_scores_every_row_with_a_head_that_never_saw_its_family(cache: Path) -> None:
    data = Data.load(cache)
    oof = loso_scores(data, ["response"], data.train_mask("all"), c=0.05)
    assert oof.shape == (len(data.rows),) and np.isfinite(oof).all()
    threshold = choose_transfer_threshold(data, oof)
    assert 0.0 < threshold < 1.0


def test_fold_groups_hold_out_whole_families(cache: Path) -> None:
    data = Data.load(cache)
    folds = assign_folds(data.families, 2)
    assert set(folds) == set(data.families) and set(folds.values()) == {0, 1}
    oof = loso_scores(data, ["response"], data.train_mask("all"), c=0.05, folds=2)
    assert oof.shape == (len(data.rows),) and np.isfinite(oof).all()


def test_train_save_load_roundtrip(cache: Path, tmp_path: Path) -> None:
    detector, report = train_probe(cache, "response", "all", 0.05, 128, 32, "max_corrected")
    assert report["loso"]["threshold"] == detector.threshold
    detector.save_pretrained(tmp_path / "probe")
    saved = json.loads((tmp_path / "probe" / "detector_config.json").read_text())
    assert saved["kind"] == "probe" and saved["categories"] and not (tmp_path / "probe" / "adapter_config.json").exists()
    assert (tmp_path / "probe" / "probe.safetensors").stat().st_size < 200_000  # heads only, no backbone
    again = HarmDetector.from_pretrained(tmp_path / "probe")
    texts = [HARMFUL, BENIGN]
    first, second = detector.detect(texts), again.detect(texts)
    assert [d.score for d in second] == pytest.approx([d.score for d in first], abs=1e-5)
    assert [d.category for d in second] == [d.category for d in first]
    assert all(d.category in saved["categories"] for d in second)


def test_max_corrected_discounts_the_number_of_windows(detector) -> None:
    long_answer = " ".join([BENIGN] * 12)
    detection = detector.detect([long_answer])[0]
    assert len(detection.window_scores) > 2
    top = max(detection.window_scores)
    logit = math.log(top / (1 - top))
    expected = logit - math.log(len(detection.window_scores)) if detector.config.combine == "max_corrected" else logit
    assert detection.score == pytest.approx(1 / (1 + math.exp(-expected)), rel=1e-6)


def test_train_probe_refuses_a_cache_of_another_backbone(cache: Path, tmp_path: Path) -> None:
    from typer.testing import CliRunner

    from mllm_protector.cli import app

    result = CliRunner().invoke(app, ["train", "probe", "-o", str(tmp_path / "p"), "--features", str(cache),
                                      "--backbone", "smollm2-135m-instruct", "--variant", "response"])
    flat = " ".join(result.output.replace("│", " ").split())  # rich wraps the message in a box
    assert result.exit_code == 2 and "holds minilm-l6 features, not smollm2-135m-instruct" in flat
    assert not (tmp_path / "p").exists()
