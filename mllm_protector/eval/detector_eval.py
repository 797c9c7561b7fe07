"""Detector evaluation on labelled answers: ranking, threshold metrics, calibration, per-source breakdown."""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Sequence
from typing import Any

from .metrics import brier_score, detector_report, expected_calibration_error, reliability_curve, roc_points


def detector_metrics(labels: Sequence[int], scores: Sequence[float], threshold: float, curves: bool = True) -> dict[str, Any]:
    """`detector_report` (AUROC, AUPRC, F1, accuracy, precision/recall/FPR at `threshold`, FPR at 95%
    recall) plus ECE and Brier score; with `curves`, the reliability bins and ROC points for plots."""
    out: dict[str, Any] = {
        **detector_report(list(labels), list(scores), threshold),
        "ece": expected_calibration_error(labels, scores),
        "brier": brier_score(labels, scores),
    }
    if curves:
        out["reliability"] = reliability_curve(labels, scores)
        out["roc"] = roc_points(labels, scores)
    return out


def evaluate_scores(
    labels: Sequence[int],
    scores: Sequence[float],
    sources: Sequence[str],
    threshold: float,
) -> dict[str, Any]:
    """Overall metrics with curves, and per-source metrics (curves only for sources with both classes)."""
    by_source: dict[str, list[int]] = defaultdict(list)
    for i, source in enumerate(sources):
        by_source[source].append(i)
    per_source = {}
    for source, idx in sorted(by_source.items()):
        y = [labels[i] for i in idx]
        per_source[source] = detector_metrics(y, [scores[i] for i in idx], threshold, curves=len(set(y)) > 1)
    return {"overall": detector_metrics(labels, scores, threshold), "by_source": per_source}


def evaluate_detector(detector: Any, examples: Sequence[Any], batch_size: int = 32) -> tuple[list[float], dict[str, Any]]:
    """Score labelled `Example`s with `detector` and evaluate at its saved threshold."""
    queries = [e.query for e in examples] if detector.config.input_format == "query_response" else None
    scores = detector.score([e.response for e in examples], queries, batch_size=batch_size)
    report = evaluate_scores([e.label for e in examples], scores, [e.source for e in examples], detector.threshold)
    return scores, report


def describe_detector(detector: Any, name: str) -> dict[str, Any]:
    """What a report says about the detector: name, backbone, threshold, input format, how it was trained."""
    config = detector.config
    training = getattr(config, "training", None) or {}
    args = training.get("arguments", {})
    return {
        "name": str(name),
        "backbone": config.backbone,
        "threshold": config.threshold,
        "input_format": config.input_format,
        "max_length": config.max_length,
        "val_fraction": args.get("val_fraction"),
        "seed": args.get("seed"),
        "command": training.get("command"),
        "train_examples": training.get("train_examples"),
        "validation_examples": training.get("validation_examples"),
        "recorded_validation": {k: v for k, v in (config.metrics or {}).get("overall", {}).items()
                                if k in ("n", "auroc", "auprc", "f1", "recall", "fpr", "fpr_at_95_recall")},
    }
