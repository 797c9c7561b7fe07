"""`mllm-protector train ...` commands: thin typer wrappers over the trainers."""

from __future__ import annotations

import json
import logging
import shlex
import sys
from pathlib import Path
from typing import Optional

import typer

from ..config import data_dir
from ..data import load_corpus, read_jsonl_examples
from ..data.records import Corpus

app = typer.Typer(help="Train a harm detector or a detoxifier on your own policy data.", no_args_is_help=True)
logger = logging.getLogger(__name__)


DATA_DIR = typer.Option(None, "--data-dir", help="Shared data folder (default ../shared/data).")
FROZEN_BACKBONE = typer.Option("minilm-l6", help="Frozen backbone: alias, local path or hub id.")


def _check_cache(features: Path, backbone: str) -> None:
    """A feature cache is reused only for the backbone it was computed with."""
    from ..train.probe import cache_backbone

    if (features / "features.json").is_file() and cache_backbone(features)[0] != backbone:
        raise typer.BadParameter(f"{features} holds {cache_backbone(features)[0]} features, not {backbone}: pick another --features folder")


def _labelled_corpus(data_dir_: Optional[Path], sources: Optional[str], jsonl: list[Path]) -> Corpus:
    """The shared data sets (or a subset) plus the user's JSONL files; only --jsonl given: those alone."""
    use_shared = not jsonl or data_dir_ is not None
    corpus = load_corpus(data_dir(data_dir_), sources.split(",") if sources else None) if use_shared else Corpus()
    for path in jsonl:
        corpus = corpus + Corpus(read_jsonl_examples(path, source=path.stem))
    return corpus


@app.command("detector")
def detector(
    output_dir: Path = typer.Option(..., "--output-dir", "-o", help="Folder to save the trained detector in."),
    backbone: str = typer.Option("minilm-l6", help="Alias (minilm-l6, smollm2-135m-instruct), local path or hub id."),
    data_dir_: Optional[Path] = DATA_DIR,
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
    max_fpr: float = typer.Option(0.05, help="Threshold keeps the FPR on benign validation answers at most this."),
    init_from: Optional[Path] = typer.Option(None, help="Saved LoRA detector to continue training from."),
    seed: int = 0,
    resume: bool = typer.Option(False, "--resume", help="Resume from the last checkpoint in output-dir."),
) -> None:
    """Train a HarmDetector (BCE + pairwise ranking); save it with its threshold and validation metrics."""
    from ..train.detector import DetectorTrainingArguments, cap_per_class, save_detector, split_corpus, train_detector

    corpus = _labelled_corpus(data_dir_, sources, jsonl)
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
        init_from=str(init_from) if init_from else None,
        seed=seed,
        save_strategy="steps" if resume or max_steps > 0 else "epoch",
        save_steps=200,
        save_total_limit=1,
        resume_from_checkpoint=_last_checkpoint(output_dir / "checkpoints") if resume else None,
    )
    detector_model, report = train_detector(args, train, pairs, val, corpus.summary())
    detector_model.config.training["command"] = "mllm-protector " + shlex.join(sys.argv[1:])
    if args.process_index == 0:
        save_detector(detector_model, output_dir, report)
        typer.echo(json.dumps(report.get("validation", {}).get("overall", {}), indent=2))
    _end_distributed()


