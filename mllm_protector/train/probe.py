"""Training a probe detector: pooled features of a frozen backbone → logistic-regression heads.

Features are computed once per example (first window, as the LoRA trainer), so the head can be fitted,
compared across data mixes and evaluated leave-one-source-out in seconds. Source-balanced sample
weights give every source (and each label within it) the same total weight, so big sets don't decide
what "harmful" means.
"""

from __future__ import annotations

import json
import logging
import random
import time
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..data.records import Example
from ..detector import Combine, DetectorConfig, InputFormat, encode_windows, padded_batches
from ..probe import PooledProbe, build_probe

#: Backbone layers whose mean-pooled states feed the heads, per backbone (MiniLM-L6: all six;
#: SmolLM2-135M: every fourth of its 30 decoder layers and the last).
LAYERS: dict[str, tuple[int, ...]] = {"minilm-l6": (1, 2, 3, 4, 5, 6), "smollm2-135m-instruct": (4, 8, 12, 16, 20, 24, 28, 30)}


def layers_for(backbone: str) -> tuple[int, ...]:
    """The pooled layers for a backbone: the table above, or every layer of an unknown encoder."""
    if backbone in LAYERS:
        return LAYERS[backbone]
    from transformers import AutoConfig

    from ..models import resolve_model

    return tuple(range(1, AutoConfig.from_pretrained(resolve_model(backbone)).num_hidden_layers + 1))
#: Input variants a feature cache can hold, with their token budget: the answer alone, the question
#: and answer in one sequence ("Question: q / Answer: a"), the question alone.
VARIANTS = {"response": 128, "query": 48, "query_response": 128}

logger = logging.getLogger(__name__)


@torch.inference_mode()
def extract_features(
    probe: PooledProbe,
    tokenizer: Any,
    config: DetectorConfig,
    responses: Sequence[str],
    queries: Sequence[str | None] | None = None,
    batch_size: int = 32,
    progress: bool = False,
) -> np.ndarray:
    """Unstandardised pooled features of each text's first window, float32 (n, width)."""
    from ..probe import pooled_features

    encoded = encode_windows(tokenizer, config, responses, queries, max_windows=1)["input_ids"]
    width = probe.backbone.config.hidden_size * len(probe.layers)
    out = np.zeros((len(encoded), width), dtype=np.float32)
    for n, (idx, batch) in enumerate(padded_batches(tokenizer, encoded, batch_size)):
        feats = pooled_features(probe.backbone, batch["input_ids"], batch["attention_mask"], probe.layers)
        out[idx] = feats.float().numpy()
        if progress and n % 50 == 0:
            logger.info("features: %d / %d", n * batch_size + len(idx), len(encoded))
    return out


