"""Detector backends: throughput and validation AUROC of torch fp32, torch int8, ONNX Runtime fp32 and int8.

Throughput: answers/s of `HarmDetector.score` on 128-token answers (one full window each) at batch 64
and 256, the median of interleaved rounds in which every backend scores the same batch in turn (on a
shared machine read the ratios, not the absolute figures),
next to a plain torch fp32 forward of the same token windows (no tokenisation): the reference of issue
#11's goal (>= 3x). Accuracy: AUROC on a fixed validation set (the validation side of the group split the
detector was trained with, from JailbreakBench, PKU-SafeRLHF, GPTFuzz, FigStep/Qwen, Vicuna-80, LLaVA-Bench
and VLGuard answers; 300 harmful + 300 harmless, all lengths), and the largest |score difference| from
torch fp32. Cold start: a fresh interpreter that loads the detector and scores one answer.
With --record, the fastest backend whose AUROC is within --tolerance of torch fp32 and which changes at most
--max-verdict-changes validation verdicts at the detector's threshold is written into the detector's config
(`inference`), which `HarmDetector.from_pretrained(backend="auto")` follows. Verdicts count because the
Protector and its stream windows decide by thresholds: a backend that moves borderline scores changes
decisions even when its AUROC holds.
Usage: python benchmarks/detector_backends.py --record
"""

from __future__ import annotations

import argparse
import os
import platform
import random
import statistics
import subprocess
import sys
import time
import warnings
from collections.abc import Callable
from functools import partial
from pathlib import Path
from typing import Any

import torch
from sklearn.metrics import roc_auc_score

from mllm_protector.config import data_dir
from mllm_protector.data import load_corpus
from mllm_protector.data.splits import group_split
from mllm_protector.detector import DetectorConfig, HarmDetector, padded_batches

SOURCES = ["jailbreakbench", "pku_saferlhf", "gptfuzz_labeled", "figstep_qwen", "vicuna80", "llava_coco", "llava_wild", "vlguard"]
BACKENDS = ["torch fp32", "torch int8", "onnx", "onnx-int8"]
SELECTABLE = {"torch fp32": "torch", "onnx": "onnx", "onnx-int8": "onnx-int8"}  # what from_pretrained can load
BATCHES = (64, 256)
TOKENS = 128


