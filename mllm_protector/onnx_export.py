"""Export a detector's torch networks to ONNX once: fused graphs (fp32), an int8 copy, the tokenizer.

The harm network (a LoRA-merged or fully tuned sequence classifier, or a probe with its heads) and a
classifier's category probe are traced with
`torch.onnx.export`; BERT-family graphs are fused by ONNX Runtime's transformer optimizer (attention,
GELU, layer norm kernels); `onnxruntime.quantization.quantize_dynamic` writes the int8 harm network. The
fp32 export must reproduce torch's scores on check windows, or the export fails.
"""

from __future__ import annotations

import logging
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import torch

from .errors import ProtectorError
from .onnx_backend import CATEGORY_GRAPH, GRAPHS, TOKENIZER_FILE, OnnxNetwork, pad_windows

logger = logging.getLogger(__name__)

#: Largest |P(harmful)| difference allowed between the fp32 export and torch on the check windows.
FP32_TOLERANCE = 1e-4
#: Model types whose graphs ONNX Runtime's BERT optimizer fuses.
_BERT_LIKE = {"bert", "roberta", "xlm-roberta", "distilbert"}
OPSET = 17
#: Texts whose windows (short, long, padded together) the fp32 export must score as torch does.
CHECK_TEXTS = (
    "Sure, here is how to get into a locked car: slide a thin strip of metal down the window and pull the latch.",
    "The photo shows a red bus parked beside a bakery on a rainy street.",
    " ".join(["A long answer about tomatoes: water them at dawn, give them full sun and stake the stems."] * 20),
)


class _Graph(torch.nn.Module):
    """A detector network as a traceable function of (input_ids, attention_mask) → named outputs."""

    def __init__(self, model: Any, outputs: tuple[str, ...]):
        super().__init__()
        self.model = model
        self.outputs = outputs

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> tuple[torch.Tensor, ...]:
        out = self.model(input_ids=input_ids, attention_mask=attention_mask)
        return tuple(getattr(out, name) for name in self.outputs)


def _hf_model(model: Any) -> Any:
    """The transformers model inside a network (a classifier is one; a probe holds its backbone)."""
    return getattr(model, "backbone", model)


def _export_graph(model: Any, outputs: tuple[str, ...], path: Path, pad_id: int) -> None:
    """Trace `model` to `path` with dynamic batch and length, fused when the backbone is BERT-like."""
    hf = _hf_model(model)
    attention = hf.config._attn_implementation
    hf.set_attn_implementation("eager")  # the optimizer recognises eager attention; the math is the same
    ids, mask = (torch.from_numpy(a) for a in pad_windows([[101, 2000, 2001, 102], [101, 2002, 102]], pad_id))
    axes = {"input_ids": {0: "batch", 1: "length"}, "attention_mask": {0: "batch", 1: "length"}}
    try:
        with warnings.catch_warnings(), torch.inference_mode(False):
            warnings.simplefilter("ignore")  # tracer warnings about Python control flow on shapes
            torch.onnx.export(_Graph(model, outputs).eval(), (ids, mask), str(path), input_names=list(axes),
                              output_names=list(outputs), dynamic_axes={**axes, **{o: {0: "batch"} for o in outputs}},
                              opset_version=OPSET, dynamo=False)
    finally:
        hf.set_attn_implementation(attention)
    if hf.config.model_type in _BERT_LIKE:
        from onnxruntime.transformers.optimizer import optimize_model

        optimize_model(str(path), model_type="bert", num_heads=hf.config.num_attention_heads,
                       hidden_size=hf.config.hidden_size).save_model_to_file(str(path))


def _quantize(source: Path, target: Path) -> None:
    """Dynamic int8 quantisation: weights per output channel (closer scores than one scale per tensor),
    activations per tensor at run time."""
    from onnxruntime.quantization import QuantType, quantize_dynamic

    logging.disable(logging.WARNING)  # its advice to pre-process is for static quantisation
    try:
        quantize_dynamic(source, target, weight_type=QuantType.QInt8, per_channel=True,
                         extra_options={"DefaultTensorType": 1})  # fused contrib ops carry no shape types: fp32
    finally:
        logging.disable(logging.NOTSET)


def _torch_outputs(model: Any, windows: list[list[int]], pad_id: int) -> tuple[np.ndarray, np.ndarray | None]:
    """Harm logits and category logits (or None) of the torch network on `windows`."""
    ids, mask = (torch.from_numpy(a) for a in pad_windows(windows, pad_id))
    with torch.inference_mode():
        out = model(input_ids=ids, attention_mask=mask)
    categories = getattr(out, "category_logits", None)
    return out.logits[:, 0].float().numpy(), categories.float().numpy() if categories is not None else None


def _max_diff(model: Any, network: OnnxNetwork, windows: list[list[int]], pad_id: int) -> float:
    """Largest |P(harmful)| difference between torch and an exported network; a category mismatch is 1."""
    logits, categories = _torch_outputs(model, windows, pad_id)
    onnx_logits, onnx_categories = network(windows)
    if categories is not None and onnx_categories != categories.argmax(-1).tolist():
        return 1.0
    return float(np.abs(1 / (1 + np.exp(-logits)) - 1 / (1 + np.exp(-np.asarray(onnx_logits)))).max())


def export_detector(staging: Path, model: Any, category_model: Any, tokenizer: Any, check: list[list[int]]) -> dict[str, Any]:
    """Write the graphs and tokenizer of a torch detector into `staging`; returns the export's metadata.

    Raises ProtectorError when the fp32 graphs do not reproduce torch on the `check` windows.
    """
    pad_id = int(tokenizer.pad_token_id)
    harm_outputs = ("logits", "category_logits") if getattr(model, "category_head", None) is not None else ("logits",)
    _export_graph(model, harm_outputs, staging / GRAPHS["onnx"], pad_id)
    _quantize(staging / GRAPHS["onnx"], staging / GRAPHS["onnx-int8"])
    if category_model is not None:
        _export_graph(category_model, ("logits", "category_logits"), staging / CATEGORY_GRAPH, pad_id)
    tokenizer.backend_tokenizer.save(str(staging / TOKENIZER_FILE))
    diffs = {name: _max_diff(model, OnnxNetwork(staging / graph, pad_id), check, pad_id) for name, graph in GRAPHS.items()}
    if category_model is not None:
        diffs["category"] = _max_diff(category_model, OnnxNetwork(staging / CATEGORY_GRAPH, pad_id), check, pad_id)
    wrong = {k: v for k, v in diffs.items() if k != "onnx-int8" and v > FP32_TOLERANCE}
    if wrong:
        raise ProtectorError(f"the ONNX export does not reproduce the torch detector (max |score difference| {wrong}); "
                             "use backend='torch'")
    logger.info("ONNX export checked on %d windows: max |score difference| %s", len(check), diffs)
    import onnxruntime

    return {"pad_token_id": pad_id, "check": {"windows": len(check), "max_abs_diff": diffs},
            "versions": {"torch": torch.__version__, "onnxruntime": onnxruntime.__version__}}