def balanced_weights(sources: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """Equal total weight per (source, label) cell, normalised to mean 1."""
    keys = np.char.add(sources.astype(str), labels.astype(str))
    _, inverse, counts = np.unique(keys, return_inverse=True, return_counts=True)
    w = 1.0 / counts[inverse]
    return w * len(w) / w.sum()


@dataclass
class LinearHead:
    """A fitted linear head on standardised features: `coef_` (outputs, width), `intercept_` (outputs,)."""

    coef_: np.ndarray
    intercept_: np.ndarray
    classes_: np.ndarray

    def decision_function(self, z: np.ndarray) -> np.ndarray:
        """Logits of standardised features; one column for a binary head (as sklearn)."""
        out = z @ self.coef_.T + self.intercept_
        return out[:, 0] if out.shape[1] == 1 else out


def _standardise(features: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    return features.mean(0), features.std(0) + 1e-6


def _fit_linear(z: np.ndarray, labels: np.ndarray, weights: np.ndarray | None, c: float, components: int, seed: int) -> LinearHead:
    """L2 logistic regression in the top principal directions of `z`, folded back to the full width.

    The projection keeps each fit fast on two CPU cores (the features are 2,304 wide, the data ~30k
    rows, the fit repeated once per held-out source) and regularises like a low-rank prior.
    """
    from sklearn.decomposition import PCA
    from sklearn.linear_model import LogisticRegression

    rng = np.random.default_rng(seed)
    rows = rng.choice(len(z), size=min(len(z), 4000), replace=False)
    basis = PCA(n_components=min(components, z.shape[1], len(rows)), svd_solver="randomized", random_state=seed).fit(z[rows]).components_
    model = LogisticRegression(C=c, max_iter=1000).fit(z @ basis.T, labels, sample_weight=weights)
    return LinearHead(model.coef_ @ basis, model.intercept_, model.classes_)


def fit_head(features: np.ndarray, labels: Sequence[int] | np.ndarray, weights: np.ndarray, c: float = 0.05,
             components: int = 256, seed: int = 0) -> tuple[np.ndarray, np.ndarray, LinearHead]:
    """Standardise features and fit the harm head; returns (mean, scale, head)."""
    mean, scale = _standardise(features)
    return mean, scale, _fit_linear((features - mean) / scale, np.asarray(labels), weights, c, components, seed)


def install_heads(probe: PooledProbe, mean: np.ndarray, scale: np.ndarray, harm: Any, category: Any | None = None) -> None:
    """Copy fitted sklearn heads (and the standardisation) into the probe's torch layers."""
    with torch.no_grad():
        probe.mean.copy_(torch.from_numpy(mean))
        probe.scale.copy_(torch.from_numpy(scale))
        probe.head.weight.copy_(torch.from_numpy(harm.coef_[:1]))
        probe.head.bias.copy_(torch.from_numpy(harm.intercept_[:1]))
        if category is not None and probe.category_head is not None:
            probe.category_head.weight.copy_(torch.from_numpy(category.coef_))
            probe.category_head.bias.copy_(torch.from_numpy(category.intercept_))


def sample(examples: Sequence[Example], cap: int, seed: int) -> list[Example]:
    """At most `cap` examples per English (source, label) and cap/4 per other language, by whole groups (deterministic)."""
    cells: dict[tuple, dict[str, list]] = defaultdict(lambda: defaultdict(list))
    for e in examples:
        cells[(e.source, e.label, e.meta.get("lang", "en"))][e.group].append(e)
    rng = random.Random(seed)
    kept: list[Example] = []
    for key in sorted(cells):
        groups = sorted(cells[key])
        rng.shuffle(groups)
        limit = cap if key[2] == "en" else cap // 4  # other languages: enough to report per language
        taken: list[Example] = []
        for g in groups:
            if len(taken) >= limit:
                break
            taken += cells[key][g][: max(1, limit - len(taken))]
        kept += taken
    return kept


def build_feature_cache(examples: Sequence[Example], out: Path, backbone: str, variants: Sequence[str]) -> None:
    """Write `examples.jsonl`, `features.json` (backbone, layers) and `feat_<variant>.npy` (float16) under `out`.

    Existing variants are kept.
    """
    out.mkdir(parents=True, exist_ok=True)
    layers = layers_for(backbone)
    (out / "features.json").write_text(json.dumps({"backbone": backbone, "layers": list(layers)}) + "\n")
    with (out / "examples.jsonl").open("w") as handle:
        for e in examples:
            handle.write(json.dumps({"source": e.source, "label": e.label, "group": e.group, "scenario": e.scenario,
                                     "lang": e.meta.get("lang", "en"), "label_source": e.meta.get("label_source", ""),
                                     "query": e.query, "response": e.response}, ensure_ascii=False) + "\n")
    probe = build_probe(backbone, layers)
    from ..models import load_tokenizer

    tokenizer = load_tokenizer(backbone)
    for variant in variants:
        target = out / f"feat_{variant}.npy"
        if target.is_file():
            continue
        t0 = time.time()
        fmt = "query_response" if variant == "query_response" else "response"
        config = DetectorConfig(backbone=backbone, max_length=VARIANTS[variant], stride=16, input_format=fmt)  # type: ignore[arg-type]
        texts = [e.query or "" for e in examples] if variant == "query" else [e.response for e in examples]
        queries = [e.query for e in examples] if variant == "query_response" else None
        feats = extract_features(probe, tokenizer, config, texts, queries, batch_size=32, progress=True)
        np.save(target, feats.astype(np.float16))
        logger.info("variant %s: %.1f s (%.1f examples/s)", variant, time.time() - t0, len(texts) / (time.time() - t0))


def cache_backbone(cache: Path) -> tuple[str, list[int]]:
    """The backbone and pooled layers a feature cache was computed with (its `features.json`)."""
    meta = json.loads((cache / "features.json").read_text())
    return str(meta["backbone"]), [int(x) for x in meta["layers"]]


def fit_category_head(features: np.ndarray, categories: Sequence[str | None], mean: np.ndarray, scale: np.ndarray,
                      c: float, components: int = 256) -> tuple[LinearHead, list[str]]:
    """Multinomial head naming the category of harmful rows (rows without a category are skipped)."""
    idx = [i for i, cat in enumerate(categories) if cat]
    labels = np.array([categories[i] for i in idx])
    head = _fit_linear((features[idx] - mean) / scale, labels, None, c, components, seed=0)
    if len(head.classes_) == 2:  # sklearn keeps one row for two classes; softmax needs one per class
        head = LinearHead(np.vstack([np.zeros_like(head.coef_), head.coef_]),
                          np.concatenate([[0.0], head.intercept_]), head.classes_)
    return head, [str(x) for x in head.classes_]


def category_accuracy(features: np.ndarray, categories: Sequence[str | None], groups: Sequence[str],
                      mean: np.ndarray, scale: np.ndarray, c: float, val_fraction: float = 0.2) -> dict[str, Any]:
    """Accuracy of the category head on a question-group split (fitted on the rest), overall and per category."""
    from ..data.splits import group_bucket

    val = np.array([group_bucket(g, 0) < val_fraction for g in groups])
    train_cats = [cat if not v else None for cat, v in zip(categories, val, strict=True)]
    head, names = fit_category_head(features, train_cats, mean, scale, c)
    idx = [i for i, cat in enumerate(categories) if cat and val[i]]
    pred = np.array(names)[np.argmax(head.decision_function((features[idx] - mean) / scale), axis=1)]
    truth = np.array([categories[i] for i in idx])
    per = {name: {"n": int((truth == name).sum()), "accuracy": float((pred[truth == name] == name).mean())}
           for name in sorted(set(truth))}
    return {"n": len(idx), "accuracy": float((pred == truth).mean()), "by_category": per}


def train_probe(
    cache: Path, variant: InputFormat, mix: str, c: float, max_length: int, stride: int, combine: Combine,
) -> tuple[Any, dict[str, Any]]:
    """Fit harm and category heads on the cached features; threshold and metrics come from LOSO.

    The threshold is chosen on the pooled leave-one-source-out scores (see `train.loso`), so it is the
    one an unseen source meets, not one tuned on in-distribution validation.
    """
    from ..categories import training_category
    from ..detector import DetectorConfig, HarmDetector
    from ..models import load_tokenizer
    from .loso import Data, choose_transfer_threshold, loso_scores, summarize

    backbone, layers = cache_backbone(cache)
    data = Data.load(cache)
    keep = data.train_mask(mix)
    t0 = time.time()
    oof = loso_scores(data, [variant], keep, c)
    threshold = choose_transfer_threshold(data, oof)
    loso = summarize(data, oof, threshold)
    logger.info("LOSO mean AUROC %.3f, worst %.3f (%s) in %.0f s", loso["loso_mean_auroc"], loso["loso_worst_auroc"],
                loso["loso_worst_family"], time.time() - t0)
    x = data.matrix([variant])
    idx = np.flatnonzero(keep)
    mean, scale, harm = fit_head(x[idx], data.labels[idx], balanced_weights(data.sources[idx], data.labels[idx]), c)
    cats = [training_category(data.rows[i]["source"], data.rows[i].get("scenario"), data.rows[i].get("query"))
            if data.labels[i] == 1 else None for i in idx]
    category_check = category_accuracy(x[idx], cats, [data.rows[i]["group"] for i in idx], mean, scale, c)
    category, names = fit_category_head(x[idx], cats, mean, scale, c)
    probe = build_probe(backbone, layers, len(names))
    install_heads(probe, mean, scale, harm, category)
    config = DetectorConfig(backbone=backbone, threshold=threshold, max_length=max_length, stride=stride,
                            input_format=variant, lora=False, kind="probe", layers=layers, categories=names, combine=combine)
    config.metrics = {"loso": {k: v for k, v in loso.items()}}
    config.training = {"features": str(cache), "variant": variant, "mix": mix, "c": c, "examples": int(len(idx)),
                       "by_source": {s: {"harmful": int(((data.sources == s) & keep & (data.labels == 1)).sum()),
                                         "harmless": int(((data.sources == s) & keep & (data.labels == 0)).sum())}
                                     for s in sorted(set(data.sources[idx]))},
                       "category_examples": int(sum(1 for cat in cats if cat)), "category_check": category_check}
    detector = HarmDetector(probe, load_tokenizer(backbone), config, device="cpu")
    return detector, {"loso": loso, "loso_wall_s": time.time() - t0}
