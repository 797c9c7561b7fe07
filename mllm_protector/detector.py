"""HarmDetector: a pretrained LM with a one-output linear head that scores P(harmful) of a response.

Two kinds share one interface. A "classifier" is the MLLM-Protector design: any Hugging Face model
loaded with `AutoModelForSequenceClassification(num_labels=1)`, fine-tuned (optionally with LoRA). A
"probe" keeps the backbone frozen and trains linear heads on its pooled hidden states (`probe.py`),
which generalises better to sources it never saw. Unlike the original (whose sigmoid is P(safe)),
`sigmoid(logit)` here is P(harmful). Text is normalised first (`normalize.py`: obfuscations undone);
long responses are scored over overlapping token windows, combined by the max (optionally discounted
by the number of windows), so harm late in an answer is not truncated away.

Detectors run on ONNX Runtime by default (`onnx_backend.py`: exported once, no torch at inference);
GPUs and training use torch.
"""

from __future__ import annotations

import functools
import json
import logging
import math
import os
import shutil
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any, Literal

from .config import ENV_BACKEND, PRETRAINED_DIR
from .errors import ModelNotFoundError, ProtectorError
from .models import load_model, load_tokenizer
from .normalize import normalize_segments, normalize_text
from .onnx_backend import Backend

logger = logging.getLogger(__name__)

CONFIG_NAME = "detector_config.json"
InputFormat = Literal["response", "query_response"]
Combine = Literal["max", "max_corrected"]
#: Shipped presets: short names for folders under `mllm_protector/pretrained/`.
PRESETS = {"default": "detector-default"}
#: How many query tokens at most precede each response window in the query_response format.
MAX_QUERY_TOKENS = 64


@dataclass
class DetectorConfig:
    """What a saved detector needs to be rebuilt and used exactly as trained (saved as JSON).

    `kind` is "classifier" (fine-tuned sequence classifier, LoRA or full) or "probe" (frozen backbone,
    trained heads on the mean-pooled hidden states of `layers`; `categories` names the category head's
    outputs). A classifier may carry a category probe on its untuned backbone (`category_weights`, a
    file in the detector folder), run only on the most harmful window of flagged answers. `normalize` undoes obfuscations before scoring; `combine` turns window logits into one:
    "max", or "max_corrected" (max minus log(number of windows), so a long benign answer is not flagged
    more often than a short one just for having more windows).
    """

    backbone: str = "minilm-l6"
    threshold: float = 0.5
    max_length: int = 256
    stride: int = 64
    input_format: InputFormat = "response"
    lora: bool = True
    kind: Literal["classifier", "probe"] = "classifier"
    layers: list[int] = field(default_factory=list)
    categories: list[str] = field(default_factory=list)
    category_weights: str | None = None
    normalize: bool = True
    combine: Combine = "max"
    label_convention: str = "sigmoid(logit) = P(harmful); 1 = harmful, 0 = harmless"
    training: dict[str, Any] = field(default_factory=dict)
    metrics: dict[str, Any] = field(default_factory=dict)
    #: The fastest backend measured within tolerance of torch fp32 for the export with this `fingerprint`
    #: (written by `benchmarks/detector_backends.py --record`); `backend="auto"` follows it.
    inference: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> DetectorConfig:
        """Build from JSON, ignoring unknown keys so newer files still load."""
        known = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in data.items() if k in known})

    @classmethod
    def read(cls, folder: str | os.PathLike[str]) -> DetectorConfig:
        """The config saved in a detector folder."""
        return cls.from_dict(json.loads((Path(folder) / CONFIG_NAME).read_text()))

    def write(self, folder: str | os.PathLike[str]) -> None:
        """Save as the folder's `detector_config.json`."""
        (Path(folder) / CONFIG_NAME).write_text(json.dumps(asdict(self), indent=2) + "\n")


def _prepare_backbone(model: Any, tokenizer: Any) -> None:
    """Decoders (LLaMA, SmolLM2) need a pad id so the head reads the last real token, as the original."""
    if model.config.pad_token_id is None:
        model.config.pad_token_id = tokenizer.pad_token_id


def build_classifier(backbone: str, lora: bool, lora_r: int = 16, lora_alpha: int = 32) -> tuple[Any, Any]:
    """Fresh (untrained head) classifier + tokenizer for training; with LoRA the head stays trainable."""
    from transformers import AutoModelForSequenceClassification

    tokenizer = load_tokenizer(backbone)
    model = load_model(backbone, AutoModelForSequenceClassification, num_labels=1)
    _prepare_backbone(model, tokenizer)
    if lora:
        model = _wrap_lora(model, lora_r, lora_alpha)
    return model, tokenizer


