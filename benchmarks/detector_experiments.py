#!/usr/bin/env python
"""How well does the harm detector generalise? Three experiments at a reduced, explicit CPU budget.

1. Backbone x input format at equal budget, on one fixed subsample of the group-split validation set:
   MiniLM response-only, MiniLM query+response, SmolLM2-135M-Instruct + LoRA response-only.
2. Leave-one-source-out (MiniLM, response-only): train without a source (and its pairs), choose the
   threshold on the in-distribution validation examples of the remaining data, test on the source.
3. Leave-one-scenario-out on MM-SafetyBench (MiniLM, response-only): same, holding out one scenario.

Writes a Markdown fragment (tables + observations computed from the numbers) and a JSON file with
every raw number. Everything is seeded; `--quick` runs a tiny version only to check the script works.

    python benchmarks/detector_experiments.py --out docs/results/detector_experiments.md \
        --json runs/detector_experiments.json --budget small
"""

from __future__ import annotations

import argparse
import gc
import json
import logging
import math
import os
import platform
import random
import shlex
import sys
import time
from collections import Counter
from dataclasses import asdict, dataclass, replace
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Callable, Sequence

log = logging.getLogger("detector_experiments")

TITLE = "Detector generalisation experiments (reduced CPU budget)"
LOSO_SOURCES = ("mmsb_gemini", "figstep_qwen", "jailbreakbench", "pku_saferlhf")
# 01-Illegal_Activitiy has only 15 harmful answers (recall moves in steps of 7 points), 11-Financial_Advice
# holds 353 of MM-SafetyBench's 660 harmful answers: together they bracket the scenarios worth holding out.
SCENARIOS = ("01-Illegal_Activitiy", "03-Malware_Generation", "07-Sex", "10-Legal_Opinion")
ALWAYS_IN_EVAL = ("vicuna80", "llava_coco")  # benign sources whose validation examples are all evaluated


@dataclass(frozen=True)
class Budget:
    """Everything that bounds the CPU cost of one run (stated verbatim in the output)."""

    max_length: int = 128
    stride: int = 32
    batch_size: int = 16
    learning_rate: float = 5e-4
    pairwise_weight: float = 0.5
    cap_per_class: int = 300  # examples per (source, label) and pairs per source, via cap_per_class
    minilm_steps: int = 60
    minilm_lora_r: int = 16
    smollm_steps: int = 24
    smollm_lora_r: int = 8
    smollm_cap_per_class: int = 300
    eval_size: int = 800  # validation subsample, including the benign examples below
    vlguard_eval: int = 300  # at most this many vlguard validation examples in the subsample
    always_eval: int = 0  # at most this many vicuna80 + llava_coco validation examples; 0 = all of them
    heldout_max: int = 300  # held-out source / scenario examples scored (stratified by label)
    max_fpr: float = 0.05
    val_fraction: float = 0.15


BUDGETS = {
    "small": Budget(),
    "quick": Budget(cap_per_class=6, minilm_steps=2, smollm_steps=2, smollm_cap_per_class=4, eval_size=40,
                    vlguard_eval=6, always_eval=6, heldout_max=16),
}


# ---------------------------------------------------------------- sampling (deterministic)


def stratified_sample(items: Sequence[Any], key: Callable[[Any], Any], size: int, seed: int) -> list[Any]:
    """At most `size` items, proportional per stratum (largest remainder, ≥1 per stratum when room),
    returned in their original order."""
    if size >= len(items):
        return list(items)
    if size <= 0:
        return []
    strata: dict[Any, list[int]] = {}
    for i, item in enumerate(items):
        strata.setdefault(key(item), []).append(i)
    keys = sorted(strata, key=str)
    quota = {k: size * len(strata[k]) / len(items) for k in keys}
    alloc = {k: min(len(strata[k]), max(1 if size >= len(keys) else 0, int(quota[k]))) for k in keys}
    by_remainder = sorted(keys, key=lambda k: (-(quota[k] - int(quota[k])), str(k)))
    while sum(alloc.values()) > size:  # the ≥1 floor can overshoot: trim the largest strata
        biggest = max(keys, key=lambda k: (alloc[k], str(k)))
        alloc[biggest] -= 1
    while sum(alloc.values()) < size:
        grew = False
        for k in by_remainder:
            if sum(alloc.values()) < size and alloc[k] < len(strata[k]):
                alloc[k] += 1
                grew = True
        if not grew:
            break
    rng = random.Random(seed)
    chosen = sorted(i for k in keys for i in rng.sample(strata[k], alloc[k]))
    return [items[i] for i in chosen]


