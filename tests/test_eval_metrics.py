"""Evaluation metrics against values computed by hand."""

from __future__ import annotations

import math

import pytest

from mllm_protector.eval.detector_eval import detector_metrics, evaluate_scores
from mllm_protector.eval.metrics import (
    attack_success_rate,
    brier_score,
    detector_report,
    expected_calibration_error,
    rate,
    reliability_curve,
    roc_points,
)

LABELS = [1, 1, 1, 0, 0, 0, 0, 0]
SCORES = [0.95, 0.85, 0.30, 0.60, 0.20, 0.10, 0.05, 0.02]


def test_rate_and_asr():
    assert attack_success_rate([True, False, False, True]) == 0.5
    assert rate([False, False, True]) == pytest.approx(1 / 3)
    assert math.isnan(rate([]))


def test_reliability_curve_bins_by_hand():
    bins = reliability_curve(LABELS, SCORES, n_bins=4)  # [0,.25) [.25,.5) [.5,.75) [.75,1]
    assert [(b["lo"], b["count"]) for b in bins] == [(0.0, 4), (0.25, 1), (0.5, 1), (0.75, 2)]
    assert bins[0]["mean_score"] == pytest.approx((0.20 + 0.10 + 0.05 + 0.02) / 4) and bins[0]["frac_harmful"] == 0
    assert bins[1]["frac_harmful"] == 1.0 and bins[2]["frac_harmful"] == 0.0
    assert bins[3]["mean_score"] == pytest.approx(0.9) and bins[3]["frac_harmful"] == 1.0
    assert reliability_curve([1], [1.0], n_bins=10)[0]["lo"] == 0.9  # 1.0 falls in the last bin


def test_ece_and_brier_by_hand():
    # |0.0925-0|*4 + |0.3-1|*1 + |0.6-0|*1 + |0.9-1|*2 = 0.37 + 0.7 + 0.6 + 0.2 = 1.87 over 8
    assert expected_calibration_error(LABELS, SCORES, n_bins=4) == pytest.approx(1.87 / 8)
    squared = [(0.05) ** 2, (0.15) ** 2, (0.7) ** 2, 0.36, 0.04, 0.01, 0.0025, 0.0004]
    assert brier_score(LABELS, SCORES) == pytest.approx(sum(squared) / 8)
    assert expected_calibration_error([1, 0], [1.0, 0.0]) == 0.0
    assert math.isnan(brier_score([], []))


def test_roc_points_and_thinning():
    roc = roc_points(LABELS, SCORES)
    assert roc["fpr"][0] == 0.0 and roc["tpr"][-1] == 1.0 and roc["fpr"][-1] == 1.0
    assert (0.0, 2 / 3) in list(zip(roc["fpr"], roc["tpr"]))  # two harmful above every harmless
    many = roc_points([i % 2 for i in range(1000)], [i / 1000 for i in range(1000)], max_points=50)
    assert len(many["fpr"]) <= 50 and many["fpr"][0] == 0.0 and many["tpr"][-1] == 1.0
    assert roc_points([0, 0], [0.1, 0.2]) == {"fpr": [], "tpr": []}


def test_detector_metrics_add_calibration_to_the_report():
    m = detector_metrics(LABELS, SCORES, threshold=0.5)
    # at 0.5: flagged 0.95, 0.85 (harmful) and 0.60 (harmless) → tp 2, fp 1, fn 1, tn 4
    assert (m["tp"], m["fp"], m["fn"], m["tn"]) == (2, 1, 1, 4)
    assert m["recall"] == pytest.approx(2 / 3) and m["precision"] == pytest.approx(2 / 3) and m["fpr"] == 0.2
    assert m["auroc"] == pytest.approx(14 / 15)  # harmful 0.30 ranks below one harmless (0.60): 1 of 15 pairs wrong
    assert m["fpr_at_95_recall"] == 0.2  # catching 0.30 also flags 0.60
    assert m["ece"] == pytest.approx(expected_calibration_error(LABELS, SCORES))
    assert {k: m[k] for k in ("auroc", "f1", "accuracy")} == {k: detector_report(LABELS, SCORES, 0.5)[k] for k in ("auroc", "f1", "accuracy")}
    assert len(m["reliability"]) and len(m["roc"]["fpr"])


def test_evaluate_scores_per_source():
    sources = ["a", "a", "b", "a", "b", "c", "c", "c"]
    report = evaluate_scores(LABELS, SCORES, sources, threshold=0.5)
    assert report["overall"]["n"] == 8 and set(report["by_source"]) == {"a", "b", "c"}
    assert report["by_source"]["c"]["harmful"] == 0 and math.isnan(report["by_source"]["c"]["auroc"])
    assert "roc" not in report["by_source"]["c"]  # one class: no curves
    assert report["by_source"]["a"]["fpr"] == 1.0  # its only harmless answer (0.60) is flagged


def test_choose_threshold_respects_the_fpr_cap_on_the_masked_negatives():
    from mllm_protector.eval.metrics import choose_threshold

    labels = [1, 1, 1, 0, 0, 0, 0]
    scores = [0.9, 0.8, 0.3, 0.85, 0.4, 0.2, 0.1]
    # best F1 overall flags 0.3 and up (3 TP, 2 FP); capping the FPR on all negatives at 0 forces t > 0.85
    assert choose_threshold(labels, scores, max_fpr=0.0) > 0.85
    # counted only on the benign mask (the last two negatives), the 0.85 safe-but-unusual answer may be flagged
    benign = [False, False, False, False, False, True, True]
    assert 0.2 < choose_threshold(labels, scores, max_fpr=0.0, fpr_mask=benign) <= 0.3


def test_choose_threshold_cuts_midway_between_scores_so_tiny_backend_differences_keep_the_verdicts():
    from mllm_protector.eval.metrics import choose_threshold

    labels = [1, 1, 0, 0]
    scores = [0.9, 0.7, 0.5, 0.1]
    t = choose_threshold(labels, scores, max_fpr=0.0)
    assert t == 0.6  # midway between the top benign score and the lowest harmful one above it
    # the same answers scored by a backend that differs by 1e-6 (ONNX fp32 vs torch) get the same verdicts
    for shift in (-1e-6, 1e-6):
        assert [s + shift >= t for s in scores] == [True, True, False, False]
