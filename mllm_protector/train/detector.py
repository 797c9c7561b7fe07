"""Harm-detector training: BCE on labelled responses + the original's pairwise ranking term.

Loss = BCE(logit, label) (optionally class-balanced) + pairwise_weight * -logsigmoid(h_unsafe - h_safe),
where h is the harmful logit (the original used r = P(safe) logits: -logsigmoid(r_safe - r_unsafe), the
same term). A thin `transformers.Trainer` subclass, so `accelerate launch` scales it out unchanged.
"""

from __future__ import annotations

import logging
import random
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, get_args

import torch
import torch.nn.functional as F
from transformers import Trainer, TrainingArguments

from ..data.readers import BENIGN_SOURCES
from ..data.records import Corpus, Example, Pair
from ..data.splits import group_split, split_pairs
from ..detector import DetectorConfig, HarmDetector, InputFormat, build_classifier, encode_windows, load_trainable
from ..errors import InputError
from ..eval.metrics import choose_threshold, detector_report

logger = logging.getLogger(__name__)


@dataclass
class DetectorTrainingArguments(TrainingArguments):
    """`TrainingArguments` plus the detector's own knobs (backbone, LoRA, loss mix, validation)."""

    backbone: str = field(default="minilm-l6", metadata={"help": "alias, local path or hub id"})
    lora: bool = field(default=True, metadata={"help": "LoRA adapter + trained head instead of full fine-tune"})
    lora_r: int = 16
    lora_alpha: int = 32
    max_length: int = 256
    stride: int = 64
    input_format: str = field(default="response", metadata={"help": "response | query_response"})
    pairwise_weight: float = field(default=0.5, metadata={"help": "weight of the ranking term; 0 disables"})
    balance: bool = field(default=True, metadata={"help": "weight harmful examples by n_harmless/n_harmful"})
    truncation_augment: float = field(
        default=0.3, metadata={"help": "fraction of examples also seen as a random-length prefix"}
    )
    init_from: str | None = field(default=None, metadata={"help": "saved LoRA detector to continue training from"})
    val_fraction: float = 0.15
    max_per_class: int = field(
        default=0, metadata={"help": "cap training examples per (source, label) and pairs per source; 0 = all"}
    )
    max_fpr: float = field(
        default=0.05, metadata={"help": "threshold keeps the FPR on benign validation answers at most this"}
    )
    learning_rate: float = 5e-4
    per_device_train_batch_size: int = 16
    num_train_epochs: float = 2.0
    logging_steps: int = 20
    save_strategy: str = "no"
    report_to: Any = "none"
    remove_unused_columns: bool = False


@dataclass
class DetectorCollator:
    """Pads single examples and pair members into one batch; `pair_index` points at (safe, unsafe) rows."""

    pad_token_id: int

    def __call__(self, items: list[dict[str, Any]]) -> dict[str, torch.Tensor]:
        rows: list[list[int]] = []
        labels: list[float] = []
        weights: list[float] = []
        pair_index: list[tuple[int, int]] = []
        for item in items:
            if "pair" in item:
                safe, unsafe = item["pair"]
                pair_index.append((len(rows), len(rows) + 1))
                rows += [safe, unsafe]
                labels += [-1.0, -1.0]  # pair members carry no pointwise label
                weights += [0.0, 0.0]
            else:
                rows.append(item["input_ids"])
                labels.append(float(item["label"]))
                weights.append(float(item["weight"]))
        width = max(len(r) for r in rows)
        input_ids = torch.full((len(rows), width), self.pad_token_id, dtype=torch.long)
        attention_mask = torch.zeros((len(rows), width), dtype=torch.long)
        for i, row in enumerate(rows):
            input_ids[i, : len(row)] = torch.tensor(row, dtype=torch.long)
            attention_mask[i, : len(row)] = 1
        return {
            "input_ids": input_ids,
            "attention_mask": attention_mask,
            "labels": torch.tensor(labels),
            "weights": torch.tensor(weights),
            "pair_index": torch.tensor(pair_index, dtype=torch.long).reshape(-1, 2),
        }


