"""Detoxifier on llama.cpp vs transformers, one run: greedy agreement, quality metrics, latency per harmful answer.

Both runtimes rewrite the same held-out harmful answers (benchmarks/detox_quality.py's pool) from the same prompt
token ids; they alternate answer by answer (and which goes first), so load from other processes falls on both
alike. Agreement compares the generated token ids; quality uses detox_quality's metrics (a)–(e); latency is the
whole rewrite (prompt → ids → text) after one untimed warm-up each.

    python benchmarks/detox_llamacpp.py --n 20
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import platform
import shlex
import statistics
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

from detox_quality import category_accuracy, held_out, quality, render  # noqa: E402

from mllm_protector.config import data_dir  # noqa: E402
from mllm_protector.detoxifier import DEFAULT_DETOX_ADAPTER, LocalDetoxifier  # noqa: E402

log = logging.getLogger("detox_llamacpp")

#: How far llama.cpp's quality metrics may sit from the transformers path's: rates by at most two rewrites of
#: the pool or 5 points (whichever is larger), mean relevance by 0.02.
RATE_TOLERANCE_REWRITES = 2
RATE_TOLERANCE_POINTS = 0.05
RELEVANCE_TOLERANCE = 0.02


def timed_rewrite(detox: LocalDetoxifier, query: str, response: str) -> tuple[list[int], str, float]:
    """One rewrite as `rewrite` does it, keeping the generated ids and the seconds it took."""
    start = time.perf_counter()
    ids = detox.generate_ids(detox.prompt_ids(query, response))
    text = detox.tokenizer.decode(ids, skip_special_tokens=True).strip()
    return ids, text, time.perf_counter() - start


def common_prefix(a: list[int], b: list[int]) -> int:
    """Number of leading tokens two generations share."""
    return next((i for i, (x, y) in enumerate(zip(a, b, strict=False)) if x != y), min(len(a), len(b)))


def percentile(values: list[float], q: float) -> float:
    """The q-quantile by nearest rank (as detox_quality reports p95)."""
    return sorted(values)[min(len(values) - 1, int(q * len(values)))]


def agreement(ref: list[list[int]], other: list[list[int]]) -> dict[str, float]:
    """Exact-match rate and token-level agreement (shared prefix / longer generation, averaged) of two runs."""
    shared = [common_prefix(a, b) for a, b in zip(ref, other, strict=True)]
    diverged = [s for s, a, b in zip(shared, ref, other, strict=True) if a != b]
    return {
        "exact": sum(a == b for a, b in zip(ref, other, strict=True)) / len(ref),
        "prefix_agreement": statistics.mean(s / max(len(a), len(b), 1) for s, a, b in zip(shared, ref, other, strict=True)),
        "tokens_identical": sum(shared) / sum(max(len(a), len(b)) for a, b in zip(ref, other, strict=True)),
        "first_divergence_median": statistics.median(diverged) if diverged else float("nan"),
        "diverged": len(diverged),
    }


def within_tolerance(ref: dict[str, Any], other: dict[str, Any], n: int) -> list[tuple[str, float, float, float, bool]]:
    """(metric, transformers, llama.cpp, allowed |difference|, within) for the quality metrics."""
    rate = max(RATE_TOLERANCE_REWRITES / n, RATE_TOLERANCE_POINTS)
    rows = [("detector_safe", rate), ("judge_safe", rate), ("rewrite_closer", rate), ("relevance_rewrite", RELEVANCE_TOLERANCE)]
    return [(key, ref[key], other[key], tol, abs(ref[key] - other[key]) <= tol + 1e-12) for key, tol in rows]


def latency(seconds: list[float], tokens: list[list[int]]) -> dict[str, float]:
    """Mean / p50 / p95 seconds per rewrite and decode throughput."""
    return {"mean": statistics.mean(seconds), "p50": statistics.median(seconds), "p95": percentile(seconds, 0.95),
            "tokens": statistics.mean(len(t) for t in tokens), "tokens_per_s": sum(map(len, tokens)) / sum(seconds)}


def cpu_name() -> str:
    """The CPU model from /proc/cpuinfo (Linux), else what `platform` knows."""
    info = Path("/proc/cpuinfo")
    names = [line.split(":", 1)[1].strip() for line in info.read_text().splitlines() if line.startswith("model name")] \
        if info.is_file() else []
    return names[0] if names else platform.processor() or platform.machine()


def render_page(command: str, lat: dict[str, dict[str, float]], loads: dict[str, float], agree: dict[str, dict[str, float]],
                tolerance: dict[str, list[tuple[str, float, float, float, bool]]], torch_threads: int,
                prompt_tokens: float, quality_md: str) -> str:
    """The results page: setup, latency, agreement, tolerance check, then detox_quality's full section."""
    ours = list(agree)
    lines = [
        "# Detoxifier on llama.cpp vs transformers",
        "",
        f"Command: `{command}`",
        "",
        f"Machine: {os.cpu_count()} CPU cores ({cpu_name()}), shared with other jobs; load average "
        f"{loads['start']:.1f} at the start, {loads['end']:.1f} at the end. llama.cpp: `llama-cpp-python` in process, "
        "`LlamaCppDetoxifier` (the bundled Q4_1 GGUF dequantized, the shipped LoRA merged in, F16 GGUF). transformers: "
        f"`LMDetoxifier` (the same dequantized weights in fp32, LoRA merged), torch threads {torch_threads}. Same prompt "
        f"token ids (mean {prompt_tokens:.0f} tokens), greedy, max 160 new tokens; the runtimes take turns answer by "
        "answer (the first one rotates), so read ratios rather than absolute times.",
        "",
        "## Latency per harmful answer",
        "",
        "| runtime | mean s | p50 s | p95 s | generated tokens, mean | tokens/s | speed-up mean / p50 / p95 |",
        "|---|---|---|---|---|---|---|",
    ]
    for name, row in lat.items():
        ratio = " / ".join(f"{lat['transformers'][k] / row[k]:.1f}×" for k in ("mean", "p50", "p95"))
        lines.append(f"| {name} | {row['mean']:.2f} | {row['p50']:.2f} | {row['p95']:.2f} | {row['tokens']:.0f} | "
                     f"{row['tokens_per_s']:.1f} | {ratio} |")
    lines += [
        "",
        "Speed-up is transformers' figure divided by the runtime's, from the same run.",
        "",
        "## Greedy agreement with the transformers path",
        "",
        "| measure | " + " | ".join(ours) + " |",
        "|---|" + "---|" * len(ours),
        "| identical generated token ids (exact match) | "
        + " | ".join(f"{100 * a['exact']:.0f}% ({a['diverged']:.0f} diverge)" for a in agree.values()) + " |",
        "| token agreement: shared prefix / longer generation, mean over answers | "
        + " | ".join(f"{a['prefix_agreement']:.3f}" for a in agree.values()) + " |",
        "| tokens in shared prefixes / all tokens of the longer generations | "
        + " | ".join(f"{a['tokens_identical']:.3f}" for a in agree.values()) + " |",
        "| first differing token, median position among diverging answers | "
        + " | ".join("none" if a["diverged"] == 0 else f"{a['first_divergence_median']:.0f}" for a in agree.values()) + " |",
        "",
        "Both runtimes compute with the same merged weights; llama.cpp holds them in F16 (rounding of at most 1/2048 "
        "relative) and sums in another order, so a greedy choice at a near-tie of the top two tokens can differ, after "
        "which the two continuations part.",
        "",
        "## Quality within tolerance",
        "",
        f"Allowed differences from the transformers path: rates by at most {RATE_TOLERANCE_REWRITES} rewrites of the "
        f"pool or {100 * RATE_TOLERANCE_POINTS:.0f} points (the larger), mean relevance by {RELEVANCE_TOLERANCE}.",
        "",
        "| metric | transformers | " + " | ".join(ours) + " | allowed difference |",
        "|---|---|" + "---|" * len(ours) + "---|",
    ]
    for i, (key, ref, _, tol, _) in enumerate(next(iter(tolerance.values()))):
        cells = [f"{rows[i][2]:.3f} ({'within' if rows[i][4] else 'OUTSIDE'})" for rows in tolerance.values()]
        lines.append(f"| {key} | {ref:.3f} | " + " | ".join(cells) + f" | {tol:.3f} |")
    return "\n".join(lines) + "\n\n" + quality_md.replace("## Detoxifier quality", "## Detoxifier quality (all runtimes)", 1)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--n", type=int, default=20, help="held-out harmful answers to rewrite (with each runtime)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, nargs="+", default=None,
                        help="llama.cpp thread counts, one runtime each (default: the physical cores or MLLM_PROTECTOR_DETOX_THREADS)")
    parser.add_argument("--detector", default="default", help="HarmDetector preset or folder for metric (a)")
    parser.add_argument("--out", type=Path, default=ROOT / "docs" / "results" / "detox_llamacpp.md")
    parser.add_argument("--json", type=Path, default=None, help="also write every number, id list and rewrite as JSON")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    command = "python benchmarks/detox_llamacpp.py " + shlex.join(argv if argv is not None else sys.argv[1:])

    import torch
    from sentence_transformers import SentenceTransformer

    from mllm_protector.detector import HarmDetector
    from mllm_protector.detox_llamacpp import LlamaCppDetoxifier, default_threads
    from mllm_protector.detoxifier import LMDetoxifier
    from mllm_protector.models import resolve_model

    loads = {"start": os.getloadavg()[0]}
    records = held_out(None, DEFAULT_DETOX_ADAPTER, args.n, args.seed)
    runtimes: dict[str, LocalDetoxifier] = {"transformers": LMDetoxifier()}
    for threads in args.threads or [default_threads()]:
        runtimes[f"llama.cpp, {threads} thread{'s' if threads > 1 else ''}"] = LlamaCppDetoxifier(n_threads=threads)
    names = list(runtimes)
    runs: dict[str, dict[str, list[Any]]] = {name: {"ids": [], "text": [], "s": []} for name in names}
    for detox in runtimes.values():
        timed_rewrite(detox, records[0].query, records[0].harmful)  # warm-up, not timed
    prompt_tokens = []
    for i, record in enumerate(records):
        prompt_tokens.append(len(runtimes["transformers"].prompt_ids(record.query, record.harmful)))
        for name in names[i % len(names):] + names[: i % len(names)]:
            ids, text, seconds = timed_rewrite(runtimes[name], record.query, record.harmful)
            for key, value in (("ids", ids), ("text", text), ("s", seconds)):
                runs[name][key].append(value)
            log.info("[%s] %d/%d %.1fs %d tokens", name, i + 1, len(records), seconds, len(ids))
    loads["end"] = os.getloadavg()[0]

    detector = HarmDetector.from_pretrained(args.detector)
    embedder = SentenceTransformer(resolve_model("minilm-l6"), device="cpu")
    originals_flagged = sum(detector.is_harmful([r.harmful for r in records], [r.query for r in records])) / len(records)
    results = {name: quality(f"SmolLM2-135M + shipped LoRA, {name}", runs[name]["text"], runs[name]["s"], records,
                             detector, embedder) for name in names}
    lat = {name: latency(runs[name]["s"], runs[name]["ids"]) for name in names}
    ours = names[1:]
    agree = {name: agreement(runs["transformers"]["ids"], runs[name]["ids"]) for name in ours}
    tolerance = {name: within_tolerance(results["transformers"], results[name], len(records)) for name in ours}
    quality_md = render(command, list(results.values()), records, category_accuracy(data_dir()), args.detector,
                        originals_flagged, f"{statistics.mean(loads.values()):.1f} on {os.cpu_count()} cores")
    page = render_page(command, lat, loads, agree, tolerance, torch.get_num_threads(), statistics.mean(prompt_tokens), quality_md)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(page)
    log.info("wrote %s", args.out)
    if args.json:
        args.json.write_text(json.dumps({"command": command, "latency": lat, "agreement": agree, "loads": loads,
                                         "tolerance": tolerance, "results": results, "runs": runs}, indent=2) + "\n")
    print(page)


if __name__ == "__main__":
    main()