def validation_set(detector: HarmDetector, root: Path, n: int, seed: int) -> tuple[list[str], list[int]]:
    """n/2 harmful and n/2 harmless answers from the validation side of the detector's training split."""
    saved = detector.config.training.get("arguments", {})
    _, val = group_split(load_corpus(root, SOURCES).examples, saved.get("val_fraction", 0.15), saved.get("seed", 0))
    rng = random.Random(seed)
    chosen = [e for label in (1, 0) for e in rng.sample([e for e in val if e.label == label], n // 2)]
    return [e.response for e in chosen], [e.label for e in chosen]


def answers_of_length(detector: HarmDetector, root: Path, n: int, seed: int) -> list[str]:
    """n answers cut to TOKENS tokens with the special tokens (one full window each)."""
    tokenizer = detector.tokenizer
    pool = [e.response for e in load_corpus(root, SOURCES).examples if len(e.response) > 1500]
    texts = []
    for text in random.Random(seed).sample(pool, n):
        texts.append(tokenizer.decode(tokenizer(text, add_special_tokens=False, verbose=False)["input_ids"][: TOKENS - 2]))
    return texts


def answers_per_second(run: Callable[[list[str]], Any], texts: list[str]) -> float:
    """Throughput of one call of `run` over `texts`."""
    start = time.perf_counter()
    run(texts)
    return len(texts) / (time.perf_counter() - start)


def plain_forward(detector: HarmDetector, windows: dict[str, list[int]], batch_size: int) -> Callable[[list[str]], None]:
    """A plain torch fp32 forward over the answers' pre-tokenized windows (the reference: no normalisation or
    tokenisation)."""
    def run(texts: list[str]) -> None:
        with torch.inference_mode():
            for _, batch in padded_batches(detector.tokenizer, [windows[t] for t in texts], batch_size):
                detector.model(**batch)
    return run


def cold_start(backend: str) -> dict[str, Any]:
    """Seconds for a fresh interpreter to load the default detector on `backend` and score one answer."""
    code = ("import sys; from mllm_protector.detector import HarmDetector; "
            f"HarmDetector.from_pretrained('default', backend='{backend}').score(['The photo shows a red bus.']); "
            "print('torch' in sys.modules)")
    start = time.perf_counter()
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    return {"seconds": time.perf_counter() - start, "torch_imported": out.stdout.strip() == "True"}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--detector", default="default")
    parser.add_argument("--data-dir", type=Path, default=None)
    parser.add_argument("--answers", type=int, default=600, help="validation answers (half harmful)")
    parser.add_argument("--rounds", type=int, default=2, help="interleaved timing rounds (one batch per backend each)")
    parser.add_argument("--tolerance", type=float, default=0.005, help="largest AUROC difference from torch fp32 for --record")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--max-verdict-changes", type=int, default=0, help="most validation verdicts a recorded backend may change")
    parser.add_argument("--record", action="store_true", help="write the fastest backend within tolerance into the detector config")
    parser.add_argument("--out", type=Path, default=Path("docs/results/detector_backends.md"))
    args = parser.parse_args()
    t0, load_start = time.time(), os.getloadavg()
    root = data_dir(args.data_dir)
    detectors = {"torch fp32": HarmDetector.from_pretrained(args.detector, backend="torch"),
                 "torch int8": HarmDetector.from_pretrained(args.detector, backend="torch")}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # torch.ao.quantization is deprecated in favour of torchao (not installed)
        detectors["torch int8"].model = torch.ao.quantization.quantize_dynamic(detectors["torch int8"].model, {torch.nn.Linear},
                                                                               dtype=torch.qint8)
    detectors |= {name: HarmDetector.from_pretrained(args.detector, backend=name) for name in ("onnx", "onnx-int8")}
    reference = detectors["torch fp32"]

    texts = answers_of_length(reference, root, max(BATCHES), args.seed)
    encoded = reference.encode(texts)["input_ids"]
    assert len(encoded) == len(texts), "every timed answer must be one window"
    windows = dict(zip(texts, encoded, strict=True))
    tokens = sum(len(w) for w in encoded) / len(texts)
    speed: dict[str, dict[int, float]] = {name: {} for name in ["plain torch fp32 forward", *BACKENDS]}
    for batch_size in BATCHES:
        runs: dict[str, Callable[[list[str]], Any]] = {"plain torch fp32 forward": plain_forward(reference, windows, batch_size)}
        runs |= {name: partial(d.score, batch_size=batch_size) for name, d in detectors.items()}
        for run in runs.values():
            run(texts[:8])  # warm up: first calls allocate
        # Backends take turns on the same batch, so a change in the machine's load hits all of them alike.
        rounds = [{name: answers_per_second(run, texts[:batch_size]) for name, run in runs.items()} for _ in range(args.rounds)]
        for name in runs:
            speed[name][batch_size] = statistics.median(r[name] for r in rounds)
            print(f"batch {batch_size} {name}: {speed[name][batch_size]:.1f} answers/s (median of {args.rounds})", flush=True)

    responses, labels = validation_set(reference, root, args.answers, args.seed)
    scores = {name: d.score(responses) for name, d in detectors.items()}
    auroc = {name: float(roc_auc_score(labels, s)) for name, s in scores.items()}
    threshold = reference.threshold
    accuracy = {name: {"auroc": auroc[name], "delta": auroc[name] - auroc["torch fp32"],
                       "max_diff": max(abs(a - b) for a, b in zip(s, scores["torch fp32"], strict=True)),
                       "flips": sum((a >= threshold) != (b >= threshold) for a, b in zip(s, scores["torch fp32"], strict=True))}
                for name, s in scores.items()}
    def fastest_of(names: list[str]) -> str:
        return max(names, key=lambda name: sum(speed[name].values()))

    within_auroc = [name for name in SELECTABLE if abs(accuracy[name]["delta"]) <= args.tolerance]
    fastest = fastest_of([name for name in within_auroc if accuracy[name]["flips"] <= args.max_verdict_changes])
    starts = {backend: cold_start(backend) for backend in SELECTABLE.values()}
    command = " ".join(["python", *sys.argv])
    result = {"command": command, "wall_s": time.time() - t0, "tokens": tokens, "speed": speed, "accuracy": accuracy,
              "answers": len(responses), "harmful": sum(labels), "fastest": fastest, "fastest_auroc_only": fastest_of(within_auroc),
              "tolerance": args.tolerance, "max_changes": args.max_verdict_changes,
              "cold_start": starts, "rounds": args.rounds, "load": (load_start, os.getloadavg()), "threshold": threshold}
    if args.record:
        path = reference.source
        assert path is not None
        config = DetectorConfig.read(path)
        config.inference = {"backend": SELECTABLE[fastest], "fingerprint": HarmDetector.fingerprint(path, config),
                            "tolerance": args.tolerance, "auroc": {SELECTABLE[n]: accuracy[n]["auroc"] for n in SELECTABLE},
                            "max_verdict_changes": args.max_verdict_changes,
                            "verdict_changes": {SELECTABLE[n]: accuracy[n]["flips"] for n in SELECTABLE},
                            "answers": len(responses), "command": command}
        config.write(path)
    text = render(result)
    print(text)
    args.out.write_text(text)


def render(r: dict[str, Any]) -> str:
    """The markdown report: throughput and accuracy per backend, the choice, cold start."""
    fp32 = r["speed"]["torch fp32"]
    plain = r["speed"]["plain torch fp32 forward"]
    lines = [
        "# Detector backends: throughput and accuracy",
        "",
        f"Command: `{r['command']}` ({r['wall_s']:.0f} s), on {platform.processor() or platform.machine()} with "
        f"{os.cpu_count()} CPUs shared with other work (load average {r['load'][0][0]:.1f} at the start, "
        f"{r['load'][1][0]:.1f} at the end): read the ratios, measured in the same run, not the absolute figures. "
        f"torch {torch.__version__}; intra-op threads = physical cores for torch and ONNX Runtime.",
        "",
        f"Throughput: `HarmDetector.score` on answers of {r['tokens']:.0f} tokens (one window each), answers/s (median of "
        f"{r['rounds']} interleaved rounds of one batch per backend), and the "
        "ratio to torch fp32 scoring and to a plain torch fp32 forward of the same windows (no normalisation or "
        f"tokenisation). Accuracy: {r['answers']} validation answers ({r['harmful']} harmful), AUROC, its difference "
        f"from torch fp32, the largest |P(harmful) difference| and the verdicts that change at the threshold {r['threshold']:.3f}.",
        "",
        "| backend | answers/s b64 | answers/s b256 | × torch fp32 (b64 / b256) | × plain forward (b64 / b256) | AUROC | ΔAUROC | max abs score diff | verdicts changed |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for name, speed in r["speed"].items():
        acc = r["accuracy"].get(name)
        quality = (f"{acc['auroc']:.4f} | {acc['delta']:+.4f} | {acc['max_diff']:.4f} | {acc['flips']}" if acc else "– | – | – | –")
        lines.append(f"| {name} | {speed[64]:.1f} | {speed[256]:.1f} | {speed[64] / fp32[64]:.2f} / {speed[256] / fp32[256]:.2f} | "
                     f"{speed[64] / plain[64]:.2f} / {speed[256] / plain[256]:.2f} | {quality} |")
    lines += [
        "",
        f"Fastest backend within {r['tolerance']} AUROC of torch fp32 that changes at most {r['max_changes']} verdicts: "
        f"**{r['fastest']}**" + (" (recorded in the detector config; `backend=\"auto\"` loads it)" if "--record" in r["command"] else "")
        + f"; fastest within the AUROC tolerance alone: {r['fastest_auroc_only']}.",
        "",
        "Cold start (a fresh interpreter loads the detector and scores one answer):",
        "",
        "| backend | seconds | imports torch |",
        "|---|---|---|",
        *[f"| {b} | {s['seconds']:.1f} | {'yes' if s['torch_imported'] else 'no'} |" for b, s in r["cold_start"].items()],
        "",
    ]
    return "\n".join(lines)


if __name__ == "__main__":
    main()