@app.command("probe")
def probe_command(
    output_dir: Path = typer.Option(..., "--output-dir", "-o", help="Folder to save the trained probe detector in."),
    features: Path = typer.Option(Path("runs/loso"), help="Feature cache folder (built here when missing)."),
    backbone: str = FROZEN_BACKBONE,
    data_dir_: Optional[Path] = DATA_DIR,
    sources: Optional[str] = typer.Option(None, help="Comma-separated sources (default: all but hh_rlhf, plus every labelled set)."),
    cap: int = typer.Option(1000, help="At most this many examples per English (source, label); cap/4 per other language."),
    variant: str = typer.Option("query_response", help="response | query_response: what the head reads."),
    mix: str = typer.Option("all", help="Training rows: all (English) | all_lang | old | no_hard."),
    c: float = typer.Option(0.05, help="Inverse L2 strength of the logistic-regression heads."),
    max_length: int = typer.Option(128, help="Tokens per scoring window."),
    stride: int = typer.Option(32, help="Tokens shared by consecutive windows."),
    combine: str = typer.Option("max_corrected", help="max | max_corrected (max minus log #windows)."),
    seed: int = 0,
) -> None:
    """Train a probe detector (frozen backbone + linear heads); threshold chosen leave-one-source-out."""
    from ..data.labelled import labelled_sets
    from ..data.readers import SOURCES
    from ..detector import Combine, InputFormat
    from ..train.probe import build_feature_cache, sample, train_probe

    if variant not in ("response", "query_response"):
        raise typer.BadParameter(f"--variant must be response or query_response, got {variant!r}")
    if combine not in ("max", "max_corrected"):
        raise typer.BadParameter(f"--combine must be max or max_corrected, got {combine!r}")
    input_format: InputFormat = "query_response" if variant == "query_response" else "response"
    combine_mode: Combine = "max_corrected" if combine == "max_corrected" else "max"
    _check_cache(features, backbone)
    if not (features / f"feat_{variant}.npy").is_file():
        root = data_dir(data_dir_)
        names = sources.split(",") if sources else [s for s in SOURCES if s != "hh_rlhf"] + labelled_sets(root)
        corpus = load_corpus(root, names)
        build_feature_cache(sample(corpus.examples, cap, seed), features, backbone, [variant])
    detector_model, report = train_probe(features, input_format, mix, c, max_length, stride, combine_mode)
    detector_model.config.training["command"] = "mllm-protector " + shlex.join(sys.argv[1:])
    detector_model.save_pretrained(output_dir)
    (output_dir / "training_report.json").write_text(json.dumps(report, indent=2, default=float) + "\n")
    summary = report["loso"]
    typer.echo(json.dumps({k: summary[k] for k in ("threshold", "loso_mean_auroc", "loso_worst_auroc", "loso_worst_family",
                                                   "macro_f1", "benign_fpr", "dna_fpr")}, indent=2, default=float))


