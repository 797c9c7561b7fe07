"""Leave-one-source-out comparison of probe detectors on cached features (see loso_features.py).

For each experiment (input variant, training sources, regularisation) and each source family, a head
is fitted on every other family and scores the held-out one. The table gives each family's held-out
AUROC, the mean and worst over the English families with both labels, and F1 / FPR at one threshold
chosen on the pooled held-out scores (so it transfers: it is never tuned on the family it is applied to):
best macro-F1 with FPR ≤ 2% on benign answers and ≤ 5% on Do-Not-Answer's harmless answers.
Usage: python benchmarks/detector_loso.py --features runs/loso --out docs/results/detector_loso.md
"""

from __future__ import annotations

import argparse
import json
import shlex
import sys
import time
from pathlib import Path

import numpy as np

from mllm_protector.train.loso import (
    BENIGN,
    FAMILY,
    HARD_NEGATIVE_SOURCES,
    OLD_SOURCES,
    Data,
    choose_transfer_threshold,
    loso_scores,
    summarize,
)

#: name → (feature variants concatenated, training-source filter, C, what it tests)
EXPERIMENTS: dict[str, tuple[tuple[str, ...], str, float, str]] = {
    "probe R, old sources": (("response",), "old", 0.05, "data breadth: the sources the shipped v1 detector saw"),
    "probe R, all sources": (("response",), "all", 0.05, "data breadth: every English set, source-balanced"),
    "probe R, all, no hard negatives": (("response",), "no_hard", 0.05, "hard negatives (refusals, disclaimers) removed"),
    "probe Q+R, all": (("response", "query"), "all", 0.05, "the question's features beside the answer's"),
    "probe R, all, C=0.01": (("response",), "all", 0.01, "stronger regularisation"),
    "probe R, all, C=0.2": (("response",), "all", 0.2, "weaker regularisation"),
    "probe SmolLM2 R, all": (("smollm2/response",), "all", 0.05, "capacity: frozen SmolLM2-135M-Instruct (6× MiniLM) instead of MiniLM"),
    "probe SmolLM2 Q+R, all": (("smollm2/query_response",), "all", 0.05, "SmolLM2 reading question and answer in one sequence"),
    "probe MiniLM+SmolLM2 R, all": (("response", "smollm2/response"), "all", 0.05, "both backbones' features side by side"),
    "probe R, all, 2-fold": (("response",), "all", 0.05, "the MiniLM probe under the fine-tuned rows' 2-fold protocol (half of the families held out at once)"),
    "probe SmolLM2 R, all, 2-fold": (("smollm2/response",), "all", 0.05, "the SmolLM2 probe under the 2-fold protocol"),
}
#: Experiments held out by groups of families (`assign_folds`), comparable with the fine-tuned rows.
FOLDS = {"probe R, all, 2-fold": 2, "probe SmolLM2 R, all, 2-fold": 2}
#: Fine-tuned rows (benchmarks/detector_loso_finetune.py, `finetune_<name>.json` in the cache) and what they test.
FINETUNED = {
    "full": "full fine-tune of MiniLM on all sources (source-balanced), 2-fold leave-sources-out",
    "lora": "LoRA fine-tune of MiniLM on all sources (source-balanced), 2-fold leave-sources-out",
    "full_qr": "full fine-tune of MiniLM, question + answer input, 2-fold leave-sources-out",
}
#: Ensembles: the mean of the members' standardised held-out logits (every member never saw the scored family).
ENSEMBLES = {
    "ensemble: LoRA FT + SmolLM2 probe (2-fold)": ("fine-tuned: lora", "probe SmolLM2 R, all, 2-fold"),
    "ensemble: full FT + SmolLM2 probe (2-fold)": ("fine-tuned: full", "probe SmolLM2 R, all, 2-fold"),
    "ensemble: LoRA FT + full FT": ("fine-tuned: lora", "fine-tuned: full"),
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--features", type=Path, default=Path("runs/loso"))
    parser.add_argument("--out", type=Path, default=Path("docs/results/detector_loso.md"))
    parser.add_argument("--baseline", default=None, help="also score a saved detector (e.g. the shipped v1) on ≤200 rows per family and label")
    parser.add_argument("--render-only", action="store_true", help="re-render the Markdown from the saved JSON")
    parser.add_argument("--only", action="append", default=[], help="an experiment name to run (repeatable; default: all); the others keep their saved results")
    args = parser.parse_args()
    data = Data.load(args.features)
    saved_json = args.out.with_suffix(".json")
    if args.render_only:
        saved = json.loads(saved_json.read_text())
        args.out.write_text(render(saved["results"], data, saved["command"]))
        return
    command = "python " + shlex.join(sys.argv)
    results = {}
    if args.only and saved_json.is_file():  # --only re-runs some experiments: the others keep their saved results
        saved = json.loads(saved_json.read_text())
        results = {k: {"command": saved["command"], **v} for k, v in saved["results"].items() if k in EXPERIMENTS}
    held_out: dict[str, np.ndarray] = {}  # held-out logits per experiment, for the ensembles
    names = [n for n in EXPERIMENTS if not args.only or n in args.only]
    for name in names:
        variants, train_filter, c, _ = EXPERIMENTS[name]
        if not all(data.feature_path(v).is_file() for v in variants):
            print(f"skip {name}: features missing", flush=True)
            continue
        t0 = time.time()
        keep = data.train_mask(train_filter)
        oof = held_out[name] = loso_scores(data, variants, keep, c, FOLDS.get(name, 0))
        np.save(logits_path(args.features, name), oof)
        threshold = choose_transfer_threshold(data, oof)
        results[name] = {**summarize(data, oof, threshold), "command": command, "wall_s": time.time() - t0, "c": c,
                         "variants": variants, "train": train_filter, "ms_per_answer": ms_per_answer(data, variants)}
        r = results[name]
        print(f"{name}: mean {r['loso_mean_auroc']:.3f} worst {r['loso_worst_auroc']:.3f} "
              f"({time.time() - t0:.0f} s)", flush=True)
    for name in results:
        if name not in held_out and logits_path(args.features, name).is_file():
            held_out[name] = np.load(logits_path(args.features, name))
    for key in FINETUNED:
        saved_run = args.features / f"finetune_{key}.json"
        if saved_run.is_file():
            results[f"fine-tuned: {key}"] = json.loads(saved_run.read_text())
            held_out[f"fine-tuned: {key}"] = np.load(args.features / f"finetune_{key}_logits.npy")
    for name, members in ENSEMBLES.items():
        if all(m in held_out for m in members):
            z = np.mean([(held_out[m] - np.nanmean(held_out[m])) / np.nanstd(held_out[m]) for m in members], axis=0)
            rows = np.flatnonzero(~np.isnan(z))
            sub = data.subset(rows)
            results[name] = {**summarize(sub, z[rows], choose_transfer_threshold(sub, z[rows])), "c": None, "variants": [],
                             "train": "ensemble", "wall_s": sum(results[m]["wall_s"] for m in members),
                             "ms_per_answer": sum(results[m]["ms_per_answer"] for m in members)}
    if args.baseline:  # cached beside the features: scoring with a fine-tuned detector is the slow part
        cached = args.features / f"baseline_{Path(args.baseline).name}.json"
        if not cached.is_file():
            cached.write_text(json.dumps(baseline(data, args.baseline), default=float) + "\n")
        results[f"baseline: {args.baseline}"] = json.loads(cached.read_text())
    args.out.parent.mkdir(parents=True, exist_ok=True)
    saved_json.write_text(json.dumps({"command": command, "results": results}, indent=1, default=float) + "\n")
    args.out.write_text(render(results, data, command))


def logits_path(features: Path, name: str) -> Path:
    """Where an experiment's held-out logits are cached (for ensembles built in a later run)."""
    return features / ("probe_" + "".join(ch if ch.isalnum() else "_" for ch in name) + "_logits.npy")


_SPEED: dict[str, float] = {}


def ms_per_answer(data: Data, variants: tuple[str, ...], n: int = 200) -> float:
    """Scoring cost of a probe reading these variants: backbone passes over n answers (one per variant), ms each."""
    import torch

    from mllm_protector.detector import DetectorConfig
    from mllm_protector.models import load_tokenizer
    from mllm_protector.probe import build_probe
    from mllm_protector.train.probe import VARIANTS, cache_backbone, extract_features

    total = 0.0
    for v in variants:
        if v not in _SPEED:
            torch.set_num_threads(2)
            rows = [data.rows[i] for i in np.random.default_rng(0).choice(len(data.rows), n, replace=False)]
            backbone, layers = cache_backbone(data.feature_path(v).parent)
            probe, tokenizer = build_probe(backbone, layers), load_tokenizer(backbone)
            fmt = Path(v).name
            config = DetectorConfig(backbone=backbone, max_length=VARIANTS[fmt], stride=16, input_format="query_response" if fmt == "query_response" else "response")
            texts = [r["query"] or "" for r in rows] if fmt == "query" else [r["response"] for r in rows]
            t0 = time.perf_counter()
            extract_features(probe, tokenizer, config, texts, [r["query"] for r in rows] if fmt == "query_response" else None)
            _SPEED[v] = (time.perf_counter() - t0) * 1000 / n
        total += _SPEED[v]
    return total


def baseline(data: Data, name: str, per_cell: int = 200) -> dict:
    """A saved detector's scores on a stratified subsample (its own threshold); families it trained on are in-distribution."""
    from mllm_protector.detector import HarmDetector

    t0 = time.time()
    detector = HarmDetector.from_pretrained(name)
    idx = np.flatnonzero(data.stratified(per_cell, english=True))
    scores = np.array(detector.score([data.rows[i]["response"] for i in idx], [data.rows[i]["query"] for i in idx]))
    logits = np.full(len(data.rows), np.nan)
    logits[idx] = np.log(np.clip(scores, 1e-12, 1 - 1e-12) / np.clip(1 - scores, 1e-12, 1))
    sub = data.subset(idx)
    return {**summarize(sub, logits[idx], detector.threshold), "wall_s": time.time() - t0, "c": None,
            "variants": [], "train": "its own training data", "ms_per_answer": (time.time() - t0) * 1000 / len(idx)}


def render(results: dict, data: Data, command: str) -> str:
    """Markdown: one summary row per experiment, then held-out AUROC per family and experiment."""
    lines = [
        "# Detector: leave-one-source-out (LOSO) experiments",
        "",
        f"Command: `{command}` (features: `python benchmarks/loso_features.py --out runs/loso`; SmolLM2 features: "
        "`python benchmarks/loso_features.py --out runs/loso_smol --backbone smollm2-135m-instruct --variants response`, "
        "linked as `runs/loso/smollm2`). Rows produced by another command name it below the table.",
        "",
        f"{len(data.labels)} examples from {len(set(data.families))} source families "
        f"(related sets share a family and are held out together: {', '.join(f'{k} → {v}' for k, v in FAMILY.items())}). "
        "Each head is fitted on every family but one and scores the held-out one; "
        f"mean/worst are over the {len(data.loso_families())} English families with both labels. "
        "The threshold is chosen once on the pooled held-out scores (best macro-F1 with FPR ≤ 2% on benign "
        f"answers ({', '.join(BENIGN)}) and ≤ 5% on Do-Not-Answer's harmless answers).",
        "",
        "| experiment | what it tests | LOSO mean AUROC | worst (family) | macro-F1 @thr | benign FPR | DNA harmless FPR | threshold | ms/answer | wall s |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for name, r in results.items():
        what = (EXPERIMENTS[name][3] if name in EXPERIMENTS else FINETUNED[name.split(": ", 1)[1]] if name.startswith("fine-tuned: ")
                else "mean of the members' standardised held-out logits" if name in ENSEMBLES else "a saved detector scored as is (its training sources are in-distribution, the rest unseen; ≤200 rows per family and label)")
        lines.append(
            f"| {name} | {what} | {r['loso_mean_auroc']:.3f} | {r['loso_worst_auroc']:.3f} ({r['loso_worst_family']}) "
            f"| {r['macro_f1']:.3f} | {r['benign_fpr']:.3f} | {r['dna_fpr']:.3f} | {r['threshold']:.3f} | {r['ms_per_answer']:.1f} | {r['wall_s']:.0f} |"
        )
    others: dict[str, list[str]] = {}
    for n, r in results.items():
        if r.get("command") not in (None, command):
            others.setdefault(r["command"], []).append(n)
    lines += [""] + [f"- {', '.join(names)}: `{c}`" for c, names in others.items()] if others else []
    held = {n: r for n, r in results.items() if not n.startswith("baseline: ")}
    base = next(((n, r) for n, r in results.items() if n.startswith("baseline: ")), None)
    if held:
        best = max(held, key=lambda n: held[n]["loso_mean_auroc"])
        lines += ["", f"Best held-out row: **{best}**, mean {held[best]['loso_mean_auroc']:.3f} / worst "
                  f"{held[best]['loso_worst_auroc']:.3f} ({held[best]['loso_worst_family']})"
                  + (f"; {base[0]} (partly in-distribution) scores {base[1]['loso_mean_auroc']:.3f} / "
                     f"{base[1]['loso_worst_auroc']:.3f} on the same families." if base else ".")]
    if base:  # a fair comparison: only the families the saved detector never saw (it trained on OLD_SOURCES)
        unseen = [f for f in data.loso_families() if f not in OLD_SOURCES and f in base[1]["by_family"]]
        means = {n: float(np.mean([r["by_family"][f]["auroc"] for f in unseen])) for n, r in results.items()
                 if all(f in r["by_family"] for f in unseen)}
        lines += ["", f"Mean AUROC on the {len(unseen)} families outside {base[0]}'s training data (unseen by every row): "
                  + "; ".join(f"{n} {m:.3f}" for n, m in sorted(means.items(), key=lambda kv: -kv[1])) + "."]
    families = data.loso_families()
    lines += ["", "## Held-out AUROC per family", "",
              "| family | n | harmful | " + " | ".join(results) + " |",
              "|---|---|---|" + "---|" * len(results)]
    for fam in families:
        idx = data.family_index(fam, english=True)
        row = [fam, str(len(idx)), str(int(data.labels[idx].sum()))]
        row += [f"{r['by_family'][fam]['auroc']:.3f}" if fam in r["by_family"] else "n/a" for r in results.values()]
        lines.append("| " + " | ".join(row) + " |")
    lines += ["", f"Hard negatives removed in the `no_hard` mix: {', '.join(HARD_NEGATIVE_SOURCES)}. "
              f"Old sources: {', '.join(OLD_SOURCES)}.", ""]
    return "\n".join(lines)


if __name__ == "__main__":
    main()
