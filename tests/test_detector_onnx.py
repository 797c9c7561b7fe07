"""ONNX Runtime backend of the detector: export offline, same scores and categories as torch, cache reuse
and rebuild, backend selection, scoring without torch."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys

import pytest

from mllm_protector.config import PRETRAINED_DIR
from mllm_protector.detector import PRESETS, DetectorConfig, HarmDetector, encode_windows
from mllm_protector.errors import ProtectorError
from mllm_protector.models import load_tokenizer
from mllm_protector.onnx_backend import EXPORT_DIR, GRAPHS, META_NAME, OnnxTokenizer, choose_backend, find_export

from .conftest import BENIGN, HARMFUL

DEFAULT = PRETRAINED_DIR / PRESETS["default"]
LONG = " ".join([BENIGN] * 12) + " " + HARMFUL  # several windows, the harm in the last one
#: int8 scores move by up to ~0.2 on single answers (AUROC within 0.005: docs/results/detector_backends.md).
INT8_TOLERANCE = 0.1
ANSWERS = [HARMFUL, BENIGN, LONG, "Ｆｕｌｌ-ｗｉｄｔｈ text, café, 東京 and an emoji 😀."]


@pytest.fixture(scope="module")
def torch_detector() -> HarmDetector:
    return HarmDetector.from_pretrained("default", backend="torch")


@pytest.fixture(scope="module")
def exported(tmp_path_factory, torch_detector) -> HarmDetector:
    """The default's harm network without its category head, in a fresh folder, exported here (offline)."""
    folder = tmp_path_factory.mktemp("detector")
    for name in ("adapter_config.json", "adapter_model.safetensors"):
        shutil.copy2(DEFAULT / name, folder / name)
    config = DetectorConfig.read(DEFAULT)
    config.category_weights, config.inference = None, {}
    config.write(folder)
    return HarmDetector.from_pretrained(folder, backend="onnx")


def test_export_scores_as_torch_and_is_reused(exported, torch_detector):
    folder = exported.source
    assert folder is not None and exported.backend == "onnx"
    meta = json.loads((folder / EXPORT_DIR / META_NAME).read_text())
    assert meta["check"]["max_abs_diff"]["onnx"] <= 1e-4
    assert exported.score(ANSWERS) == pytest.approx(torch_detector.score(ANSWERS), abs=1e-4)
    graph = folder / EXPORT_DIR / GRAPHS["onnx"]
    before = graph.stat().st_mtime_ns
    again = HarmDetector.from_pretrained(folder, backend="onnx-int8")
    assert graph.stat().st_mtime_ns == before  # the second load read the export, it did not write a new one
    assert again.score(ANSWERS) == pytest.approx(torch_detector.score(ANSWERS), abs=INT8_TOLERANCE)


def test_stale_export_is_not_used(exported):
    folder = exported.source
    assert folder is not None
    config = DetectorConfig.read(folder)
    config.threshold = 0.4  # not part of the networks: the export stays valid
    assert find_export(folder, HarmDetector.fingerprint(folder, config)) == folder / EXPORT_DIR
    config.layers = [1, 2]  # shapes the networks: the export is stale
    assert find_export(folder, HarmDetector.fingerprint(folder, config)) is None


def test_fingerprint_follows_content_not_place(exported, tmp_path):
    folder = exported.source
    assert folder is not None
    for name in ("adapter_config.json", "adapter_model.safetensors"):
        shutil.copy(folder / name, tmp_path / name)  # a new place and new modification times
    config = DetectorConfig.read(folder)
    assert HarmDetector.fingerprint(tmp_path, config) == HarmDetector.fingerprint(folder, config)


def test_corrupt_export_is_rebuilt(exported, torch_detector):
    folder = exported.source
    assert folder is not None
    graph = folder / EXPORT_DIR / GRAPHS["onnx-int8"]
    graph.write_bytes(b"\0" * graph.stat().st_size)  # same size: only loading it can tell
    rebuilt = HarmDetector.from_pretrained(folder, backend="onnx-int8")
    assert graph.read_bytes()[:16] != b"\0" * 16
    assert rebuilt.score(ANSWERS) == pytest.approx(torch_detector.score(ANSWERS), abs=INT8_TOLERANCE)