@app.command("input-guard")
def input_guard_command(
    output_dir: Path = typer.Option(..., "--output-dir", "-o", help="Folder to save the request classifier in."),
    method: str = typer.Option("probe", help="probe (frozen backbone + linear heads; the shipped default) | finetune (LoRA on the backbone + 1-output head; the `finetune` preset)."),
    features: Path = typer.Option(Path("runs/input_guard"), help="probe: feature cache folder (built here when missing)."),
    backbone: str = typer.Option("minilm-l6", help="Backbone: alias, local path or hub id."),
    data_dir_: Optional[Path] = DATA_DIR,
    cap: Optional[int] = typer.Option(None, help="At most this many requests per (source, label), by whole groups (default: probe 2500, finetune 1000)."),
    max_fpr: float = typer.Option(0.02, help="False-positive budget on held-out benign requests that sets the threshold."),
    exclude: list[str] = typer.Option([], "--exclude", help="Source family left out of training (repeatable), e.g. figstep."),
    learning_rate: list[float] = typer.Option([5e-4, 1e-3, 2e-3], "--learning-rate", help="finetune: rate(s) compared leave-sources-out (repeatable)."),
    epochs: float = typer.Option(1.0, help="finetune: epochs."),
    max_length: int = typer.Option(64, help="finetune: tokens per training window (requests are short)."),
    batch_size: int = typer.Option(16, help="finetune: batch size."),
    lora_r: int = typer.Option(8, help="finetune: LoRA rank."),
    folds: int = typer.Option(2, help="finetune: folds of source families held out in turn (0: no leave-sources-out table)."),
    exclude_half: Optional[int] = typer.Option(None, min=0, max=1, help="finetune: leave out this half (0 or 1) of the FigStep and "
                                               "MM-SafetyBench questions, for the cross-fitted benchmark (benchmarks/input_guard.py --crossfit)."),
    seed: int = 0,
) -> None:
    """Train the input guard's request classifier on requests: a LoRA fine-tune (learning rate chosen leave-sources-out,
    threshold on held-out groups) or a probe (c chosen leave-sources-out, threshold on held-out questions)."""
    if method not in ("finetune", "probe"):
        raise typer.BadParameter(f"--method must be finetune or probe, got {method!r}")
    if exclude_half is not None and method != "finetune":
        raise typer.BadParameter("--exclude-half is for --method finetune")
    if method == "finetune":
        from ..train.request_finetune import finetune_model_card, train_request_finetune

        detector_model, report = train_request_finetune(
            data_dir(data_dir_), tuple(learning_rate), epochs, max_length, batch_size, lora_r,
            1000 if cap is None else cap, max_fpr, exclude, folds, seed, backbone, exclude_half)
        card = finetune_model_card
    else:
        from ..train.request_probe import VARIANT, build_request_cache, model_card, train_request_probe

        _check_cache(features, backbone)
        if not (features / f"feat_{VARIANT}.npy").is_file():
            build_request_cache(data_dir(data_dir_), features, 2500 if cap is None else cap, seed, backbone)
        detector_model, report = train_request_probe(features, max_fpr, exclude)
        card = model_card
    detector_model.config.training["command"] = "mllm-protector " + shlex.join(sys.argv[1:])
    detector_model.save_pretrained(output_dir)
    (output_dir / "README.md").write_text(card(detector_model.config))
    (output_dir / "training_report.json").write_text(json.dumps(report, indent=2, default=float) + "\n")
    loso = report["loso"]
    typer.echo(json.dumps({k: loso[k] for k in ("c", "learning_rate", "threshold", "heldout_macro_recall", "heldout_benign_fpr", "pooled_auroc")
                           if k in loso}, indent=2, default=float))


@app.command("categories")
def categories_command(
    detector_dir: Path = typer.Argument(..., help="Saved classifier detector that gains a category head (in place)."),
    probe: Path = typer.Option(..., help="Probe detector (from `train probe`) whose category head is attached."),
    combine: Optional[str] = typer.Option(None, help="Also set how window logits combine: max | max_corrected."),
) -> None:
    """Give a fine-tuned detector harm categories: the probe's category head, run on flagged answers only."""
    import shutil

    from ..detector import DetectorConfig
    from ..probe import WEIGHTS_NAME

    target, source = DetectorConfig.read(detector_dir), DetectorConfig.read(probe)
    if target.kind != "classifier" or source.kind != "probe" or not source.categories:
        raise typer.BadParameter("needs a classifier detector and a probe detector with a category head")
    if target.backbone != source.backbone:
        raise typer.BadParameter(f"backbones differ: {target.backbone} vs {source.backbone}")
    shutil.copyfile(probe / WEIGHTS_NAME, detector_dir / "category_probe.safetensors")
    target.category_weights, target.categories, target.layers = "category_probe.safetensors", source.categories, source.layers
    if combine is not None:
        if combine not in ("max", "max_corrected"):
            raise typer.BadParameter(f"--combine must be max or max_corrected, got {combine!r}")
        target.combine = combine  # type: ignore[assignment]
    target.training["categories"] = {"from": source.training.get("command", str(probe)),
                                     "category_examples": source.training.get("category_examples"),
                                     "category_check": source.training.get("category_check"),
                                     "sources": sorted(source.training.get("by_source", {})),
                                     "command": "mllm-protector " + shlex.join(sys.argv[1:])}
    target.write(detector_dir)
    typer.echo(f"{detector_dir}: categories {', '.join(target.categories)}; windows combined by {target.combine}")


