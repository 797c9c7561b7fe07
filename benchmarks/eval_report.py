"""Regenerate the evaluation report (`make eval`): stored-response ASR before/after per scenario for
MM-SafetyBench, FigStep and JailbreakBench, benign pass-through, detector metrics, a real-detoxifier
sample and a latency sample — from ../shared/data, no MLLM needed.

Writes docs/results/eval_report.md (a fragment of docs/RESULTS.md; then run benchmarks/render_results.py)
and docs/reports/eval_report.{html,json} + PNG plots. The defaults keep the run within ~30 min on a
2-core CPU: the long MM-SafetyBench answers and the large VLGuard set are subsampled for the all-data
numbers (held-out numbers always use every held-out answer), and the slow LM detoxifier runs on a sample.
"""

from __future__ import annotations

import argparse
import logging
import os
import shlex
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_CAPS = ["mm-safetybench=1200", "vlguard=1500"]


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data-dir", type=Path, default=None, help="data folder (default ../shared/data)")
    parser.add_argument("--detector", default="default", help="guard detector: preset or saved folder")
    parser.add_argument("--detoxifier", default="refusal", help="none | refusal | lm | OpenAI-compatible URL (main pass)")
    parser.add_argument("--judge", default="keyword", help="keyword | classifier[:<detector>] | LLM judge URL")
    parser.add_argument("--judge-model", default="default")
    parser.add_argument("--max-per-source", nargs="*", default=DEFAULT_CAPS, metavar="SOURCE=N",
                        help=f"uniform sample size for the all-data numbers (default: {' '.join(DEFAULT_CAPS)})")
    parser.add_argument("--detector-extra", nargs="*", default=[], help="extra labelled sources for detector metrics (pku_saferlhf)")
    parser.add_argument("--lm-sample", type=int, default=12, help="flagged unsafe answers rewritten by the LM detoxifier (0: skip)")
    parser.add_argument("--lm-rounds", type=int, default=2)
    parser.add_argument("--latency-sample", type=int, default=100)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--md", type=Path, default=ROOT / "docs" / "results" / "eval_report.md")
    parser.add_argument("--md-link-base", type=Path, default=ROOT / "docs", help="folder the Markdown is read from (RESULTS.md)")
    parser.add_argument("--report-dir", type=Path, default=ROOT / "docs" / "reports")
    args = parser.parse_args(argv)

    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    for noisy in ("httpx", "transformers", "urllib3"):
        logging.getLogger(noisy).setLevel(logging.WARNING)

    from mllm_protector.detector import HarmDetector
    from mllm_protector.eval.cli import _caps, make_detoxifier
    from mllm_protector.eval.judges import make_judge
    from mllm_protector.eval.suite import render_suite, run_suite

    command = "make eval" if argv is None and len(sys.argv) == 1 else \
        "python benchmarks/eval_report.py " + shlex.join(sys.argv[1:] if argv is None else argv)
    detector = HarmDetector.from_pretrained(args.detector)
    results = run_suite(
        detector,
        args.detector,
        args.data_dir,
        detoxifier=make_detoxifier(args.detoxifier),
        judge=make_judge(args.judge, args.detector, args.judge_model),
        max_per_source=_caps(args.max_per_source),
        detector_extra=args.detector_extra,
        lm_detoxifier=make_detoxifier("lm") if args.lm_sample else None,
        lm_sample=args.lm_sample,
        lm_rounds=args.lm_rounds,
        latency_n=args.latency_sample,
        seed=args.seed,
        command=command + ("  # = python benchmarks/eval_report.py && python benchmarks/render_results.py"
                           if command == "make eval" else ""),
    )
    render_suite(results, args.md, args.report_dir, md_link_base=args.md_link_base)
    print(f"wrote {args.md} and {args.report_dir / 'eval_report.html'} in {results['meta']['seconds'] / 60:.1f} min")


if __name__ == "__main__":
    main()