def load_trainable(path: str | os.PathLike[str]) -> tuple[Any, Any, DetectorConfig]:
    """A saved LoRA detector as a trainable PEFT model + tokenizer + its config, to continue training."""
    config = DetectorConfig.read(path)
    if not (Path(path) / "adapter_config.json").is_file():
        raise ModelNotFoundError(f"{path} holds no LoRA adapter to continue training from")
    tokenizer = load_tokenizer(config.backbone)
    return _load_adapter(path, config, tokenizer, trainable=True), tokenizer, config


def _load_adapter(path: str | os.PathLike[str], config: DetectorConfig, tokenizer: Any, trainable: bool) -> Any:
    """Backbone + the saved LoRA adapter and head in `path`: trainable PEFT model, or merged for inference."""
    from peft import PeftModel
    from transformers import AutoModelForSequenceClassification

    base = load_model(config.backbone, AutoModelForSequenceClassification, quiet_new_head=True, num_labels=1)
    _prepare_backbone(base, tokenizer)
    model = PeftModel.from_pretrained(base, str(path), is_trainable=trainable)
    return model if trainable else model.merge_and_unload()


def _wrap_lora(model: Any, r: int, alpha: int) -> Any:
    """LoRA on every linear layer of the backbone; the one-output head is trained fully and saved."""
    from peft import LoraConfig, TaskType, get_peft_model

    head = [n for n in ("classifier", "score") if hasattr(model, n)]
    config = LoraConfig(
        task_type=TaskType.SEQ_CLS,
        r=r,
        lora_alpha=alpha,
        lora_dropout=0.05,
        target_modules="all-linear",
        exclude_modules=head,
        modules_to_save=head,
    )
    return get_peft_model(model, config)


def _windows(n: int, size: int, stride: int) -> list[tuple[int, int]]:
    """Token ranges [start, end) of windows of `size` over `n` tokens, overlapping by `stride`; at least one."""
    if n <= size:
        return [(0, n)]
    step = max(1, size - stride)
    return [(s, min(s + size, n)) for s in range(0, max(1, n - stride), step)]


def special_tokens(tokenizer: Any) -> tuple[list[int], list[int]]:
    """Token ids the tokenizer puts before and after one sequence (e.g. [CLS] and [SEP] for BERT)."""
    inner = tokenizer("a", add_special_tokens=False)["input_ids"]
    outer = tokenizer("a", add_special_tokens=True)["input_ids"]
    for start in range(len(outer) - len(inner) + 1):
        if outer[start : start + len(inner)] == inner:
            return outer[:start], outer[start + len(inner) :]
    return [], []


def encode_windows(
    tokenizer: Any,
    config: DetectorConfig,
    responses: Sequence[str],
    queries: Sequence[str | None] | None = None,
    max_windows: int | None = None,
) -> dict[str, list]:
    """Tokenize responses (with a short query prefix in `query_response` format) into model windows.

    Returns `input_ids` (one list per window), `sample` (the response index of each window), `parts`
    (per response, the normalised texts that were windowed) and `spans` (per window, `(part, start, end)`:
    the characters of that part it covers; empty for tokenizers without offsets). `max_windows` keeps
    only the first windows of each response (training uses 1).
    """
    if queries is not None and len(queries) != len(responses):
        raise ProtectorError(f"got {len(responses)} responses but {len(queries)} queries")
    use_query = config.input_format == "query_response"
    # A response is one or more parts (decoded base64 payloads apart from their wrapper), windowed apart.
    parts: list[list[str]] = [normalize_segments(r or "") if config.normalize else [r or ""] for r in responses]
    if config.normalize and queries is not None:
        queries = [normalize_text(q) if q else q for q in queries]
    head, tail = special_tokens(tokenizer)
    answer_ids = tokenizer("\nAnswer: ", add_special_tokens=False)["input_ids"] if use_query else []
    windows: list[list[int]] = []
    sample: list[int] = []
    spans: list[tuple[int, int, int]] = []
    for i, response_parts in enumerate(parts):
        prefix: list[int] = []
        if use_query:
            query = (queries[i] if queries is not None else None) or ""
            prefix = tokenizer(f"Question: {query}", add_special_tokens=False, verbose=False)["input_ids"][:MAX_QUERY_TOKENS] + answer_ids
        chunks: list[tuple[list[int], tuple[int, int, int]]] = []
        for p, part in enumerate(response_parts):
            # Whole texts are tokenized and windowed here, so the "longer than the model maximum" warning is noise.
            enc = tokenizer(part, add_special_tokens=False, verbose=False, return_offsets_mapping=tokenizer.is_fast)
            body, offsets = enc["input_ids"], enc.get("offset_mapping")
            for s, e in _windows(len(body), config.max_length - len(prefix) - len(head) - len(tail), config.stride):
                span = (p, offsets[s][0], offsets[e - 1][1]) if offsets and e > s else (p, 0, 0)
                chunks.append((body[s:e], span))
        for chunk, span in chunks[:max_windows]:
            windows.append(head + prefix + chunk + tail)
            sample.append(i)
            spans.append(span)
    return {"input_ids": windows, "sample": sample, "parts": parts, "spans": spans if tokenizer.is_fast else []}


