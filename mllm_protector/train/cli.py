"""`mllm-protector train ...` commands: thin typer wrappers over the trainers."""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Optional

import typer

from ..config import data_dir
from ..data import load_corpus, read_jsonl_examples
from ..data.records import Corpus

app = typer.Typer(help="Train a harm detector or a detoxifier on your own policy data.", no_args_is_help=True)
logger = logging.getLogger(__name__)


@app.command("detector")
def detector(
    output_dir: Path = typer.Option(..., "--output-dir", "-o", help="Folder to save the trained detector in."),
    backbone: str = typer.Option("minilm-l6", help="Alias (minilm-l6, smollm2-135m-instruct), local path or hub id."),
    data_dir_: Optional[Path] = typer.Option(None, "--data-dir", help="Shared data folder (default ../shared/data)."),
    sources: Optional[str] = typer.Option(None, help="Comma-separated corpus sources (default: all)."),
    jsonl: list[Path] = typer.Option([], "--jsonl", help="Extra labelled JSONL files (response, label[, query])."),
    lora: bool = typer.Option(True, help="LoRA adapter + head (small to ship) instead of a full fine-tune."),
    lora_r: int = 16,
    input_format: str = typer.Option("response", help="response | query_response"),
    max_length: int = 256,
    stride: int = 64,
    epochs: float = 2.0,
    max_steps: int = typer.Option(-1, help="Stop after this many steps (overrides epochs when > 0)."),
    batch_size: int = 16,
    learning_rate: float = 5e-4,
    pairwise_weight: float = 0.5,
    max_per_class: int = typer.Option(0, help="Cap examples per (source, label) and pairs per source; 0 = all."),
    val_fraction: float = 0.15,
    max_fpr: float = typer.Option(0.05, help="Threshold keeps validation false-positive rate at most this."),
    seed: int = 0,
    resume: bool = typer.Option(False, "--resume", help="Resume from the last checkpoint in output-dir."),
) -> None:
    """Train a HarmDetector (BCE + pairwise ranking); save it with its threshold and validation metrics."""
    from ..train.detector import DetectorTrainingArguments, cap_per_class, save_detector, split_corpus, train_detector

    use_shared = not jsonl or data_dir_ is not None  # only --jsonl given: train on the user's data alone
    corpus = load_corpus(data_dir(data_dir_), sources.split(",") if sources else None) if use_shared else Corpus()
    for path in jsonl:
        corpus = corpus + Corpus(read_jsonl_examples(path, source=path.stem))
    train, pairs, val = split_corpus(corpus, val_fraction, seed)
    train, pairs = cap_per_class(train, pairs, max_per_class, seed)
    args = DetectorTrainingArguments(
        output_dir=str(output_dir / "checkpoints"),
        backbone=backbone,
        lora=lora,
        lora_r=lora_r,
        lora_alpha=2 * lora_r,
        input_format=input_format,
        max_length=max_length,
        stride=stride,
        num_train_epochs=epochs,
        max_steps=max_steps,
        per_device_train_batch_size=batch_size,
        learning_rate=learning_rate,
        pairwise_weight=pairwise_weight,
        max_per_class=max_per_class,
        val_fraction=val_fraction,
        max_fpr=max_fpr,
        seed=seed,
        save_strategy="steps" if resume or max_steps > 0 else "epoch",
        save_steps=200,
        save_total_limit=1,
        resume_from_checkpoint=_last_checkpoint(output_dir / "checkpoints") if resume else None,
    )
    detector_model, report = train_detector(args, train, pairs, val, corpus.summary())
    if args.process_index == 0:
        save_detector(detector_model, output_dir, report)
        typer.echo(json.dumps(report.get("validation", {}).get("overall", {}), indent=2))


def _last_checkpoint(folder: Path) -> Optional[str]:
    """Newest `checkpoint-N` folder written by the Trainer, or None to start fresh."""
    from transformers.trainer_utils import get_last_checkpoint

    return get_last_checkpoint(str(folder)) if folder.is_dir() else None
