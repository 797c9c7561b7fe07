"""Leave-sources-out evaluation of *fine-tuned* detectors (full or LoRA), on the LOSO corpus cache.

Fine-tuning a model per held-out family (16+ runs) does not fit two CPU cores, so every source family
(benign and single-label ones included) is assigned to one of K folds, balanced by size, and a detector
fine-tuned on the other K-1 folds scores the held-out fold. Each family is thus scored by a model that
never saw it (stricter than LOSO: with K=2, half of the sources are missing from each training run). The
pooled out-of-fold scores then go through the same threshold rule and summary as the probe experiments.
Results land in `<features>/finetune_<name>.json`, which `detector_loso.py` adds to its table.
Usage: python benchmarks/detector_loso_finetune.py --features runs/loso --name full --lora false
"""

from __future__ import annotations

import argparse
import json
import logging
import shlex
import sys
import tempfile
import time
from collections import defaultdict
from pathlib import Path

import numpy as np
import torch

from mllm_protector.data.records import Example
from mllm_protector.detector import HarmDetector
from mllm_protector.train.detector import DetectorTrainingArguments, save_detector, train_detector
from mllm_protector.train.loso import Data, assign_folds, choose_transfer_threshold, summarize
from mllm_protector.train.probe import sample


def to_examples(data: Data, idx: np.ndarray) -> list[Example]:
    rows = [data.rows[i] for i in idx]
    return [Example(r["response"], r["label"], r["query"], r["source"], r["group"], r.get("scenario"),
                    {"lang": r.get("lang", "en")}) for r in rows]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--features", type=Path, default=Path("runs/loso"))
    parser.add_argument("--name", required=True, help="result name, e.g. full or lora")
    parser.add_argument("--lora", choices=["true", "false"], default="false")
    parser.add_argument("--folds", type=int, default=2)
    parser.add_argument("--cap", type=int, default=300, help="training rows per English (source, label); other languages cap/4")
    parser.add_argument("--epochs", type=float, default=1.0)
    parser.add_argument("--learning-rate", type=float, default=None)
    parser.add_argument("--input-format", choices=["response", "query_response"], default="response")
    parser.add_argument("--max-length", type=int, default=128)
    parser.add_argument("--score-cap", type=int, default=200, help="held-out rows scored per (family, label), as the baseline row")
    parser.add_argument("--final", type=Path, default=None, help="then train on every family and save the detector here")
    parser.add_argument("--final-only", action="store_true", help="skip the folds: reuse the saved run's threshold for --final")
    parser.add_argument("--only-fold", type=int, default=None, help="run one fold (for a quick check)")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    torch.set_num_threads(2)
    data = Data.load(args.features)
    folds = assign_folds(data.families, args.folds)
    fold_of = np.array([folds[f] for f in data.families])
    logits = np.full(len(data.rows), np.nan)
    scored = data.stratified(args.score_cap)
    lora, lr = args.lora == "true", learning_rate(args)
    out = args.features / f"finetune_{args.name}.json"
    if args.final_only:
        if args.final is None:
            parser.error("--final-only needs --final")
        save_final(args, data, json.loads(out.read_text()))
        return
    t0 = time.time()
    per_fold = []
    score_ms: list[float] = []
    for fold in range(args.folds):
        if args.only_fold is not None and fold != args.only_fold:
            continue
        tf = time.time()
        train = sample(to_examples(data, np.flatnonzero(fold_of != fold)), args.cap, seed=fold)
        test = np.flatnonzero((fold_of == fold) & scored)
        detector, _ = fine_tune(args, train, seed=fold)
        rows = [data.rows[i] for i in test]
        ts = time.perf_counter()
        scores = np.clip(np.array(detector.score([r["response"] for r in rows], [r["query"] for r in rows])), 1e-7, 1 - 1e-7)
        score_ms.append((time.perf_counter() - ts) * 1000 / len(rows))
        logits[test] = np.log(scores / (1 - scores))
        per_fold.append({"fold": fold, "families": sorted(f for f, k in folds.items() if k == fold),
                         "train_examples": len(train), "test_examples": len(test), "wall_s": time.time() - tf})
        logging.info("fold %d: %d train, %d test, %.0f s", fold, len(train), len(test), time.time() - tf)
    done = ~np.isnan(logits)
    sub = data.subset(np.flatnonzero(done))
    threshold = choose_transfer_threshold(sub, logits[done])
    result = {**summarize(sub, logits[done], threshold), "wall_s": time.time() - t0, "c": None, "variants": [],
              "train": f"{args.folds}-fold leave-sources-out, cap {args.cap}, ≤{args.score_cap} scored per family and label", "folds": per_fold,
              "ms_per_answer": float(np.mean(score_ms)), "lora": lora, "learning_rate": lr, "epochs": args.epochs,
              "input_format": args.input_format, "command": "python " + shlex.join(sys.argv)}
    out.write_text(json.dumps(result, indent=1, default=float) + "\n")
    np.save(args.features / f"finetune_{args.name}_logits.npy", logits)
    print(f"{args.name}: mean {result['loso_mean_auroc']:.3f} worst {result['loso_worst_auroc']:.3f} "
          f"({result['loso_worst_family']}), {time.time() - t0:.0f} s")
    if args.final:
        save_final(args, data, result)


def learning_rate(args: argparse.Namespace) -> float:
    return float(args.learning_rate or (3e-4 if args.lora == "true" else 4e-5))


def fine_tune(args: argparse.Namespace, train: list[Example], seed: int) -> tuple[HarmDetector, dict]:
    """One detector fine-tuned on `train` with the run's settings (no ranking pairs: the sets have none)."""
    with tempfile.TemporaryDirectory() as tmp:
        targs = DetectorTrainingArguments(
            output_dir=tmp, lora=args.lora == "true", learning_rate=learning_rate(args), num_train_epochs=args.epochs,
            max_length=args.max_length, stride=32, input_format=args.input_format, pairwise_weight=0.0,
            per_device_train_batch_size=16, logging_steps=50, seed=seed, use_cpu=True, disable_tqdm=True,
        )
        return train_detector(targs, train)


def save_final(args: argparse.Namespace, data: Data, result: dict) -> None:
    """Train on every family with the same settings and save it with the threshold the held-out folds chose."""
    train = sample(to_examples(data, np.arange(len(data.rows))), args.cap, seed=args.folds)
    detector, report = fine_tune(args, train, seed=args.folds)
    detector.config.threshold = float(result["threshold"])
    summary = {k: v for k, v in result.items() if k not in ("by_family", "by_lang")}
    detector.config.metrics = {"loso": result}
    by_source: dict[str, dict[str, int]] = defaultdict(lambda: {"harmful": 0, "harmless": 0})
    for e in train:
        by_source[e.source]["harmful" if e.label else "harmless"] += 1
    detector.config.training = {"command": "python " + shlex.join(sys.argv), "evaluation": result["command"],
                                "train_examples": len(train), "by_source": dict(sorted(by_source.items())),
                                "arguments": {"lora": args.lora == "true", "learning_rate": learning_rate(args),
                                              "epochs": args.epochs, "max_length": args.max_length, "cap": args.cap,
                                              "input_format": args.input_format}}
    save_detector(detector, args.final, {**report, "leave_sources_out": summary})
    print(f"saved {args.final} (threshold {detector.config.threshold:.3f})")


if __name__ == "__main__":
    main()
