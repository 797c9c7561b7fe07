"""Build the leave-one-source-out corpus and cache frozen-backbone features for every example.

Reads the shared data (old sources + every labelled set), deduplicates, caps each (source, label) cell
(deterministic sample, by whole question groups) and writes under --out `examples.jsonl` and
`feat_<variant>.npy` for each input variant (response, query, query_response): see
`mllm_protector.train.probe.build_feature_cache`. `detector_loso.py` and `train probe` read the cache.
Usage: python benchmarks/loso_features.py --out runs/loso [--cap 1000]
"""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

import torch

from mllm_protector.config import data_dir
from mllm_protector.data import load_corpus
from mllm_protector.data.labelled import labelled_sets
from mllm_protector.data.readers import SOURCES
from mllm_protector.train.probe import VARIANTS, build_feature_cache, sample


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("runs/loso"))
    parser.add_argument("--data-dir", type=Path, default=None)
    parser.add_argument("--cap", type=int, default=1000)
    parser.add_argument("--backbone", default="minilm-l6")
    parser.add_argument("--variants", default=",".join(VARIANTS))
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    torch.set_num_threads(2)
    root = data_dir(args.data_dir)
    corpus = load_corpus(root, [s for s in SOURCES if s != "hh_rlhf"] + labelled_sets(root))
    examples = sample(corpus.examples, args.cap, args.seed)
    logging.info("%d examples from %d sources", len(examples), len({e.source for e in examples}))
    build_feature_cache(examples, args.out, args.backbone, args.variants.split(","))


if __name__ == "__main__":
    main()