def length_sorted(windows: list[list[int]], batch_size: int) -> Iterator[list[int]]:
    """Indices of `windows` in batches of similar length, so padded batches carry little padding."""
    order = sorted(range(len(windows)), key=lambda j: len(windows[j]))
    for start in range(0, len(order), batch_size):
        yield order[start : start + batch_size]


def padded_batches(tokenizer: Any, windows: list[list[int]], batch_size: int) -> Iterator[tuple[list[int], Any]]:
    """(window indices, padded torch batch) over `windows` in length-sorted batches."""
    for idx in length_sorted(windows, batch_size):
        yield idx, tokenizer.pad({"input_ids": [windows[j] for j in idx]}, return_tensors="pt")


def _graph_settings(config: DetectorConfig) -> dict[str, Any]:
    """The config fields that shape a detector's networks (what an ONNX export depends on besides weights)."""
    return {k: getattr(config, k) for k in ("backbone", "kind", "lora", "layers", "categories", "category_weights")}


@dataclass
class Detection:
    """One response's result: P(harmful), the harm category (probe detectors with a category head),
    P(harmful) of each token window, in order (long answers have several), and where each window lies:
    `window_spans[k]` = (part, start, end) characters of `parts[part]`, the normalised text(s) scored."""

    score: float
    category: str | None = None
    window_scores: list[float] = field(default_factory=list)
    window_spans: list[tuple[int, int, int]] = field(default_factory=list)
    parts: list[str] = field(default_factory=list)


