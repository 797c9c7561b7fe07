"""Training the input guard's request classifier: a probe detector (frozen backbone + linear heads) on requests.

Same machinery as the answer probe (`train.probe`, `train.loso`): pooled MiniLM features cached once,
source-balanced logistic-regression heads. The L2 strength `c` is chosen leave-sources-out (`FOLDS`
groups of source families held out in turn, as the fine-tuned answer detectors are judged); most request
sources hold one label, so that table reports recall on harmful families and the false-positive rate on
benign ones. The threshold is chosen on held-out scores of unseen questions of the known sources (a
`GROUP_FOLDS`-fold split by question group): the best macro recall over harmful sources with the pooled
false-positive rate on benign requests at most `max_fpr`.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
from scipy.special import expit

from ..data.records import Example
from ..data.requests import load_requests, request_category
from ..detector import DetectorConfig, HarmDetector
from ..eval.metrics import auroc
from ..probe import build_probe
from .loso import Data, loso_scores
from .probe import balanced_weights, build_feature_cache, cache_backbone, fit_category_head, fit_head, install_heads, sample

logger = logging.getLogger(__name__)

#: Inverse L2 strengths compared leave-sources-out; folds of source families; folds of question groups.
C_GRID = (0.01, 0.05, 0.2)
FOLDS = 4
GROUP_FOLDS = 5
VARIANT = "response"  # the request is the scored text


def build_request_cache(root: Path, out: Path, cap: int, seed: int, backbone: str = "minilm-l6") -> None:
    """Sample the labelled requests (at most `cap` per source and label, by whole groups) and cache their features."""
    build_feature_cache(sample(load_requests(root), cap, seed), out, backbone, [VARIANT])


def _categories(data: Data) -> list[str | None]:
    return [request_category(Example(r["response"], r["label"], None, r["source"], r["group"], r.get("scenario")))
            for r in data.rows]


def group_fold_scores(data: Data, keep: np.ndarray, c: float) -> np.ndarray:
    """Held-out logit of every row from a head fitted on the other question-group folds (kept rows only)."""
    from ..data.splits import group_bucket

    fold = np.array([int(group_bucket(r["group"], 1) * GROUP_FOLDS) for r in data.rows])
    x, out = data.matrix([VARIANT]), np.zeros(len(data.rows))
    for k in range(GROUP_FOLDS):
        test, train = fold == k, keep & (fold != k)
        mean, scale, head = fit_head(x[train], data.labels[train], balanced_weights(data.sources[train], data.labels[train]), c)
        out[test] = head.decision_function((x[test] - mean) / scale)
    return out


def choose_threshold(data: Data, probs: np.ndarray, max_fpr: float, keep: np.ndarray) -> tuple[float, float]:
    """(threshold, macro recall): best macro recall over the kept harmful sources with the pooled FPR on kept
    benign requests at most `max_fpr`."""
    benign = keep & (data.labels == 0)
    harm = [np.flatnonzero(keep & (data.sources == s) & (data.labels == 1)) for s in sorted(set(data.sources[keep]))]
    harm = [i for i in harm if len(i)]
    best = (-1.0, 1.0)
    for t in np.unique(np.quantile(probs[keep], np.linspace(0.0, 1.0, 2001))):
        if (probs[benign] >= t).mean() <= max_fpr:
            best = max(best, (float(np.mean([(probs[i] >= t).mean() for i in harm])), float(t)))
    return best[1], best[0]


def loso_table(families: np.ndarray, labels: np.ndarray, probs: np.ndarray, threshold: float) -> dict[str, dict[str, Any]]:
    """Per held-out family: rows of each label, recall (harmful rows), FPR (benign rows), AUROC (both labels)."""
    table = {}
    for fam in sorted(set(families)):
        idx = np.flatnonzero(families == fam)
        y, p = labels[idx], probs[idx]
        row: dict[str, Any] = {"harmful": int(y.sum()), "benign": int((1 - y).sum())}
        if y.any():
            row["recall"] = float((p[y == 1] >= threshold).mean())
        if (1 - y).any():
            row["fpr"] = float((p[y == 0] >= threshold).mean())
        if 0 < y.sum() < len(y):
            row["auroc"] = auroc(y, p)
        table[fam] = row
    return table


def train_request_probe(cache: Path, max_fpr: float = 0.02, exclude: Sequence[str] = (), max_length: int = 128,
                        stride: int = 32) -> tuple[HarmDetector, dict[str, Any]]:
    """Choose `c` leave-sources-out and the threshold on held-out questions, then fit the heads on every row;
    `exclude` leaves whole families out of training and of the threshold choice (attacks it never saw)."""
    backbone, layers = cache_backbone(cache)
    data = Data.load(cache)
    keep = ~np.isin(data.families, list(exclude))
    t0 = time.time()
    runs = {}
    for c in C_GRID:
        probs = expit(loso_scores(data, [VARIANT], keep, c, folds=FOLDS))
        runs[c] = {"auroc": auroc(data.labels[keep], probs[keep]), "probs": probs}
        logger.info("c=%g: leave-sources-out AUROC %.3f", c, runs[c]["auroc"])
    c = max(runs, key=lambda k: runs[k]["auroc"])
    held = expit(group_fold_scores(data, keep, c))
    threshold, recall = choose_threshold(data, held, max_fpr, keep)
    benign = keep & (data.labels == 0)
    x = data.matrix([VARIANT])[keep]
    labels, sources = data.labels[keep], data.sources[keep]
    mean, scale, harm = fit_head(x, labels, balanced_weights(sources, labels), c)
    cats = [cat for cat, kept in zip(_categories(data), keep, strict=True) if kept]
    category, names = fit_category_head(x, cats, mean, scale, c)
    probe = build_probe(backbone, layers, len(names))
    install_heads(probe, mean, scale, harm, category)
    loso = {"c": c, "folds": FOLDS, "excluded": list(exclude), "threshold": threshold, "max_fpr": max_fpr,
            "heldout_macro_recall": recall, "heldout_benign_fpr": float((held[benign] >= threshold).mean()),
            "heldout_auroc": auroc(data.labels[keep], held[keep]), "pooled_auroc": runs[c]["auroc"],
            "by_family": loso_table(data.families, data.labels, runs[c]["probs"], threshold),
            "heldout_by_source": loso_table(data.families, data.labels, held, threshold),
            "c_grid": {str(k): v["auroc"] for k, v in runs.items()}}
    config = DetectorConfig(backbone=backbone, threshold=threshold, max_length=max_length, stride=stride,
                            input_format="response", lora=False, kind="probe", layers=layers, categories=names, combine="max")
    config.metrics = {"loso": loso}
    config.training = {"task": "request classifier (input guard)", "features": str(cache), "examples": int(keep.sum()),
                       "by_source": {s: {"harmful": int(((sources == s) & (labels == 1)).sum()),
                                         "harmless": int(((sources == s) & (labels == 0)).sum())}
                                     for s in sorted(set(sources))},
                       "category_examples": sum(1 for cat in cats if cat)}
    from ..models import load_tokenizer

    return HarmDetector(probe, load_tokenizer(backbone), config, device="cpu"), {"loso": loso, "wall_s": time.time() - t0}


#: Licence of each training source (from the data folder's MANIFESTs), for the model card.
LICENCES = {
    "advbench": "MIT", "strongreject": "MIT", "harmfulqa": "Apache-2.0", "catqa": "Apache-2.0", "dangerousqa": "Apache-2.0",
    "harmbench": "MIT", "mmsb": "CC BY-NC 4.0 (research only)", "figstep": "MIT", "vlguard": "none stated (see the HF card)",
    "jailbreakbench": "MIT", "stl_harmful": "CC BY-NC 4.0", "stl_alpaca": "CC BY-NC 4.0",
    "benign_instructions": "derived from Alpaca, CC BY-NC 4.0", "benign_questions": "derived from Alpaca, CC BY-NC 4.0", "attack_templates": "FigStep MIT; MM-SafetyBench CC BY-NC 4.0", "vicuna80": "Apache-2.0",
    "llava": "Apache-2.0 code; GPT-4 text under OpenAI terms", "mm_vet": "research use",
    "own_image_text": "written for this project (`data.benign_phrases`)", "own_scary": "written for this project (`data.benign_phrases`)",
}


def model_card(config: DetectorConfig) -> str:
    """README.md of a saved request classifier: data and licences, the leave-one-source-out table, thresholds."""
    loso, training = config.metrics["loso"], config.training
    lines = ["# Input guard request classifier", "",
             "Scores a *request* with P(harmful): the input guard scores the user's text, the text read from its image, "
             "and both together (marked `[Text in the image]:`), and keeps the highest. A probe: frozen all-MiniLM-L6-v2, mean-pooled layers "
             f"{', '.join(map(str, config.layers))}, a logistic-regression harm head and a category head "
             f"({', '.join(config.categories)}).", "",
             f"Trained with: `{training.get('command', '')}`", "",
             f"Threshold **{config.threshold:.4f}**, chosen on held-out scores of unseen questions of the training "
             f"sources ({GROUP_FOLDS}-fold split by question group): the best macro recall over harmful sources with the "
             f"pooled false-positive rate on benign requests at most {loso['max_fpr']:.0%} (held-out macro recall "
             f"{loso['heldout_macro_recall']:.3f}, benign FPR {loso['heldout_benign_fpr']:.3f}, AUROC {loso['heldout_auroc']:.3f}). "
             f"c = {loso['c']}: the best leave-sources-out AUROC among "
             + ", ".join(f"{k} ({v:.3f})" for k, v in loso["c_grid"].items()) + "."
             + (f" Families left out of training: {', '.join(loso['excluded'])}." if loso.get("excluded") else ""), "",
             "## Held-out questions of the training sources (threshold above)", "",
             "| source | harmful | benign | recall | FPR |", "|---|---|---|---|---|"]
    lines += table_lines(loso["heldout_by_source"], ("recall", "fpr"))
    lines += ["", f"## Leave-sources-out ({loso['folds']} folds of source families; each family scored by a head trained "
              "without its fold, same threshold): what a source never seen in training meets", "",
              "| family | harmful | benign | recall | FPR | AUROC |", "|---|---|---|---|---|---|"]
    lines += table_lines(loso["by_family"])
    lines += ["", "## Training data and licences", "",
              "Rows per source (harmful / harmless) after sampling (at most 2,500 per source and label, by whole "
              "question groups). MM-SafetyBench rows are its questions and their key phrases (what a TYPO image "
              "shows), FigStep rows its questions and their instructions (what its image shows); `attack_templates` "
              "are the attacks' own text prompts, harmless without the image. A fifth of the benign instructions "
              "(by group hash) is held out for the evaluation and never trained on.", "",
              "| source | harmful | harmless | licence |", "|---|---|---|---|"]
    return "\n".join(lines + licence_lines(training["by_source"]))


def table_lines(table: dict[str, dict[str, Any]], keys: tuple[str, ...] = ("recall", "fpr", "auroc")) -> list[str]:
    """Markdown rows of a `loso_table`: family, rows of each label, then `keys` (– where absent)."""
    return [f"| {fam} | {row['harmful']} | {row['benign']} | " + " | ".join(f"{row[k]:.3f}" if k in row else "–" for k in keys) + " |"
            for fam, row in table.items()]


def licence_lines(by_source: dict[str, dict[str, int]]) -> list[str]:
    """Model-card rows per training source (harmful / harmless / licence) and the non-commercial notice."""
    lines = [f"| {source} | {counts['harmful']} | {counts['harmless']} | {LICENCES.get(source, 'see its MANIFEST')} |"
             for source, counts in by_source.items()]
    return lines + ["", "Several sets are CC BY-NC 4.0 or research-only: **this classifier is for research / non-commercial "
                    "use**. Retrain on your own data (`mllm-protector train input-guard`) for commercial use.", ""]