def eval_subsample(val: Sequence[Any], budget: Budget, seed: int) -> list[Any]:
    """The fixed evaluation set: all vicuna80 + llava_coco validation examples, ≤ vlguard_eval vlguard ones,
    and the rest of `eval_size` drawn from the other sources, stratified by (source, label)."""
    from mllm_protector.data.readers import BENIGN_SOURCES

    always = [e for e in val if e.source in ALWAYS_IN_EVAL]
    if budget.always_eval > 0:  # only --quick limits these
        always = stratified_sample(always, lambda e: e.source, budget.always_eval, seed)
    vlguard = stratified_sample([e for e in val if e.source == "vlguard"], lambda e: e.label, budget.vlguard_eval, seed)
    rest = [e for e in val if e.source not in BENIGN_SOURCES]
    room = max(0, budget.eval_size - len(always) - len(vlguard))
    keep = {id(e) for e in always + vlguard + stratified_sample(rest, lambda e: (e.source, e.label), room, seed)}
    return [e for e in val if id(e) in keep]


# ---------------------------------------------------------------- one training + evaluation run


class _RowCounter(logging.Handler):
    """Picks the number of training rows out of `train_detector`'s "training on %d rows" log line."""

    def __init__(self) -> None:
        super().__init__(logging.INFO)
        self.rows: int | None = None

    def emit(self, record: logging.LogRecord) -> None:
        if record.msg.startswith("training on") and record.args:
            self.rows = int(record.args[0])


def _composition(examples: Sequence[Any]) -> dict[str, dict[str, int]]:
    counts = Counter((e.source, e.label) for e in examples)
    return {s: {"harmful": counts[(s, 1)], "harmless": counts[(s, 0)]} for s in sorted({s for s, _ in counts})}