@pytest.mark.parametrize("backend", ["onnx", "onnx-int8"])
def test_default_on_onnx_keeps_verdicts_and_categories(backend, torch_detector):
    detector = HarmDetector.from_pretrained("default", backend=backend)
    expected, found = torch_detector.detect(ANSWERS), detector.detect(ANSWERS)
    assert [d.score >= torch_detector.threshold for d in found] == [d.score >= torch_detector.threshold for d in expected]
    assert [d.category for d in found] == [d.category for d in expected]
    assert expected[0].category is not None  # the harmful answer is flagged and named


@pytest.mark.parametrize("backend", ["onnx", "onnx-int8"])
def test_an_answers_score_does_not_depend_on_the_batch(backend):
    """int8 sets activation scales per run: each window runs alone, so the company it is scored in, its
    padding and the batch size leave its score unchanged (exactly: the same single-threaded run)."""
    detector = HarmDetector.from_pretrained("default", backend=backend)
    together = detector.score(ANSWERS + [BENIGN[:40]], batch_size=8)
    in_pairs = [s for i in range(0, len(ANSWERS), 2) for s in detector.score(ANSWERS[i : i + 2] + [LONG], batch_size=2)[:2]]
    assert in_pairs == together[: len(ANSWERS)]
    alone = [detector.score([answer])[0] for answer in (HARMFUL, BENIGN)]  # a lone window runs on all cores
    assert alone == pytest.approx(together[:2], abs=1e-5)


def test_probe_detector_on_onnx_scores_as_torch():
    folder = PRETRAINED_DIR / "input-guard-probe"  # the shipped probe: frozen backbone, pooled layers, linear heads
    on_torch, on_onnx = (HarmDetector.from_pretrained(folder, backend=b) for b in ("torch", "onnx"))
    assert on_onnx.backend == "onnx"
    expected, found = on_torch.detect(ANSWERS), on_onnx.detect(ANSWERS)
    assert [d.score for d in found] == pytest.approx([d.score for d in expected], abs=1e-4)
    assert [d.category for d in found] == [d.category for d in expected]


def test_export_tokenizer_gives_the_same_windows():
    folder = find_export(DEFAULT, HarmDetector.fingerprint(DEFAULT, DetectorConfig.read(DEFAULT)))
    assert folder is not None
    light = OnnxTokenizer(folder / "tokenizer.json", pad_token_id=0)
    for input_format in ("response", "query_response"):
        config = DetectorConfig(max_length=48, stride=8, input_format=input_format)
        queries = ["Which colour is the bus?"] * len(ANSWERS)
        assert encode_windows(light, config, ANSWERS, queries) == encode_windows(load_tokenizer("minilm-l6"), config, ANSWERS, queries)


def test_auto_backend_follows_the_verified_record():
    def key() -> str:
        return "abc"

    assert choose_backend("auto", {"backend": "onnx-int8", "fingerprint": "abc"}, key, "cpu") == "onnx-int8"
    assert choose_backend("auto", {"backend": "onnx-int8", "fingerprint": "old"}, key, "cpu") == "onnx"
    assert choose_backend("auto", {"backend": "onnx-int8", "fingerprint": "abc"}, key, "cuda") == "torch"
    assert choose_backend("onnx", {}, key, "cuda") == "onnx"
    with pytest.raises(ProtectorError, match="unknown detector backend"):
        choose_backend("tensorrt", {}, key, "cpu")


def test_onnx_scoring_does_not_import_torch():
    code = ("import sys; from mllm_protector.detector import HarmDetector; "
            "d = HarmDetector.from_pretrained('default', backend='onnx-int8'); "
            f"print(d.score([{HARMFUL!r}])[0] > d.threshold, 'torch' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=True)
    assert out.stdout.split() == ["True", "False"]
