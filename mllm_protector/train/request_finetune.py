"""Training the input guard's request classifier by fine-tuning: LoRA on all-MiniLM-L6-v2 with a 1-output head.

The same trainer as the answer detectors (`train.detector.train_detector`: weighted BCE, class-balanced),
on requests (`data.requests.load_requests`, at most `cap` per source and label, by whole groups) plus their
forms as the input guard sees them: a share of every source's rows also appears as a typographic image
text ("... 1. 2. 3.", FigStep's layout) and after an attack's or a user's question about the image
(`[Text in the image]: ...`), with its own label, so neither the suffix nor the question is a cue.

Hyper-parameters (the learning rate) are chosen leave-sources-out: `FOLDS` groups of source families
(`train.loso.assign_folds`) are held out in turn, a model trained without a fold scores it, and the rate
with the best pooled AUROC wins. The shipped model trains on a group split of every source (85%); its
threshold comes from the other 15% with the trainer's rule (best F1 with the false-positive rate on
benign requests at most `max_fpr`).
"""

from __future__ import annotations

import logging
import random
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from ..data.records import Example
from ..data.requests import IMAGE_TEXT_QUESTIONS, load_requests
from ..data.splits import group_bucket, group_split
from ..detector import DetectorConfig, HarmDetector
from ..eval.metrics import auroc
from ..input_guard import compose_request
from .detector import DetectorTrainingArguments, train_detector
from .loso import assign_folds, family_of
from .probe import sample
from .request_probe import licence_lines, loso_table, table_lines

logger = logging.getLogger(__name__)

#: Folds of source families for the leave-sources-out choice (two: each learning rate costs one training on the
#: whole set, ~5 min on 2 CPU cores; the probe's four folds cost nothing there); share of groups that sets the threshold.
FOLDS = 2
VAL_FRACTION = 0.15
#: Share of each source's rows also seen in each image form (typographic list, question + image text).
FORM_SHARE = 0.15
#: What FigStep prints under its instruction.
TYPO_SUFFIX = " 1. 2. 3."
#: Attack families whose questions are split in halves for the cross-fitted benchmark (`exclude_half`): a model
#: trained without one half scores the images of that half (attack format seen, question not).
CROSSFIT_FAMILIES = ("figstep", "mmsb")
#: Seed of the group hash that assigns each question to a half.
CROSSFIT_SEED = 7


def crossfit_half(group: str) -> int:
    """The half (0 or 1) of FigStep / MM-SafetyBench a question group belongs to."""
    return int(group_bucket(group, CROSSFIT_SEED) >= 0.5)


#: Questions a request in an image comes with (short ones: FigStep's 50-token prompt would push the request out
#: of the first training window; the guard scores the image text alone as well).
FORM_QUESTIONS = IMAGE_TEXT_QUESTIONS


def with_image_forms(examples: Sequence[Example], seed: int, share: float = FORM_SHARE) -> list[Example]:
    """`examples` plus, for a random `share` of them each, the typographic form and the question + image form
    (same label, source and group, so they stay on their example's side of every split)."""
    rng = random.Random(seed)
    out = list(examples)
    for e in examples:
        text = e.response.strip()
        if rng.random() < share:
            out.append(Example(text.rstrip() + TYPO_SUFFIX, e.label, None, e.source, e.group, e.scenario, {**e.meta, "form": "typographic"}))
        if rng.random() < share:
            question = rng.choice(FORM_QUESTIONS)
            out.append(Example(compose_request(question, text), e.label, None, e.source, e.group, e.scenario, {**e.meta, "form": "in_image"}))
    return out


def finetune_args(output_dir: Path, learning_rate: float, epochs: float, max_length: int, batch_size: int,
                  lora_r: int, max_fpr: float, seed: int, backbone: str = "minilm-l6") -> DetectorTrainingArguments:
    """The trainer's arguments for a request classifier (no pairs, no truncation augmentation: requests are short)."""
    return DetectorTrainingArguments(
        output_dir=str(output_dir), backbone=backbone, lora=True, lora_r=lora_r, lora_alpha=2 * lora_r,
        max_length=max_length, stride=max_length // 4, input_format="response", pairwise_weight=0.0,
        truncation_augment=0.0, learning_rate=learning_rate, num_train_epochs=epochs,
        per_device_train_batch_size=batch_size, max_fpr=max_fpr, val_fraction=VAL_FRACTION, seed=seed,
        logging_steps=50, save_strategy="no", report_to="none", disable_tqdm=True, use_cpu=True, train_sampling_strategy="group_by_length")