class HarmDetector:
    """Scores responses with P(harmful) in [0, 1]; `is_harmful` applies the calibrated threshold.

    `model` and `category_model` are torch modules, or ONNX Runtime networks (`onnx_backend.OnnxNetwork`,
    inference only) when `backend` names an ONNX backend; `source` is the folder a detector was loaded from.
    """

    def __init__(self, model: Any, tokenizer: Any, config: DetectorConfig, device: str | None = None,
                 category_model: Any = None, backend: Backend = "torch"):
        self.model = model
        self.tokenizer = tokenizer
        self.config = config
        self.category_model = category_model
        self.backend = backend
        self.source: Path | None = None
        self.device: Any = "cpu"
        if backend == "torch":
            import torch

            self.device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
            self.model.to(self.device).eval()
            if category_model is not None:
                category_model.to(self.device).eval()

    @property
    def threshold(self) -> float:
        """Decision threshold on P(harmful), chosen on validation data when the model was trained."""
        return self.config.threshold

    @classmethod
    def from_pretrained(cls, name_or_path: str | os.PathLike[str] = "default", device: str | None = None,
                        backend: Backend | None = None) -> HarmDetector:
        """Load a saved detector folder, or a shipped preset name (`default`), on a backend.

        `backend`: "torch", "onnx" (ONNX Runtime fp32), "onnx-int8" (int8 weights), or "auto" (default, or
        `MLLM_PROTECTOR_BACKEND`): the backend a benchmark recorded in the config for these weights (the
        fastest within 0.005 AUROC of torch fp32 that changes no validation verdict), else "onnx" (the export
        reproduces torch's scores); torch on a GPU, when onnxruntime is not installed, or when the export
        fails (a backbone the tracer cannot handle).
        """
        from .onnx_backend import choose_backend

        path = Path(PRETRAINED_DIR / PRESETS[str(name_or_path)]) if str(name_or_path) in PRESETS else Path(name_or_path)
        config_file = path / CONFIG_NAME
        if not config_file.is_file():
            raise ModelNotFoundError(
                f"'{name_or_path}' is not a saved detector: {config_file} does not exist "
                f"(shipped presets: {', '.join(PRESETS)}; or train one with `mllm-protector train detector`)"
            )
        config = DetectorConfig.read(path)
        requested = backend or os.environ.get(ENV_BACKEND, "auto")
        key = functools.cache(lambda: cls.fingerprint(path, config))  # hashes weight files: once per load
        chosen = choose_backend(requested, config.inference, key, device)
        detector = None
        if chosen != "torch":
            try:
                detector = cls._load_onnx(path, config, chosen, key())
            except ProtectorError as exc:
                if requested != "auto":
                    raise
                logger.warning("ONNX Runtime path unavailable, using torch: %s", exc)
        detector = detector or cls._load_torch(path, config, device)
        detector.source = path
        return detector

    @staticmethod
    def fingerprint(path: Path, config: DetectorConfig) -> str:
        """Fingerprint of the ONNX export of the detector in `path` (weights, graph settings, backbone)."""
        from .models import resolve_model
        from .onnx_backend import fingerprint

        backbone = Path(resolve_model(config.backbone))
        return fingerprint(path, _graph_settings(config), backbone if backbone.is_dir() else None)

    @classmethod
    def _load_onnx(cls, path: Path, config: DetectorConfig, backend: Backend, key: str) -> HarmDetector:
        """The detector on ONNX Runtime from its cached export (fingerprint `key`), exported first when missing,
        stale or unreadable."""
        from .onnx_backend import find_export, load_export

        folder = find_export(path, key)
        if folder is not None:
            try:
                network, category_network, tokenizer = load_export(folder, backend)
            except ProtectorError as exc:
                logger.warning("rebuilding the ONNX export in %s: %s", folder, exc)
            else:
                return cls(network, tokenizer, config, category_model=category_network, backend=backend)
        network, category_network, tokenizer = load_export(cls._export(path, config, key), backend)
        return cls(network, tokenizer, config, category_model=category_network, backend=backend)

    @classmethod
    def _export(cls, path: Path, config: DetectorConfig, key: str) -> Path:
        """Export the torch detector in `path` to ONNX (once, tens of seconds) and return the export folder."""
        try:
            from .onnx_export import CHECK_TEXTS, export_detector
        except ImportError as exc:
            raise ProtectorError(f"the ONNX backend needs onnxruntime and onnx: pip install 'mllm-protector[onnx]' ({exc})") from exc
        from .onnx_backend import EXPORT_FORMAT, export_target, publish, staged

        target = export_target(path, key)
        logger.warning("exporting detector %s to ONNX in %s (one time)", path, target)
        source = cls._load_torch(path, config, "cpu")
        with staged(target) as staging:
            meta = export_detector(staging, source.model, source.category_model, source.tokenizer,
                                   source.encode(CHECK_TEXTS)["input_ids"])
            publish(staging, target, {"format": EXPORT_FORMAT, "fingerprint": key, **meta})
        return target

    @classmethod
    def _load_torch(cls, path: Path, config: DetectorConfig, device: str | None) -> HarmDetector:
        """The detector on torch: backbone + LoRA merged, full model, or probe; with its category probe."""
        from transformers import AutoModelForSequenceClassification

        tokenizer = load_tokenizer(config.backbone)
        if config.kind == "probe":
            from .probe import build_probe

            model = build_probe(config.backbone, config.layers, len(config.categories))
            model.load_heads(path)
        elif (path / "adapter_config.json").is_file():
            model = _load_adapter(path, config, tokenizer, trainable=False)
        else:
            model = load_model(str(path), AutoModelForSequenceClassification, num_labels=1)
            _prepare_backbone(model, tokenizer)
        category_model = None
        if config.kind == "classifier" and config.category_weights:
            from .probe import build_probe

            category_model = build_probe(config.backbone, config.layers, len(config.categories))
            category_model.load_heads(path, config.category_weights)
        return cls(model, tokenizer, config, device, category_model)

    def save_pretrained(self, path: str | os.PathLike[str]) -> None:
        """Write weights (LoRA adapter + head, or full model) and the JSON config into `path`.

        An ONNX-backed detector holds no torch weights: it copies the folder it was loaded from (its ONNX
        export included, still valid for the copy) and writes its current config.
        """
        path = Path(path)
        if self.backend != "torch":
            if self.source is None:
                raise ProtectorError("this ONNX-backed detector was not loaded from a folder: save it from backend='torch'")
            if path.resolve() != self.source.resolve():
                shutil.copytree(self.source, path, dirs_exist_ok=True)
            self.save_config(path)
            return
        path.mkdir(parents=True, exist_ok=True)
        # The vocabulary is never resized, so embeddings stay out of an adapter (and peft need not look them up).
        # Keyed on the model itself: a LoRA detector loaded for inference is merged, a plain transformers model.
        if self.config.kind == "probe":
            self.model.save(path)  # the heads only: the backbone is the public checkpoint named in the config
        else:
            extra = {"save_embedding_layers": False} if hasattr(self.model, "peft_config") else {}
            self.model.save_pretrained(str(path), **extra)
        if self.category_model is not None and self.config.category_weights:
            self.category_model.save(path, self.config.category_weights)
        self.save_config(path)

    def save_config(self, path: str | os.PathLike[str]) -> None:
        """Write only the JSON config (threshold, metrics, training summary), e.g. after recalibration."""
        self.config.write(path)

    def encode(self, responses: Sequence[str], queries: Sequence[str | None] | None = None) -> dict[str, Any]:
        """Token windows for scoring; `sample` maps each window back to its response index."""
        return encode_windows(self.tokenizer, self.config, responses, queries)

    def detect(self, responses: Sequence[str], queries: Sequence[str | None] | None = None, batch_size: int = 32,
               categorize: bool = True, threshold: float | None = None) -> list[Detection]:
        """Score every window of every response in length-sorted batches; one `Detection` per response.

        With `categorize`, responses scoring at least `threshold` (default: the saved one; a Protector
        passes its own) are named a category (by the probe's own head, or by the category probe of a
        classifier, run on each such response's most harmful window).
        """
        encoded = self.encode(responses, queries)
        windows, sample = encoded["input_ids"], encoded["sample"]
        window_logits = [0.0] * len(windows)
        window_categories: list[int | None] = [None] * len(windows)
        for idx in length_sorted(windows, batch_size):
            values, best = self._forward(self.model, [windows[j] for j in idx])
            cats: list[int | None] = list(best) if best is not None else [None] * len(idx)
            for j, value, cat in zip(idx, values, cats, strict=True):
                window_logits[j], window_categories[j] = value, cat
        per_response: list[list[int]] = [[] for _ in responses]
        for j, i in enumerate(sample):
            per_response[i].append(j)
        found = [self._combine([window_logits[j] for j in js], [window_categories[j] for j in js]) for js in per_response]
        for i, js in enumerate(per_response):
            found[i].parts = encoded["parts"][i]
            found[i].window_spans = [encoded["spans"][j] for j in js] if encoded["spans"] else []
        if categorize and self.category_model is not None:
            cut = self.threshold if threshold is None else threshold
            flagged = [i for i, d in enumerate(found) if d.score >= cut]
            tops = [max(per_response[i], key=window_logits.__getitem__) for i in flagged]
            for i, name in zip(flagged, self._categories([windows[j] for j in tops], batch_size), strict=True):
                found[i].category = name
        return found

    def _categories(self, windows: list[list[int]], batch_size: int) -> list[str]:
        """Category names of token windows from the classifier's category probe."""
        names: list[str] = [""] * len(windows)
        for idx in length_sorted(windows, batch_size):
            _, best = self._forward(self.category_model, [windows[j] for j in idx])
            for j, c in zip(idx, best or [], strict=True):
                names[j] = self.config.categories[c]
        return names

    def _forward(self, model: Any, windows: list[list[int]]) -> tuple[list[float], list[int] | None]:
        """Harm logits of a batch of token windows and, from a network with a category head, their categories."""
        if self.backend != "torch":
            return model(windows)
        import torch

        batch = self.tokenizer.pad({"input_ids": windows}, return_tensors="pt")
        with torch.inference_mode():
            out = model(**{k: v.to(self.device) for k, v in batch.items()})
        categories = getattr(out, "category_logits", None)
        return (out.logits.squeeze(-1).float().cpu().tolist(),
                categories.argmax(-1).cpu().tolist() if categories is not None else None)

    def _combine(self, logits: list[float], categories: list[int | None]) -> Detection:
        """One verdict from a response's window logits; the category is that of its most harmful window."""
        top = max(range(len(logits)), key=logits.__getitem__)
        logit = logits[top] - (math.log(len(logits)) if self.config.combine == "max_corrected" else 0.0)
        cat = categories[top]
        return Detection(
            score=1.0 / (1.0 + math.exp(-logit)) if logit > -700 else 0.0,
            category=self.config.categories[cat] if cat is not None and self.config.categories else None,
            window_scores=[1.0 / (1.0 + math.exp(-v)) if v > -700 else 0.0 for v in logits],
        )

    def score(self, responses: Sequence[str], queries: Sequence[str | None] | None = None, batch_size: int = 32) -> list[float]:
        """P(harmful) per response, in [0, 1]."""
        return [d.score for d in self.detect(responses, queries, batch_size, categorize=False)]

    def is_harmful(self, responses: Sequence[str], queries: Sequence[str | None] | None = None) -> list[bool]:
        """True where P(harmful) reaches the calibrated threshold."""
        return [s >= self.threshold for s in self.score(responses, queries)]