class DetectorTrainer(Trainer):
    """`Trainer` whose loss is weighted BCE on labelled rows plus the pairwise ranking term."""

    def __init__(self, *args: Any, pairwise_weight: float = 0.5, **kwargs: Any):
        super().__init__(*args, **kwargs)
        self.pairwise_weight = pairwise_weight

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        labels, weights, pair_index = inputs.pop("labels"), inputs.pop("weights"), inputs.pop("pair_index")
        outputs = model(input_ids=inputs["input_ids"], attention_mask=inputs["attention_mask"])
        logits = outputs.logits.squeeze(-1).float()
        loss = logits.new_zeros(())
        if weights.sum() > 0:
            per_row = F.binary_cross_entropy_with_logits(logits, labels.clamp(min=0), reduction="none")
            loss = loss + (per_row * weights).sum() / weights.sum()
        if self.pairwise_weight > 0 and len(pair_index):
            margin = logits[pair_index[:, 1]] - logits[pair_index[:, 0]]
            loss = loss + self.pairwise_weight * -F.logsigmoid(margin).mean()
        return (loss, outputs) if return_outputs else loss


def _pointwise_items(
    examples: Sequence[Example], tokenizer: Any, config: DetectorConfig, augment: float, balance: bool, seed: int
) -> list[dict[str, Any]]:
    """One training row per example (first window), plus random-length prefixes so length is no cue."""
    rng = random.Random(seed)
    n_pos = sum(e.label for e in examples)
    pos_weight = (len(examples) - n_pos) / n_pos if balance and n_pos else 1.0
    encoded = encode_windows(tokenizer, config, [e.response for e in examples], [e.query for e in examples], max_windows=1)
    items = []
    for ids, example in zip(encoded["input_ids"], examples, strict=True):
        weight = pos_weight if example.label == 1 else 1.0
        items.append({"input_ids": ids, "label": example.label, "weight": weight})
        if len(ids) > 48 and rng.random() < augment:
            cut = rng.randint(24, len(ids) - 1)
            items.append({"input_ids": ids[:cut] + ids[-1:], "label": example.label, "weight": weight})
    return items


def _pair_items(pairs: Sequence[Pair], tokenizer: Any, config: DetectorConfig) -> list[dict[str, Any]]:
    """One training row per ranking pair: (safe window, unsafe window) to the same query."""
    texts = [t for p in pairs for t in (p.safe, p.unsafe)]
    queries = [p.query for p in pairs for _ in range(2)]
    ids = encode_windows(tokenizer, config, texts, queries, max_windows=1)["input_ids"]
    return [{"pair": (ids[2 * i], ids[2 * i + 1])} for i in range(len(pairs))]


def scores_report(examples: Sequence[Example], scores: Sequence[float], threshold: float) -> dict[str, Any]:
    """Metrics overall and per source for given scores at `threshold` (no model call)."""
    labels = [e.label for e in examples]
    report: dict[str, Any] = {"overall": detector_report(labels, scores, threshold), "by_source": {}}
    for source in sorted({e.source for e in examples}):
        idx = [i for i, e in enumerate(examples) if e.source == source]
        report["by_source"][source] = detector_report([labels[i] for i in idx], [scores[i] for i in idx], threshold)
    return report


def _input_format(value: str) -> InputFormat:
    """`value` as a detector input format; InputError names the choices when it is none of them."""
    formats: tuple[InputFormat, ...] = get_args(InputFormat)
    for fmt in formats:
        if value == fmt:
            return fmt
    raise InputError(f"unknown input format {value!r}: choose one of {', '.join(formats)}")


def train_detector(
    args: DetectorTrainingArguments,
    train: Sequence[Example],
    pairs: Sequence[Pair] = (),
    validation: Sequence[Example] = (),
    data_summary: dict[str, Any] | None = None,
) -> tuple[HarmDetector, dict[str, Any]]:
    """Train a detector; choose its threshold on `validation` (FPR ≤ max_fpr) and report its metrics."""
    if args.init_from:  # continue from a saved detector: its backbone and input format win
        model, tokenizer, saved = load_trainable(args.init_from)
        backbone, input_format, lora = saved.backbone, saved.input_format, True
    else:
        input_format = _input_format(args.input_format)  # checked before the backbone loads
        model, tokenizer = build_classifier(args.backbone, args.lora, args.lora_r, args.lora_alpha)
        backbone, lora = args.backbone, args.lora
    config = DetectorConfig(
        backbone=backbone, max_length=args.max_length, stride=args.stride, input_format=input_format, lora=lora
    )
    items = _pointwise_items(train, tokenizer, config, args.truncation_augment, args.balance, args.seed)
    items += _pair_items(pairs, tokenizer, config) if args.pairwise_weight > 0 else []
    logger.info("training on %d rows (%d examples, %d pairs)", len(items), len(train), len(pairs))
    trainer = DetectorTrainer(
        model=model,
        args=args,
        train_dataset=items,
        data_collator=DetectorCollator(tokenizer.pad_token_id),
        pairwise_weight=args.pairwise_weight,
    )
    result = trainer.train(resume_from_checkpoint=args.resume_from_checkpoint)
    detector = HarmDetector(trainer.model, tokenizer, config, device=str(args.device))
    report: dict[str, Any] = {"train_loss": result.training_loss, "loss_history": [
        h["loss"] for h in trainer.state.log_history if "loss" in h
    ]}
    if validation:
        report["validation"] = _set_threshold(detector, validation, args.max_fpr)
    config.training = {
        **({"init_from_training": _stage(saved.training)} if args.init_from else {}),
        "data": data_summary or {},
        "arguments": {k: v for k, v in asdict(args).items() if k in _CARD_ARGS},
        "train_examples": len(train),
        "train_pairs": len(pairs),
        "validation_examples": len(validation),
    }
    config.metrics = report.get("validation", {})
    return detector, report