def loso_scores(train: Sequence[Example], args: DetectorTrainingArguments, folds: int, seed: int) -> np.ndarray:
    """P(harmful) of every row of `train`, each from a model trained without its fold of source families."""
    families = [family_of(e.source) for e in train]
    fold_of = assign_folds(families, folds)
    held = np.array([fold_of[f] for f in families])
    out = np.zeros(len(train))
    for k in range(folds):
        rest = [e for e, f in zip(train, held, strict=True) if f != k]
        idx = np.flatnonzero(held == k)
        logger.info("fold %d/%d: %d training rows, %d held out (%s)", k + 1, folds, len(rest), len(idx),
                    ", ".join(sorted({families[i] for i in idx})))
        model, _ = train_detector(args, with_image_forms(rest, seed))
        out[idx] = model.score([train[int(i)].response for i in idx])
    return out


def train_request_finetune(root: Path, learning_rates: Sequence[float] = (5e-4, 1e-3, 2e-3), epochs: float = 1.0,
                           max_length: int = 64, batch_size: int = 16, lora_r: int = 8, cap: int = 1000,
                           max_fpr: float = 0.02, exclude: Sequence[str] = (), folds: int = FOLDS, seed: int = 0,
                           backbone: str = "minilm-l6", exclude_half: int | None = None) -> tuple[HarmDetector, dict[str, Any]]:
    """Choose the learning rate leave-sources-out, then train on the training share and set the threshold on the
    validation share; `exclude` leaves whole families out of everything (attacks the model never saw);
    `exclude_half` leaves out that half of the FigStep and MM-SafetyBench questions (`crossfit_half`)."""
    t0 = time.time()
    rows = [e for e in sample(load_requests(root), cap, seed) if family_of(e.source) not in set(exclude)
            and not (exclude_half is not None and family_of(e.source) in CROSSFIT_FAMILIES and crossfit_half(e.group) == exclude_half)]
    train, val = group_split(rows, VAL_FRACTION, seed)
    labels = np.array([e.label for e in train])
    families = np.array([family_of(e.source) for e in train])
    runs: dict[float, dict[str, Any]] = {}
    with tempfile.TemporaryDirectory() as tmp:
        for lr in learning_rates:
            args = finetune_args(Path(tmp), lr, epochs, max_length, batch_size, lora_r, max_fpr, seed, backbone)
            probs = loso_scores(train, args, folds, seed) if folds > 1 else np.full(len(train), np.nan)
            runs[lr] = {"probs": probs, "auroc": auroc(labels, probs) if folds > 1 else float("nan")}
            logger.info("learning rate %g: leave-sources-out AUROC %.4f", lr, runs[lr]["auroc"])
        lr = max(runs, key=lambda k: runs[k]["auroc"]) if folds > 1 else learning_rates[0]
        args = finetune_args(Path(tmp), lr, epochs, max_length, batch_size, lora_r, max_fpr, seed, backbone)
        detector, report = train_detector(args, with_image_forms(train, seed), validation=with_image_forms(val, seed + 1))
    threshold = detector.threshold
    loso: dict[str, Any] = {"folds": folds, "excluded": list(exclude), "excluded_half": exclude_half, "learning_rate": lr, "threshold": threshold,
                            "max_fpr": max_fpr, "lr_grid": {str(k): v["auroc"] for k, v in runs.items()}}
    if folds > 1:
        probs = runs[lr]["probs"]
        loso.update(pooled_auroc=runs[lr]["auroc"], folds_of=assign_folds(list(families), folds),
                    by_family=loso_table(families, labels, probs, threshold))
    val_scores = np.array(detector.score([e.response for e in val]))
    val_families, val_labels = np.array([family_of(e.source) for e in val]), np.array([e.label for e in val])
    loso["heldout_by_source"] = loso_table(val_families, val_labels, val_scores, threshold)
    detector.config.metrics = {"loso": loso, "validation": report.get("validation", {}).get("overall", {})}
    detector.config.training.update({
        "task": "request classifier (input guard), LoRA fine-tune",
        "by_source": {s: {"harmful": int(((families == s) & (labels == 1)).sum()), "harmless": int(((families == s) & (labels == 0)).sum())}
                      for s in sorted(set(families))},
        "form_share": FORM_SHARE, "cap": cap})
    return detector, {"loso": loso, "train": {k: v for k, v in report.items() if k != "validation"},
                      "validation": report.get("validation", {}), "wall_s": time.time() - t0}