def run(
    name: str,
    backbone: str,
    input_format: str,
    lora_r: int,
    steps: int,
    train: Sequence[Any],
    pairs: Sequence[Any],
    val: Sequence[Any],
    budget: Budget,
    seed: int,
    work_dir: Path,
    tests: dict[str, Sequence[Any]] | None = None,
) -> dict[str, Any]:
    """Train one detector, pick its threshold on `val` (FPR ≤ max_fpr), report val and test-set metrics."""
    import torch
    from transformers import set_seed

    from mllm_protector.data.readers import BENIGN_SOURCES
    from mllm_protector.eval.metrics import choose_threshold, detector_report
    from mllm_protector.train.detector import DetectorTrainingArguments, train_detector

    log.info("[%s] training %s (%s), %d steps on %d examples + %d pairs", name, backbone, input_format, steps,
             len(train), len(pairs))
    set_seed(seed)
    args = DetectorTrainingArguments(
        output_dir=str(work_dir / name),
        backbone=backbone,
        lora=True,
        lora_r=lora_r,
        lora_alpha=2 * lora_r,
        max_length=budget.max_length,
        stride=budget.stride,
        input_format=input_format,
        pairwise_weight=budget.pairwise_weight,
        max_per_class=budget.cap_per_class,
        max_fpr=budget.max_fpr,
        max_steps=steps,
        per_device_train_batch_size=budget.batch_size,
        learning_rate=budget.learning_rate,
        seed=seed,
        data_seed=seed,
        logging_steps=max(1, steps // 5),
        disable_tqdm=True,
        dataloader_pin_memory=False,
        save_strategy="no",
    )
    counter = _RowCounter()
    train_logger = logging.getLogger("mllm_protector.train.detector")
    train_logger.addHandler(counter)
    started = time.perf_counter()
    try:
        detector, train_report = train_detector(args, train, pairs, validation=())
    finally:
        train_logger.removeHandler(counter)
    train_s = time.perf_counter() - started

    started = time.perf_counter()
    scores = detector.score([e.response for e in val], [e.query for e in val])
    infer_s = time.perf_counter() - started
    windows = len(detector.encode([e.response for e in val], [e.query for e in val])["sample"])
    labels = [e.label for e in val]
    threshold = choose_threshold(labels, scores, budget.max_fpr)
    detector.config.threshold = threshold

    def report(idx: Sequence[int], lab: Sequence[int], sc: Sequence[float]) -> dict[str, Any]:
        return detector_report([lab[i] for i in idx], [sc[i] for i in idx], threshold)

    everything = range(len(val))
    benign = [i for i, e in enumerate(val) if e.source in BENIGN_SOURCES]
    result: dict[str, Any] = {
        "name": name,
        "backbone": backbone,
        "input_format": input_format,
        "lora_r": lora_r,
        "max_steps": steps,
        "batch_size": budget.batch_size,
        "train_examples": len(train),
        "train_pairs": len(pairs),
        "train_rows": counter.rows,
        "rows_seen": steps * budget.batch_size,
        "epochs_seen": steps * budget.batch_size / counter.rows if counter.rows else math.nan,
        "train_loss": train_report.get("train_loss"),
        "loss_history": train_report.get("loss_history", []),
        "train_seconds": train_s,
        "threshold": threshold,
        "val_examples": len(val),
        "val_windows": windows,
        "infer_seconds": infer_s,
        "infer_ms_per_response": 1000 * infer_s / max(1, len(val)),
        "val": report(everything, labels, scores),
        "val_benign": {**report(benign, labels, scores), "sources": sorted({val[i].source for i in benign})},
        "val_by_source": {
            s: report([i for i, e in enumerate(val) if e.source == s], labels, scores)
            for s in sorted({e.source for e in val})
        },
        "tests": {},
    }
    for test_name, examples in (tests or {}).items():
        test_scores = detector.score([e.response for e in examples], [e.query for e in examples])
        test_labels = [e.label for e in examples]
        result["tests"][test_name] = {
            **report(range(len(examples)), test_labels, test_scores),
            "composition": _composition(examples),
        }
    log.info("[%s] done: train %.0fs, val AUROC %.3f, threshold %.3f, infer %.1f ms/response", name, train_s,
             result["val"]["auroc"], threshold, result["infer_ms_per_response"])
    del detector
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()
    return result


# ---------------------------------------------------------------- experiments


def without_groups(items: Sequence[Any], groups: set[str]) -> list[Any]:
    return [x for x in items if x.group not in groups]


def held_out_run(
    name: str,
    held: Sequence[Any],
    drop_source: str | None,
    base: dict[str, Any],
    budget: Budget,
    seed: int,
    work_dir: Path,
) -> dict[str, Any]:
    """MiniLM response-only without the held-out groups (and, for a source, none of its pairs); threshold on
    the remaining in-distribution validation examples; metrics on a label-stratified sample of `held`."""
    from mllm_protector.data.splits import split_pairs
    from mllm_protector.train.detector import cap_per_class

    groups = {e.group for e in held}
    train = without_groups(base["train"], groups)
    pairs, _ = split_pairs(base["train_pairs"], held)
    leaked = sum(drop_source is not None and p.source == drop_source for p in pairs)
    pairs = [p for p in pairs if p.source != drop_source]
    train, pairs = cap_per_class(train, pairs, budget.cap_per_class, seed)
    val = without_groups(base["eval_val"], groups)
    test = stratified_sample(held, lambda e: e.label, budget.heldout_max, seed)
    result = run(name, "minilm-l6", "response", budget.minilm_lora_r, budget.minilm_steps, train, pairs, val,
                 budget, seed, work_dir, tests={"held_out": test})
    result["held_out_total"] = len(held)
    result["held_out_total_harmful"] = sum(e.label for e in held)
    result["pairs_of_source_not_caught_by_split_pairs"] = leaked
    return result


def experiment_backbones(
    base: dict[str, Any],
    budget: Budget,
    seed: int,
    work_dir: Path,
    skip_smollm: bool,
    on_result: Callable[[dict[str, Any]], None],
) -> None:
    """Experiment 1: the three configurations on the same capped training data and evaluation subsample."""
    from mllm_protector.train.detector import cap_per_class

    train, pairs = cap_per_class(base["train"], base["train_pairs"], budget.cap_per_class, seed)
    configs = [
        ("minilm-response", "minilm-l6", "response", budget.minilm_lora_r, budget.minilm_steps, (train, pairs)),
        ("minilm-query_response", "minilm-l6", "query_response", budget.minilm_lora_r, budget.minilm_steps, (train, pairs)),
    ]
    if not skip_smollm:
        small = (
            (train, pairs) if budget.smollm_cap_per_class == budget.cap_per_class
            else cap_per_class(base["train"], base["train_pairs"], budget.smollm_cap_per_class, seed)
        )
        configs.append(("smollm2-response", "smollm2-135m-instruct", "response", budget.smollm_lora_r,
                        budget.smollm_steps, small))
    for name, backbone, fmt, r, steps, (tr, pr) in configs:
        result = run(name, backbone, fmt, r, steps, tr, pr, base["eval_val"], budget, seed, work_dir)
        result["cap_per_class"] = budget.smollm_cap_per_class if backbone.startswith("smollm") else budget.cap_per_class
        on_result(result)


# ---------------------------------------------------------------- Markdown


def fmt(value: Any, digits: int = 3) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "–"
    if isinstance(value, float):
        return f"{value:.{digits}f}"
    return str(value)


def pct(value: Any) -> str:
    return "–" if value is None or (isinstance(value, float) and math.isnan(value)) else f"{100 * value:.1f}%"


def table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> list[str]:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    return lines + ["| " + " | ".join(row) + " |" for row in rows]


def observations(data: dict[str, Any]) -> list[str]:
    """3–6 plain sentences derived from the numbers (no hand-typed values)."""
    notes: list[str] = []
    exp1 = {r["name"]: r for r in data["experiments"].get("backbone_format", [])}
    resp, qr, smol = exp1.get("minilm-response"), exp1.get("minilm-query_response"), exp1.get("smollm2-response")
    if resp and qr:
        d_auc = qr["val"]["auroc"] - resp["val"]["auroc"]
        better = "raises" if d_auc > 0 else "lowers"
        notes.append(
            f"Adding the query (MiniLM) {better} validation AUROC by {abs(d_auc):.3f} "
            f"({fmt(resp['val']['auroc'])} → {fmt(qr['val']['auroc'])}), changes benign FPR "
            f"{pct(resp['val_benign']['fpr'])} → {pct(qr['val_benign']['fpr'])} and costs "
            f"{qr['infer_ms_per_response'] / resp['infer_ms_per_response']:.1f}× the inference time "
            f"({qr['val_windows'] / max(1, resp['val_windows']):.1f}× the 128-token windows, since the query "
            f"prefix shrinks each response window)."
        )
    if resp and smol:
        d_auc = smol["val"]["auroc"] - resp["val"]["auroc"]
        notes.append(
            f"SmolLM2-135M + LoRA ({smol['max_steps']} steps vs MiniLM's {resp['max_steps']}) reaches AUROC "
            f"{fmt(smol['val']['auroc'])} vs {fmt(resp['val']['auroc'])} ({'+' if d_auc >= 0 else '−'}{abs(d_auc):.3f}) "
            f"at {smol['train_seconds'] / resp['train_seconds']:.1f}× the training time and "
            f"{smol['infer_ms_per_response'] / resp['infer_ms_per_response']:.1f}× the inference time per response; "
            f"at this reduced budget this is not a verdict on the backbone at full training."
        )
    loso = data["experiments"].get("leave_one_source_out", [])
    if loso:
        scored = [r for r in loso if not math.isnan(r["tests"]["held_out"]["auroc"])]
        if scored:
            mean_in = sum(r["val"]["auroc"] for r in scored) / len(scored)
            mean_out = sum(r["tests"]["held_out"]["auroc"] for r in scored) / len(scored)
            worst = min(scored, key=lambda r: r["tests"]["held_out"]["auroc"])
            notes.append(
                f"An unseen source is scored with mean AUROC {mean_out:.3f} against {mean_in:.3f} on in-distribution "
                f"validation (difference {mean_out - mean_in:+.3f}); the hardest is {worst['held_out']} (AUROC "
                f"{fmt(worst['tests']['held_out']['auroc'])}, {worst['tests']['held_out']['harmful']} harmful of "
                f"{worst['tests']['held_out']['n']} scored)."
            )
        recalls = [(r["tests"]["held_out"]["recall"], r) for r in loso if not math.isnan(r["tests"]["held_out"]["recall"])]
        fprs = [(r["tests"]["held_out"]["fpr"], r) for r in loso if not math.isnan(r["tests"]["held_out"]["fpr"])]
        if recalls and fprs:
            low_recall, low_r = min(recalls, key=lambda x: x[0])
            high_fpr, high_f = max(fprs, key=lambda x: x[0])
            over = [r["held_out"] for f, r in fprs if f > data["budget"]["max_fpr"]]
            notes.append(
                f"The transferred threshold (FPR ≤ {pct(data['budget']['max_fpr'])} in-distribution) catches as little "
                f"as {pct(low_recall)} of harmful answers ({low_r['held_out']}); FPR on held-out harmless answers "
                f"peaks at {pct(high_fpr)} ({high_f['held_out']}) and exceeds the validation target for "
                f"{len(over)} of {len(fprs)} sources{' (' + ', '.join(over) + ')' if over else ''}."
            )
    losco = data["experiments"].get("leave_one_scenario_out", [])
    scored = [r for r in losco if not math.isnan(r["tests"]["held_out"]["auroc"])]
    if scored:
        worst = min(scored, key=lambda r: r["tests"]["held_out"]["auroc"])
        best = max(scored, key=lambda r: r["tests"]["held_out"]["auroc"])
        low = min(scored, key=lambda r: (r["tests"]["held_out"]["recall"], r["held_out"]))
        spread = (
            f"AUROC ranges from {fmt(worst['tests']['held_out']['auroc'])} ({worst['held_out']}) to "
            f"{fmt(best['tests']['held_out']['auroc'])} ({best['held_out']})" if len(scored) > 1
            else f"AUROC is {fmt(worst['tests']['held_out']['auroc'])} ({worst['held_out']})"
        )
        notes.append(
            f"Across {len(scored)} held-out MM-SafetyBench scenario{'s' if len(scored) > 1 else ''} {spread}; recall at the in-distribution threshold "
            f"is lowest for {low['held_out']} ({pct(low['tests']['held_out']['recall'])} of "
            f"{low['tests']['held_out']['harmful']} harmful answers) and held-out FPR is at most "
            f"{pct(max(r['tests']['held_out']['fpr'] for r in scored))}."
        )
    return notes[:6]


def markdown(data: dict[str, Any]) -> str:
    b = data["budget"]
    exp1 = data["experiments"].get("backbone_format", [])
    loso = data["experiments"].get("leave_one_source_out", [])
    losco = data["experiments"].get("leave_one_scenario_out", [])
    ev = data["eval_set"]
    lines = [
        f"## {data.get('title', TITLE)}",
        "",
        "Command:",
        "",
        "```",
        data["command"],
        "```",
        "",
        f"Machine: {data['machine']['cpus']} CPU cores, {'a' if data['machine'].get('gpu') else 'no'} GPU, torch {data['machine']['torch']} "
        f"({data['machine']['torch_threads']} threads). Total wall time: {data['wall_seconds'] / 60:.1f} min "
        f"(budget {data['time_budget_minutes']} min; this process used {data.get('cpu_seconds', math.nan) / 60:.1f} "
        f"CPU-min, 1-min load average {data['machine'].get('load_average_at_start', [math.nan])[0]:.1f} at start, so other jobs shared "
        f"the cores when it is above ~2). Seed {data['seed']} everywhere.",
        "",
        f"**Budget ({data['budget_name']}).** Every run: LoRA on all linear layers + trained head, max_length "
        f"{b['max_length']} tokens (scoring windows overlap by {b['stride']}), {b['batch_size']} training items per step "
        f"(a ranking pair is one item), "
        f"lr {b['learning_rate']}, pairwise weight {b['pairwise_weight']}, training data capped with `cap_per_class` at "
        f"{b['cap_per_class']} examples per (source, label) and {b['cap_per_class']} pairs per source. MiniLM "
        f"(LoRA r={b['minilm_lora_r']}): {b['minilm_steps']} steps. SmolLM2-135M-Instruct (LoRA r={b['smollm_lora_r']}): "
        f"{b['smollm_steps']} steps, cap {b['smollm_cap_per_class']}. These are far below the full training runs, so "
        f"the backbone comparison is at reduced budget only. Thresholds keep validation FPR ≤ {pct(b['max_fpr'])}.",
        "",
        f"**Evaluation set.** `split_corpus(corpus, {b['val_fraction']}, {data['seed']})` gives {ev['val_total']} "
        f"group-split validation examples; scored is a fixed subsample of {ev['size']} ({ev['harmful']} harmful): "
        f"all vicuna80 and llava_coco validation examples, ≤{b['vlguard_eval']} of vlguard, the rest stratified by "
        f"(source, label). Benign FPR is measured on its {ev['benign']} vicuna80 + llava_coco + vlguard examples. "
        f"Held-out sources/scenarios are scored on ≤{b['heldout_max']} of their examples, stratified by label.",
        "",
    ]
    if exp1:
        lines += ["### 1. Backbone × input format (same validation subsample, same data)", ""]
        lines += table(
            ["Config", "Steps (epochs)", "AUROC", "AUPRC", "F1", "Accuracy", "Recall", "FPR", "Benign FPR",
             "Threshold", "Train s", "Infer ms/resp"],
            [[
                f"{r['backbone']} {r['input_format']}",
                f"{r['max_steps']} ({fmt(r['epochs_seen'], 2)})",
                fmt(r["val"]["auroc"]), fmt(r["val"]["auprc"]), fmt(r["val"]["f1"]), fmt(r["val"]["accuracy"]),
                pct(r["val"]["recall"]), pct(r["val"]["fpr"]),
                f"{pct(r['val_benign']['fpr'])} ({r['val_benign']['fp']}/{r['val_benign']['n']})",
                fmt(r["threshold"]), f"{r['train_seconds']:.0f}", f"{r['infer_ms_per_response']:.1f}",
            ] for r in exp1],
        )
        lines.append("")
    if loso:
        lines += ["### 2. Leave-one-source-out (MiniLM, response-only)", ""]
        lines += table(
            ["Held-out source", "Scored (harmful)", "In-dist. val AUROC", "Held-out AUROC", "Held-out AUPRC",
             "Recall @ in-dist. threshold", "FPR on its harmless answers"],
            [[
                r["held_out"],
                f"{r['tests']['held_out']['n']} ({r['tests']['held_out']['harmful']})",
                fmt(r["val"]["auroc"]), fmt(r["tests"]["held_out"]["auroc"]), fmt(r["tests"]["held_out"]["auprc"]),
                pct(r["tests"]["held_out"]["recall"]), pct(r["tests"]["held_out"]["fpr"]),
            ] for r in loso],
        )
        lines.append("")
    if losco:
        lines += ["### 3. Leave-one-scenario-out on MM-SafetyBench (MiniLM, response-only)", ""]
        lines += table(
            ["Held-out scenario", "Scored (harmful)", "In-dist. val AUROC", "Held-out AUROC", "Recall", "FPR"],
            [[
                r["held_out"],
                f"{r['tests']['held_out']['n']} ({r['tests']['held_out']['harmful']})",
                fmt(r["val"]["auroc"]), fmt(r["tests"]["held_out"]["auroc"]),
                pct(r["tests"]["held_out"]["recall"]), pct(r["tests"]["held_out"]["fpr"]),
            ] for r in losco],
        )
        lines.append("")
    notes = observations(data)
    if notes:
        lines += ["### Observations", ""] + [f"- {n}" for n in notes] + [""]
    return "\n".join(lines)


# ---------------------------------------------------------------- main


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data-dir", type=Path, default=None, help="shared data folder (default ../shared/data)")
    parser.add_argument("--out", type=Path, default=Path("docs/results/detector_experiments.md"))
    parser.add_argument("--json", type=Path, default=Path("runs/detector_experiments.json"))
    parser.add_argument("--budget", choices=sorted(BUDGETS), default="small")
    parser.add_argument("--title", default=TITLE, help="section heading of the Markdown fragment")
    parser.add_argument("--quick", action="store_true", help="tiny run (2 steps, few examples) to check the script")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--experiments", default="1,2,3", help="comma-separated subset of 1,2,3")
    parser.add_argument("--loso-sources", default=",".join(LOSO_SOURCES))
    parser.add_argument("--scenarios", default=",".join(SCENARIOS))
    parser.add_argument("--skip-smollm", action="store_true")
    parser.add_argument("--minilm-steps", type=int, default=None, help="override the budget's MiniLM steps")
    parser.add_argument("--smollm-steps", type=int, default=None, help="override the budget's SmolLM2 steps")
    parser.add_argument("--cap", type=int, default=None, help="override cap_per_class")
    parser.add_argument("--eval-size", type=int, default=None, help="override the validation subsample size")
    parser.add_argument("--heldout-max", type=int, default=None, help="override the held-out sample size")
    parser.add_argument("--work-dir", type=Path, default=Path("runs/detector_experiments"))
    parser.add_argument("--render-only", action="store_true", help="rewrite --out from an existing --json and exit")
    parser.add_argument("--time-budget-minutes", type=float, default=50.0, help="stated in the output; not enforced")
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    if args.render_only:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(markdown(json.loads(args.json.read_text())))
        return 0
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    logging.getLogger("transformers").setLevel(logging.ERROR)
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    import torch
    import transformers

    from mllm_protector.config import data_dir
    from mllm_protector.data import load_corpus
    from mllm_protector.train.detector import split_corpus

    transformers.utils.logging.set_verbosity_error()
    transformers.utils.logging.disable_progress_bar()
    budget_name = "quick" if args.quick else args.budget
    budget = BUDGETS[budget_name]
    overrides = {k: v for k, v in {"minilm_steps": args.minilm_steps, "smollm_steps": args.smollm_steps,
                                  "cap_per_class": args.cap, "eval_size": args.eval_size,
                                  "heldout_max": args.heldout_max}.items() if v is not None}
    if args.cap is not None:
        overrides["smollm_cap_per_class"] = min(budget.smollm_cap_per_class, args.cap)
    budget = replace(budget, **overrides)
    wanted = {int(x) for x in args.experiments.split(",") if x.strip()}
    started, cpu_started = time.perf_counter(), time.process_time()

    corpus = load_corpus(data_dir(args.data_dir))
    train, train_pairs, val = split_corpus(corpus, budget.val_fraction, args.seed)
    eval_val = eval_subsample(val, budget, args.seed)
    base = {"train": train, "train_pairs": train_pairs, "eval_val": eval_val}
    if args.quick:  # keep the held-out runs tiny too
        args.loso_sources = ",".join(args.loso_sources.split(",")[:2])
        args.scenarios = ",".join(args.scenarios.split(",")[:2])
    from mllm_protector.data.readers import BENIGN_SOURCES

    data: dict[str, Any] = {
        "command": "python " + " ".join(shlex.quote(a) for a in ([sys.argv[0]] + list(argv if argv is not None else sys.argv[1:]))),
        "started": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "seed": args.seed,
        "title": args.title,
        "budget_name": budget_name,
        "budget": asdict(budget),
        "time_budget_minutes": args.time_budget_minutes,
        "machine": {"cpus": os.cpu_count(), "torch_threads": torch.get_num_threads(), "torch": torch.__version__,
                    "transformers": transformers.__version__, "python": platform.python_version(),
                    "load_average_at_start": list(os.getloadavg()), "gpu": torch.cuda.is_available()},
        "corpus": corpus.summary(),
        "split": {"train_examples": len(train), "train_pairs": len(train_pairs), "val_examples": len(val)},
        "eval_set": {
            "val_total": len(val),
            "size": len(eval_val),
            "harmful": sum(e.label for e in eval_val),
            "benign": sum(e.source in BENIGN_SOURCES for e in eval_val),
            "composition": _composition(eval_val),
        },
        "experiments": {},
        "wall_seconds": 0.0,
    }

    def save() -> None:
        data["wall_seconds"] = time.perf_counter() - started
        data["cpu_seconds"] = time.process_time() - cpu_started
        data["machine"]["load_average_now"] = list(os.getloadavg())
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(data, indent=2, default=float) + "\n")
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(markdown(data))

    log.info("eval subsample: %d examples (%d harmful) of %d validation", len(eval_val),
             data["eval_set"]["harmful"], len(val))
    if 1 in wanted:
        exp1 = data["experiments"].setdefault("backbone_format", [])

        def on_result(result: dict[str, Any]) -> None:
            exp1.append(result)
            save()

        experiment_backbones(base, budget, args.seed, args.work_dir, args.skip_smollm, on_result)
    if 2 in wanted:
        from mllm_protector.data.splits import leave_out

        results = data["experiments"].setdefault("leave_one_source_out", [])
        for source in [s for s in args.loso_sources.split(",") if s]:
            _, held = leave_out(corpus.examples, lambda e: e.source, source)
            result = held_out_run(f"loso-{source}", held, source, base, budget, args.seed, args.work_dir)
            results.append({"held_out": source, **result})
            save()
    if 3 in wanted:
        from mllm_protector.data.splits import leave_out

        results = data["experiments"].setdefault("leave_one_scenario_out", [])
        for scenario in [s for s in args.scenarios.split(",") if s]:
            key = lambda e: e.scenario if e.source == "mmsb_gemini" else None  # noqa: E731
            _, held = leave_out(corpus.examples, key, scenario)
            if not held:
                raise SystemExit(f"no MM-SafetyBench examples with scenario {scenario!r}")
            result = held_out_run(f"losco-{scenario}", held, None, base, budget, args.seed, args.work_dir)
            results.append({"held_out": scenario, **result})
            save()
    data["finished"] = datetime.now(timezone.utc).isoformat(timespec="seconds")
    save()
    log.info("done in %.1f min: %s, %s", data["wall_seconds"] / 60, args.out, args.json)
    return 0


if __name__ == "__main__":
    sys.exit(main())