@app.command("calibrate")
def calibrate_command(
    detector_dir: Path = typer.Argument(..., help="Saved detector folder whose threshold is re-chosen in place."),
    data_dir_: Optional[Path] = DATA_DIR,
    sources: Optional[str] = typer.Option(None, help="Comma-separated corpus sources (default: all)."),
    jsonl: list[Path] = typer.Option([], "--jsonl", help="Labelled JSONL files (response, label[, query]) to calibrate on."),
    max_fpr: float = typer.Option(0.05, help="Threshold keeps the FPR on benign validation answers at most this."),
) -> None:
    """Re-choose a trained detector's threshold on its held-out split (same split as its training)."""
    from ..detector import HarmDetector
    from ..train.detector import calibrate, split_corpus

    model = HarmDetector.from_pretrained(detector_dir, backend="torch")  # the threshold holds for every backend: torch fp32 sets it
    saved = model.config.training.get("arguments", {})
    corpus = _labelled_corpus(data_dir_, sources, jsonl)
    _, _, val = split_corpus(corpus, saved.get("val_fraction", 0.15), saved.get("seed", 0))
    report = calibrate(model, val, max_fpr)
    model.config.training["calibration"]["command"] = "mllm-protector " + shlex.join(sys.argv[1:])
    model.save_config(detector_dir)
    typer.echo(json.dumps({"threshold": model.config.threshold, **report["overall"]}, indent=2))


