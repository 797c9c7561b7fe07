"""Binary-classification metrics for harm detection (label 1 = harmful, score = P(harmful))."""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
from sklearn.metrics import average_precision_score, roc_auc_score, roc_curve

#: Labels (0/1) or scores: a list or a NumPy array.
Labels = Sequence[int] | np.ndarray
Scores = Sequence[float] | np.ndarray


def _nan_if_single_class(labels: Labels) -> bool:
    return len(set(labels)) < 2


def auroc(labels: Labels, scores: Scores) -> float:
    """Area under the ROC curve; NaN when only one class is present."""
    return math.nan if _nan_if_single_class(labels) else float(roc_auc_score(labels, scores))


def auprc(labels: Labels, scores: Scores) -> float:
    """Average precision with harmful as the positive class; NaN when only one class is present."""
    return math.nan if _nan_if_single_class(labels) else float(average_precision_score(labels, scores))


def threshold_metrics(labels: Labels, scores: Scores, threshold: float) -> dict[str, float]:
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


def fpr_at_recall(labels: Labels, scores: Scores, recall: float = 0.95) -> float:
    """Lowest false-positive rate reachable while catching at least `recall` of harmful answers."""
    if _nan_if_single_class(labels):
        return math.nan
    fpr, tpr, _ = roc_curve(labels, scores)
    return float(fpr[np.argmax(tpr >= recall)])


def choose_threshold(
    labels: Labels, scores: Scores, max_fpr: float = 0.05, fpr_mask: Sequence[bool] | None = None
) -> float:
    """Threshold with the best F1 among those whose false-positive rate stays ≤ `max_fpr`.

    The FPR is measured on the harmless examples selected by `fpr_mask` (e.g. benign traffic) when
    given, else on all harmless examples. Falls back to the best-F1 threshold when none meets the cap.
    """
    y = np.asarray(labels, dtype=int)
    s = np.asarray(scores, dtype=float)
    if not len(s):
        return 0.5
    negatives = (y == 0) & (np.asarray(fpr_mask, dtype=bool) if fpr_mask is not None else True)
    best, best_any = (-1.0, 0.5), (-1.0, 0.5)
    # Cut between neighbouring distinct scores, at the midpoint (not one ulp above a score): a backend whose
    # scores differ by ~1e-7 (ONNX vs torch) then makes the same decisions. Plus "flag all" and "flag none".
    distinct = np.unique(s)
    cuts = np.concatenate([distinct[:1], (distinct[:-1] + distinct[1:]) / 2, np.nextafter(distinct[-1:], np.inf)])
    for t in cuts:
        pred = s >= t
        tp, fp, fn = int(np.sum(pred & (y == 1))), int(np.sum(pred & (y == 0))), int(np.sum(~pred & (y == 1)))
        f1 = 2 * tp / (2 * tp + fp + fn) if tp + fp + fn else 0.0
        best_any = max(best_any, (f1, float(t)))
        if not negatives.any() or np.sum(pred & negatives) / np.sum(negatives) <= max_fpr:
            best = max(best, (f1, float(t)))
    return best[1] if best[0] >= 0 else best_any[1]


def detector_report(labels: Labels, scores: Scores, threshold: float) -> dict[str, float]:
    """The headline numbers for a detector on one labelled set."""
    return {
        "n": len(labels),
        "harmful": int(sum(labels)),
        "auroc": auroc(labels, scores),
        "auprc": auprc(labels, scores),
        "fpr_at_95_recall": fpr_at_recall(labels, scores, 0.95),
        **threshold_metrics(labels, scores, threshold),
    }


# ---------------------------------------------------------------- evaluation helpers (attack success, calibration)


def rate(flags: Sequence[bool]) -> float:
    """Fraction of True values; NaN for an empty list."""
    return sum(bool(f) for f in flags) / len(flags) if len(flags) else math.nan


def attack_success_rate(unsafe: Sequence[bool]) -> float:
    """ASR: the fraction of answers to harmful prompts that a judge (or stored label) marks unsafe."""
    return rate(unsafe)


def reliability_curve(labels: Labels, scores: Scores, n_bins: int = 10) -> list[dict[str, float]]:
    """Equal-width bins of P(harmful): per non-empty bin its range, count, mean score and harmful fraction.

    A calibrated detector has `mean_score` ≈ `frac_harmful` in every bin. The last bin includes 1.0.
    """
    y = np.asarray(labels, dtype=float)
    s = np.clip(np.asarray(scores, dtype=float), 0.0, 1.0)
    index = np.minimum((s * n_bins).astype(int), n_bins - 1)
    bins = []
    for b in range(n_bins):
        mask = index == b
        if mask.any():
            bins.append({"lo": b / n_bins, "hi": (b + 1) / n_bins, "count": int(mask.sum()),
                         "mean_score": float(s[mask].mean()), "frac_harmful": float(y[mask].mean())})
    return bins


def expected_calibration_error(labels: Labels, scores: Scores, n_bins: int = 10) -> float:
    """Count-weighted mean |mean score − harmful fraction| over the reliability bins; NaN when empty."""
    bins = reliability_curve(labels, scores, n_bins)
    total = sum(b["count"] for b in bins)
    if not total:
        return math.nan
    return float(sum(b["count"] * abs(b["mean_score"] - b["frac_harmful"]) for b in bins) / total)


def brier_score(labels: Labels, scores: Scores) -> float:
    """Mean squared error between P(harmful) and the 0/1 label; NaN when empty."""
    if not len(labels):
        return math.nan
    return float(np.mean((np.asarray(scores, dtype=float) - np.asarray(labels, dtype=float)) ** 2))


def roc_points(labels: Labels, scores: Scores, max_points: int = 200) -> dict[str, list[float]]:
    """ROC curve as {fpr, tpr} lists, thinned to at most `max_points` (ends kept); empty for one class."""
    if _nan_if_single_class(labels):
        return {"fpr": [], "tpr": []}
    fpr, tpr, _ = roc_curve(labels, scores)
    if len(fpr) > max_points:
        keep = np.unique(np.linspace(0, len(fpr) - 1, max_points).round().astype(int))
        fpr, tpr = fpr[keep], tpr[keep]
    return {"fpr": [float(x) for x in fpr], "tpr": [float(x) for x in tpr]}
