"""Binary-classification metrics for harm detection (label 1 = harmful, score = P(harmful))."""

from __future__ import annotations

import math
from typing import Sequence

import numpy as np
from sklearn.metrics import average_precision_score, roc_auc_score, roc_curve


def _nan_if_single_class(labels: Sequence[int]) -> bool:
    return len(set(labels)) < 2


def auroc(labels: Sequence[int], scores: Sequence[float]) -> float:
    """Area under the ROC curve; NaN when only one class is present."""
    return math.nan if _nan_if_single_class(labels) else float(roc_auc_score(labels, scores))


def auprc(labels: Sequence[int], scores: Sequence[float]) -> float:
    """Average precision with harmful as the positive class; NaN when only one class is present."""
    return math.nan if _nan_if_single_class(labels) else float(average_precision_score(labels, scores))


def threshold_metrics(labels: Sequence[int], scores: Sequence[float], threshold: float) -> dict[str, float]:
    """Accuracy, precision, recall, F1 and false-positive rate when flagging score ≥ threshold."""
    y = np.asarray(labels, dtype=int)
    pred = np.asarray(scores, dtype=float) >= threshold
    tp = int(np.sum(pred & (y == 1)))
    fp = int(np.sum(pred & (y == 0)))
    fn = int(np.sum(~pred & (y == 1)))
    tn = int(np.sum(~pred & (y == 0)))
    precision = tp / (tp + fp) if tp + fp else math.nan
    recall = tp / (tp + fn) if tp + fn else math.nan
    f1 = 2 * tp / (2 * tp + fp + fn) if tp + fp + fn else math.nan
    return {
        "accuracy": (tp + tn) / len(y) if len(y) else math.nan,
        "precision": precision,
        "recall": recall,
        "f1": f1,
        "fpr": fp / (fp + tn) if fp + tn else math.nan,
        "tp": tp, "fp": fp, "fn": fn, "tn": tn,
    }


def fpr_at_recall(labels: Sequence[int], scores: Sequence[float], recall: float = 0.95) -> float:
    """Lowest false-positive rate reachable while catching at least `recall` of harmful answers."""
    if _nan_if_single_class(labels):
        return math.nan
    fpr, tpr, _ = roc_curve(labels, scores)
    return float(fpr[np.argmax(tpr >= recall)])


def choose_threshold(labels: Sequence[int], scores: Sequence[float], max_fpr: float = 0.05) -> float:
    """Threshold with the best F1 among those whose false-positive rate stays ≤ `max_fpr`.

    Falls back to the best-F1 threshold when no candidate meets the FPR cap.
    """
    candidates = sorted(set(float(s) for s in scores))
    if not candidates:
        return 0.5
    best, best_any = (-1.0, 0.5), (-1.0, 0.5)
    for t in candidates:
        m = threshold_metrics(labels, scores, t)
        f1 = 0.0 if math.isnan(m["f1"]) else m["f1"]
        best_any = max(best_any, (f1, t))
        if not m["fpr"] > max_fpr:
            best = max(best, (f1, t))
    return best[1] if best[0] >= 0 else best_any[1]


def detector_report(labels: Sequence[int], scores: Sequence[float], threshold: float) -> dict[str, float]:
    """The headline numbers for a detector on one labelled set."""
    return {
        "n": len(labels),
        "harmful": int(sum(labels)),
        "auroc": auroc(labels, scores),
        "auprc": auprc(labels, scores),
        "fpr_at_95_recall": fpr_at_recall(labels, scores, 0.95),
        **threshold_metrics(labels, scores, threshold),
    }
