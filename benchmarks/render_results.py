"""Assemble docs/RESULTS.md from the fragments benchmark scripts write into docs/results/*.md.

Each fragment is produced by a script that states its own command line; this file only concatenates
them (known ones first, in a fixed order), so RESULTS.md is regenerated, never hand-edited.
"""

from __future__ import annotations

import argparse
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
ORDER = [
    "detector_default.md",
    "detector_loso.md",
    "detector_robustness.md",
    "detector_experiments.md",
    "detector_heldout.md",
    "detox_quality.md",
    "eval_report.md",
    "proxy_load.md",
]
HEADER = """# Results

Every section below was written by the script whose command it names (regenerate with that command,
then `python benchmarks/render_results.py`); no number here is typed by hand. Machine: 2 CPU cores,
24 GiB RAM, no GPU, unless a section says otherwise.
"""


def render(results_dir: Path) -> str:
    """RESULTS.md text: the header plus every fragment, known names first."""
    fragments = sorted(results_dir.glob("*.md"), key=lambda p: (ORDER.index(p.name) if p.name in ORDER else len(ORDER), p.name))
    return HEADER + "".join("\n" + p.read_text().strip() + "\n" for p in fragments)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--results-dir", type=Path, default=ROOT / "docs" / "results")
    parser.add_argument("--out", type=Path, default=ROOT / "docs" / "RESULTS.md")
    args = parser.parse_args()
    args.out.write_text(render(args.results_dir))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