def finetune_model_card(config: DetectorConfig) -> str:
    """README.md of a fine-tuned request classifier: data and licences, the leave-sources-out table, threshold rule."""
    loso, training = config.metrics["loso"], config.training
    args = training.get("arguments", {})
    lines = ["# Input guard request classifier (LoRA fine-tune)", "",
             "Scores a *request* with P(harmful): the input guard scores the user's text, the text read from its image, "
             "and both together (marked `[Text in the image]:`), and keeps the highest. all-MiniLM-L6-v2 with a LoRA adapter "
             f"(r = {args.get('lora_r')}, alpha = {args.get('lora_alpha')}) and a 1-output head, trained with the project's "
             f"detector trainer (weighted BCE, class-balanced; max_length {args.get('max_length')}, batch "
             f"{args.get('per_device_train_batch_size')}, {args.get('num_train_epochs')} epoch(s), learning rate {loso['learning_rate']}).", "",
             f"Trained with: `{training.get('command', '')}`"
             + (f"; category head ({', '.join(config.categories)}) attached from a probe with "
                f"`{training['categories']['command']}`" if training.get("categories") else ""), "",
             f"Threshold **{config.threshold:.4f}**: the trainer's rule on a held-out {VAL_FRACTION:.0%} of the question groups "
             f"of every training source (best F1 with the false-positive rate on the benign requests at most {loso['max_fpr']:.0%}). "
             "The learning rate is the one with the best pooled leave-sources-out AUROC among "
             + ", ".join(f"{k} ({v:.3f})" for k, v in loso["lr_grid"].items()) + "."
             + (f" Families left out of training: {', '.join(loso['excluded'])}." if loso.get("excluded") else ""), "",
             "Benchmark (OCR + this classifier on FigStep, MM-SafetyBench TYPO and benign sets): `docs/results/input_guard.md`; "
             "FigStep and TYPO detection of a classifier that never saw them comes from the same command with "
             "`--exclude figstep --exclude mmsb --folds 0` (the benchmark's `--holdout-model`).", "",
             "## Held-out groups of the training sources (threshold above)", "",
             "| source | harmful | benign | recall | FPR | AUROC |", "|---|---|---|---|---|---|"]
    lines += table_lines(loso["heldout_by_source"])
    if "by_family" in loso:
        folds: dict[str, int] = loso["folds_of"]
        lines += ["", f"## Leave-sources-out ({loso['folds']} folds of source families; each family scored by a model trained "
                  "without its fold, same threshold): what a source never seen in training meets", "",
                  "Folds: " + "; ".join(f"{k + 1}: " + ", ".join(sorted(f for f, n in folds.items() if n == k)) for k in range(loso["folds"]))
                  + f". Pooled AUROC {loso['pooled_auroc']:.3f}.", "",
                  "| family | harmful | benign | recall | FPR | AUROC |", "|---|---|---|---|---|---|"]
        lines += table_lines(loso["by_family"])
    lines += ["", "## Training data and licences", "",
              f"Rows per source (harmful / harmless) in the training share, after sampling at most {training.get('cap')} per source and "
              f"label by whole question groups; {training.get('form_share', 0):.0%} of each source's rows are also seen as a "
              "typographic image text (`... 1. 2. 3.`, FigStep's layout) and as much again after a question about the image "
              "(`[Text in the image]: ...`), with their own label. MM-SafetyBench rows are its questions and key phrases, FigStep "
              "rows its questions and instructions (FigStep labels Legal Opinion, Financial Advice and Health Consultation "
              "requests harmful, as MM-SafetyBench scenarios 10-12: the model learns that label). `own_image_text` and `own_scary` "
              "are benign rows written for this project from templates (`mllm_protector/data/benign_phrases.py`): signage, labels, "
              "menus, slides and notes; technical, historical, safety, fiction and game requests with violent words. They are "
              "not the evaluation sets (`benchmarks/fixtures/benign_text_images.jsonl`, `tests/fixtures/benign_scary_requests.txt`), "
              "and a fifth of the benign instructions (by group hash) is held out for the evaluation and never trained on.", "",
              "| source | harmful | harmless | licence |", "|---|---|---|---|"]
    return "\n".join(lines + licence_lines(training["by_source"]))