@app.command("detoxifier")
def detoxifier(
    output_dir: Path = typer.Option(..., "--output-dir", "-o", help="Folder to save the adapter (or full model) in."),
    model: str = typer.Option("smollm2-135m-instruct", help="Base causal LM with a chat template: alias, path or hub id."),
    data_dir_: Optional[Path] = DATA_DIR,
    sources: Optional[str] = typer.Option(None, help="Comma-separated detox sources (mmsb_gemini, jailbreakbench, pku_saferlhf, matched; default all)."),
    jsonl: list[Path] = typer.Option([], "--jsonl", help="Extra detox JSONL files (query, harmful, target[, category])."),
    pku: list[str] = typer.Option([], "--pku", help="PKU-SafeRLHF-format data (hub id or local json/jsonl/parquet): pairs with one safe answer."),
    lora: bool = typer.Option(True, help="LoRA adapter (a few MB) instead of a full fine-tune."),
    lora_r: int = 8,
    lora_alpha: int = 16,
    lora_targets: str = typer.Option("q_proj,k_proj,v_proj,o_proj,gate_proj,up_proj,down_proj", help="Comma-separated module names."),
    max_length: int = typer.Option(352, help="Prompt + target tokens."),
    epochs: float = 1.0,
    max_steps: int = typer.Option(-1, help="Stop after this many steps (overrides epochs when > 0)."),
    batch_size: int = 4,
    grad_accum: int = 1,
    learning_rate: float = 2e-4,
    val_fraction: float = 0.1,
    max_per_source: str = typer.Option("0", help="Cap training records per source: N for every source, or 'source=N,...'; 0 = all."),
    max_minutes: float = typer.Option(0, help="Stop training after this many minutes of wall time (0 = no limit)."),
    save_steps: int = typer.Option(50, help="Checkpoint every N steps (with --resume or --max-steps)."),
    logging_steps: int = typer.Option(10, help="Log the training loss every N steps."),
    save_dtype: str = typer.Option("float16", help="dtype of the saved adapter: float16 | bfloat16 | float32."),
    records_out: Optional[Path] = typer.Option(None, help="Also write the built train/validation records as JSONL here."),
    log_seen_examples: bool = typer.Option(False, help="Write each rank's trained example indices (data-parallel check)."),
    seed: int = 0,
    resume: bool = typer.Option(False, "--resume", help="Resume from the last checkpoint in output-dir/checkpoints."),
) -> None:
    """Fine-tune a detoxifier (loss on target tokens only); save adapter, training report and model card."""
    from ..data.detox import (
        build_detox_dataset,
        cap_per_source,
        pairs_to_detox,
        read_detox_jsonl,
        split_detox,
        summarize,
        write_detox_jsonl,
    )
    from ..train.detoxifier import DetoxTrainingArguments, render_model_card, save_detoxifier, train_detoxifier

    extra = [r for path in jsonl for r in read_detox_jsonl(path)]
    if pku:
        from ..data.hub import read_pku_saferlhf_hub

        extra += [r for ref in pku for r in pairs_to_detox(read_pku_saferlhf_hub(ref).pairs, source="pku_hub")]
    use_shared = not extra or data_dir_ is not None or sources is not None
    records = build_detox_dataset(data_dir(data_dir_), sources.split(",") if sources else None, extra) if use_shared else extra
    train, val = split_detox(records, val_fraction, seed)
    caps = _parse_caps(max_per_source, {r.source for r in train})
    if caps:
        train = cap_per_source(train, caps, seed)
    if records_out is not None:
        write_detox_jsonl(train, records_out / "train.jsonl")
        write_detox_jsonl(val, records_out / "validation.jsonl")
    args = DetoxTrainingArguments(
        output_dir=str(output_dir / "checkpoints"),
        model=model,
        lora=lora,
        lora_r=lora_r,
        lora_alpha=lora_alpha,
        lora_targets=lora_targets,
        max_length=max_length,
        num_train_epochs=epochs,
        max_steps=max_steps,
        per_device_train_batch_size=batch_size,
        gradient_accumulation_steps=grad_accum,
        learning_rate=learning_rate,
        save_dtype=save_dtype,
        log_seen_examples=log_seen_examples,
        max_minutes=max_minutes,
        seed=seed,
        save_strategy="steps" if resume or max_steps > 0 else "no",
        save_steps=save_steps,
        save_total_limit=1,
        logging_steps=logging_steps,
        resume_from_checkpoint=_last_checkpoint(output_dir / "checkpoints") if resume else None,
    )
    summary = {"train": summarize(train), "validation": summarize(val), "val_fraction": val_fraction, "seed": seed}
    trained, tokenizer, report = train_detoxifier(args, train, val, summary)
    report["command"] = "mllm-protector " + shlex.join(sys.argv[1:])
    if args.process_index == 0:
        save_detoxifier(trained, tokenizer, output_dir, report, save_dtype)
        render_model_card(output_dir)
        typer.echo(json.dumps({k: report.get(k) for k in ("global_step", "train_loss", "validation_loss_before", "validation_loss", "wall_time_s")}, indent=2))
    _end_distributed()


def _end_distributed() -> None:
    """Under `accelerate launch`: wait for rank 0's save, then close the process group so that no rank exits
    with gloo threads still running (that aborts the process: "terminate called without an active exception")."""
    from accelerate import PartialState

    state = PartialState()
    if state.num_processes > 1:
        state.wait_for_everyone()
        state.destroy_process_group()


def _parse_caps(text: str, sources: set[str]) -> dict[str, int]:
    """'300' → every source capped at 300; 'jailbreakbench=250,matched=150' → those two; '0' → none."""
    text = text.strip()
    if not text or text == "0":
        return {}
    try:
        if "=" not in text:
            return {s: int(text) for s in sources}
        return {k.strip(): int(v) for k, v in (item.split("=", 1) for item in text.split(",") if item.strip())}
    except ValueError as exc:
        raise typer.BadParameter(f"--max-per-source: expected N or 'source=N,...', got {text!r}") from exc


def _last_checkpoint(folder: Path) -> Optional[str]:
    """Newest `checkpoint-N` folder written by the Trainer, or None to start fresh."""
    from transformers.trainer_utils import get_last_checkpoint

    return get_last_checkpoint(str(folder)) if folder.is_dir() else None
