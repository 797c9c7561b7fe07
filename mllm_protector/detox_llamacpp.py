"""The local LM detoxifier on llama.cpp: the bundled GGUF base with the trained LoRA merged in, run in process.

The bundled Q4_1 GGUF is dequantized (the very weights `LMDetoxifier` loads), the peft LoRA is merged in and the
result is written once as an F16 GGUF (cached under the cache dir, keyed by the adapter's hash). With the
prompt token ids and greedy decoding of the transformers path, outputs match it token for token (all 20 held-out
answers of docs/results/detox_llamacpp.md) at a fraction of the latency; F16 was both closer and faster on CPU
than running the Q4_1 base with a GGUF LoRA adapter (llama.cpp quantizes activations to 8 bits for Q4_1 products).
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import os
import threading
from functools import cached_property
from pathlib import Path
from typing import Any

from .config import cache_dir
from .detoxifier import DEFAULT_DETOX_MODEL, LocalDetoxifier, resolve_adapter
from .errors import InputError, ModelNotFoundError, ProtectorError
from .models import bundled_gguf, load_tokenizer

#: Bumped when the conversion changes, so GGUFs written by an older converter are rebuilt.
CONVERTER_VERSION = 1
#: Environment override of the llama.cpp thread count (default: the physical cores).
ENV_THREADS = "MLLM_PROTECTOR_DETOX_THREADS"

#: peft adapter options a plain merge W + (alpha / r) B A does not express.
_UNSUPPORTED = ("use_dora", "use_rslora", "modules_to_save", "rank_pattern", "alpha_pattern", "lora_bias")
#: Metadata the writer sets itself, or that no longer holds once the tensors are F16.
_SKIPPED_KEYS = ("general.architecture", "general.file_type", "general.quantization_version")


def llamacpp_available(model: str = DEFAULT_DETOX_MODEL) -> bool:
    """True when `llama_cpp` is installed and `model` ships a GGUF base for it to run."""
    return importlib.util.find_spec("llama_cpp") is not None and bundled_gguf(model) is not None


def default_threads() -> int:
    """`MLLM_PROTECTOR_DETOX_THREADS`, else the physical cores this process may use less one (at least one).

    SMT siblings add nothing, and llama.cpp's threads spin-wait for each other: when the detector or the
    server takes a core, a rewrite on every core stalls (p50 18 s against 2.0 s on 1 thread on a 2-core box,
    docs/results/detox_llamacpp.md), so one core is left to the rest of the process.
    """
    import psutil

    value = os.environ.get(ENV_THREADS, "")
    if value:
        if not value.isdigit() or int(value) < 1:
            raise InputError(f"{ENV_THREADS} must be a positive whole number of threads, got {value!r}")
        return int(value)
    usable = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    return max(1, min(usable, psutil.cpu_count(logical=False) or usable) - 1)


def _permute_rows(weight: Any, n_head: int) -> Any:
    """llama.cpp's row order for a q/k projection (rotary pairs interleaved per head), as its converter writes it."""
    return weight.reshape(n_head, 2, weight.shape[0] // n_head // 2, *weight.shape[1:]).swapaxes(1, 2).reshape(weight.shape)


def _field(reader: Any, key: str) -> Any:
    """One metadata value of a GGUF file; a clear error when the key is missing."""
    field = reader.fields.get(key)
    if field is None:
        raise ModelNotFoundError(f"GGUF base lacks '{key}'; it cannot be converted for the detoxifier")
    return field.contents()


def lora_deltas(adapter: Path, reader: Any) -> dict[str, Any]:
    """(alpha / r) B A of every module of a peft LoRA adapter, keyed by the base GGUF tensor it updates (llama.cpp
    names and q/k row order)."""
    import gguf
    import numpy as np
    from safetensors.numpy import load_file

    config = json.loads((adapter / "adapter_config.json").read_text())
    used = [key for key in _UNSUPPORTED if config.get(key)]
    if config.get("peft_type") != "LORA" or config.get("bias", "none") != "none" or used:
        raise ProtectorError(f"adapter {adapter} uses {used or 'a non-LoRA or bias setting'}, which the llama.cpp "
                             "detoxifier cannot merge; use --detoxifier transformers")
    heads = {"attn_q": _field(reader, "llama.attention.head_count"), "attn_k": _field(reader, "llama.attention.head_count_kv")}
    names = gguf.get_tensor_name_map(gguf.MODEL_ARCH.LLAMA, _field(reader, "llama.block_count"))
    base_tensors = {tensor.name for tensor in reader.tensors}
    weights = load_file(adapter / "adapter_model.safetensors")
    modules = sorted(key.removesuffix(".lora_A.weight") for key in weights if key.endswith(".lora_A.weight"))
    if 2 * len(modules) != len(weights):
        raise ProtectorError(f"adapter {adapter} holds tensors other than lora_A/lora_B pairs; use --detoxifier transformers")
    scale = config["lora_alpha"] / config["r"]
    deltas = {}
    for module in modules:
        name = names.get_name(module.removeprefix("base_model.model.") + ".weight", try_suffixes=(".weight",))
        if name is None or name not in base_tensors:
            raise ProtectorError(f"adapter module '{module}' has no tensor in the GGUF base")
        lora_b = weights[f"{module}.lora_B.weight"].astype(np.float32)
        kind = name.split(".")[2]
        if kind in heads:
            lora_b = _permute_rows(lora_b, heads[kind])
        deltas[name] = scale * (lora_b @ weights[f"{module}.lora_A.weight"].astype(np.float32))
    return deltas


def write_merged_gguf(base: Path, adapter: Path | None, out: Path) -> None:
    """An F16 GGUF of `base` (dequantized) with the LoRA `adapter` merged in; metadata and tokenizer copied."""
    import gguf
    import numpy as np

    reader = gguf.GGUFReader(base)
    arch = _field(reader, "general.architecture")
    if arch != "llama":
        raise ProtectorError(f"GGUF base {base.name} is '{arch}'; only llama-architecture bases are converted")
    deltas = lora_deltas(adapter, reader) if adapter is not None else {}
    writer = gguf.GGUFWriter(out, arch)
    for key, field in reader.fields.items():
        if not key.startswith("GGUF.") and key not in _SKIPPED_KEYS:
            kind = field.types[0]
            writer.add_key_value(key, field.contents(), kind, sub_type=field.types[-1] if kind == gguf.GGUFValueType.ARRAY else None)
    writer.add_file_type(gguf.LlamaFileType.MOSTLY_F16)
    for tensor in reader.tensors:
        weight = gguf.dequantize(tensor.data, tensor.tensor_type).reshape([int(n) for n in reversed(tensor.shape)])
        if tensor.name in deltas:
            weight = weight + deltas[tensor.name]
        writer.add_tensor(tensor.name, weight.astype(np.float16) if weight.ndim > 1 else weight.astype(np.float32))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()


def merge_key(base: Path, adapter: Path | None) -> str:
    """Cache key of a merged GGUF: the adapter files' bytes, the base file's name and size, the converter version."""
    digest = hashlib.sha256(f"{CONVERTER_VERSION}\0{base.name}\0{base.stat().st_size}".encode())
    files = [adapter / "adapter_config.json", adapter / "adapter_model.safetensors"] if adapter is not None else []
    for path in files:
        digest.update(path.read_bytes())
    return digest.hexdigest()[:16]


def merged_gguf(base: Path, adapter: Path | None) -> Path:
    """The cached merged F16 GGUF for (`base`, `adapter`), written on first use and again when the adapter changed
    (the stale one of the same base and adapter name is removed)."""
    stem = f"{base.stem}-{adapter.name if adapter is not None else 'base'}"
    target = cache_dir() / "gguf" / f"{stem}-{merge_key(base, adapter)}.f16.gguf"
    if not target.is_file():
        target.parent.mkdir(parents=True, exist_ok=True)
        tmp = target.with_name(f"{target.name}.{os.getpid()}.tmp")
        write_merged_gguf(base, adapter, tmp)
        for stale in target.parent.glob(f"{stem}-{'[0-9a-f]' * 16}.f16.gguf"):
            if stale != target:
                stale.unlink(missing_ok=True)
        tmp.replace(target)
    return target


class LlamaCppDetoxifier(LocalDetoxifier):
    """The bundled GGUF LM with its LoRA merged, on llama.cpp in this process: same prompt and greedy decoding as
    `LMDetoxifier`, several times faster on CPU."""

    def __init__(
        self,
        model: str = DEFAULT_DETOX_MODEL,
        adapter: str | os.PathLike[str] | bool | None = None,
        max_new_tokens: int = 160,
        n_ctx: int = 4096,
        n_threads: int | None = None,
    ):
        from llama_cpp import Llama

        base = bundled_gguf(model)
        if base is None:
            raise ModelNotFoundError(f"no bundled GGUF for detoxifier model '{model}' (llama.cpp runs the bundled "
                                     f"{DEFAULT_DETOX_MODEL}); use --detoxifier transformers")
        self.model = model
        self.adapter = resolve_adapter(model, adapter)
        self.gguf = merged_gguf(base, Path(self.adapter) if self.adapter else None)
        self.max_new_tokens = max_new_tokens
        threads = n_threads or default_threads()
        try:
            self.llm = Llama(str(self.gguf), n_ctx=n_ctx, n_threads=threads, n_threads_batch=threads, verbose=False)
        except ValueError as exc:  # llama-cpp-python's way of saying the model failed to load
            raise ProtectorError(f"llama.cpp cannot load {self.gguf}: {exc}") from exc
        self.eos = self.llm.token_eos()
        self._lock = threading.Lock()  # one llama.cpp context: one generation at a time

    @cached_property
    def tokenizer(self) -> Any:
        """The model's HF tokenizer (chat template, decoding), loaded by the first rewrite: it imports
        transformers, which a process that never detoxifies (a `protect` run of benign answers) should not pay for."""
        return load_tokenizer(self.model)

    def generate_ids(self, prompt: list[int]) -> list[int]:
        """Greedy continuation of `prompt` (temperature 0, no penalties), without the end-of-sequence token."""
        if len(prompt) + self.max_new_tokens > self.llm.n_ctx():
            raise InputError(f"detoxifier prompt of {len(prompt)} tokens + {self.max_new_tokens} new tokens exceeds "
                             f"the llama.cpp context of {self.llm.n_ctx()}; shorten the query or raise n_ctx")
        out: list[int] = []
        with self._lock:
            for token in self.llm.generate(prompt, temp=0.0, repeat_penalty=1.0):
                if token == self.eos:
                    break
                out.append(token)
                if len(out) == self.max_new_tokens:
                    break
        return out