def calibrate(detector: HarmDetector, validation: Sequence[Example], max_fpr: float) -> dict[str, Any]:
    """Re-choose the threshold of a trained detector on held-out `validation` and refresh its metrics.

    Same rule as training: best F1 whose FPR on benign answers (or all harmless ones, if no benign
    source is present) stays ≤ `max_fpr`. Weights are untouched; returns the new validation report.
    """
    previous = detector.config.threshold
    report = _set_threshold(detector, validation, max_fpr)
    detector.config.metrics = report
    detector.config.training["calibration"] = {
        "previous_threshold": previous, "threshold": detector.config.threshold, "max_fpr": max_fpr,
        "validation_examples": len(validation),
        "fpr_on": "benign sources" if any(e.source in BENIGN_SOURCES for e in validation) else "all harmless",
    }
    return report


def _set_threshold(detector: HarmDetector, validation: Sequence[Example], max_fpr: float) -> dict[str, Any]:
    """Score `validation` once, set the detector's threshold by the FPR rule, return metrics at it."""
    scores = detector.score([e.response for e in validation], [e.query for e in validation])
    benign = [e.source in BENIGN_SOURCES for e in validation]
    labels = [e.label for e in validation]
    detector.config.threshold = choose_threshold(labels, scores, max_fpr, benign if any(benign) else None)
    return scores_report(validation, scores, detector.config.threshold)


def _stage(training: dict[str, Any]) -> dict[str, Any]:
    """How the detector we continued from was trained (its command, arguments and earlier stages)."""
    keys = ("command", "arguments", "train_examples", "train_pairs", "init_from_training")
    return {k: training[k] for k in keys if k in training}


_CARD_ARGS = {
    "backbone", "lora", "lora_r", "lora_alpha", "max_length", "stride", "input_format", "pairwise_weight",
    "balance", "truncation_augment", "val_fraction", "max_per_class", "init_from", "max_fpr", "learning_rate", "num_train_epochs",
    "per_device_train_batch_size", "seed", "max_steps",
}


def cap_per_class(train: Sequence[Example], pairs: Sequence[Pair], cap: int, seed: int) -> tuple[list[Example], list[Pair]]:
    """Deterministically keep at most `cap` examples per (source, label) and `cap` pairs per source.

    Keeps large harmless sources from swamping the rest and bounds CPU training time.
    """
    if cap <= 0:
        return list(train), list(pairs)
    rng = random.Random(seed)
    buckets: dict[tuple[str, int], list[Example]] = {}
    for e in train:
        buckets.setdefault((e.source, e.label), []).append(e)
    pair_buckets: dict[str, list[Pair]] = {}
    for p in pairs:
        pair_buckets.setdefault(p.source, []).append(p)
    kept = [e for b in buckets.values() for e in (rng.sample(b, cap) if len(b) > cap else b)]
    kept_pairs = [p for b in pair_buckets.values() for p in (rng.sample(b, cap) if len(b) > cap else b)]
    return kept, kept_pairs


def split_corpus(corpus: Corpus, val_fraction: float, seed: int) -> tuple[list[Example], list[Pair], list[Example]]:
    """Group-wise train/validation split of examples; pairs follow their group's side (no leakage)."""
    train, val = group_split(corpus.examples, val_fraction, seed)
    train_pairs, _ = split_pairs(corpus.pairs, val)
    return train, train_pairs, val


def save_detector(detector: HarmDetector, output_dir: str | Path, report: dict[str, Any]) -> None:
    """Save weights + config; the report (with loss history) goes beside as `training_report.json`."""
    import json

    detector.save_pretrained(output_dir)
    (Path(output_dir) / "training_report.json").write_text(json.dumps(report, indent=2, default=float) + "\n")
