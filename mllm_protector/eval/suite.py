"""The evaluation suite behind `make eval`: stored-response ASR, benign pass-through, detector metrics,
an optional real-detoxifier sample and a latency sample, then the Markdown/HTML report."""

from __future__ import annotations

import datetime as _dt
import logging
import os
import platform
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from ..config import data_dir
from .detector_eval import describe_detector, evaluate_scores
from .judges import Judge, KeywordJudge
from .report import build_stored_report, save_json, write_report
from .stored import latency_sample, lm_detox_sample, stored_evaluation

logger = logging.getLogger(__name__)

REPORT_TITLE = "Evaluation: attack success before/after the protector, benign pass-through, detector metrics"


def machine() -> str:
    """A short description of where the numbers were measured."""
    import torch

    device = f"GPU {torch.cuda.get_device_name(0)}" if torch.cuda.is_available() else "no GPU"
    return f"{os.cpu_count()} CPU cores, {device}, torch {torch.__version__}, {platform.system()}"


def run_suite(
    detector: Any,
    detector_name: str,
    root: str | Path | None = None,
    detoxifier: Any = None,
    judge: Judge | None = None,
    max_per_source: dict[str, int] | None = None,
    detector_extra: Sequence[str] = ("pku_saferlhf",),
    lm_detoxifier: Any = None,
    lm_sample: int = 0,
    lm_rounds: int = 2,
    latency_n: int = 100,
    seed: int = 0,
    batch_size: int = 64,
    command: str = "",
) -> dict[str, Any]:
    """Everything `make eval` reports, as one JSON-ready dict (see `render_suite`)."""
    t0 = time.perf_counter()
    root = data_dir(root)
    judge = judge or KeywordJudge()
    stored, items = stored_evaluation(detector, root, detoxifier, judge, max_per_source=max_per_source,
                                      detector_extra=detector_extra, seed=seed, batch_size=batch_size)
    detector_results: dict[str, Any] = {"sources": sorted({i.example.source for i in items})}
    for split in ("val", "all"):
        chosen = [i for i in items if (i.in_all if split == "all" else i.split == "val")]
        detector_results[split] = evaluate_scores([i.example.label for i in chosen], [i.score for i in chosen],
                                                  [i.example.source for i in chosen], stored["meta"]["threshold"])
    results: dict[str, Any] = {
        "meta": {"command": command, "date": _dt.date.today().isoformat(), "machine": machine(), "seed": seed,
                 "data_dir": str(root)},
        "detector_info": describe_detector(detector, detector_name),
        "stored": stored,
        "detector": detector_results,
    }
    if lm_sample > 0 and lm_detoxifier is not None:
        logger.info("detoxifier sample: %d answers", lm_sample)
        results["lm_detox"] = lm_detox_sample(items, detector, lm_detoxifier, judge, lm_sample, lm_rounds, seed)
    if latency_n > 0:
        from ..config import ProtectorSettings
        from ..detoxifier import RefusalDetoxifier
        from ..protector import Protector

        logger.info("latency sample: %d answers one at a time", latency_n)
        guard = Protector(detector, RefusalDetoxifier(), ProtectorSettings(max_rounds=1))
        results["latency"] = latency_sample([i for i in items if i.bench != "detector-only"], guard, latency_n, seed)
    results["meta"]["seconds"] = time.perf_counter() - t0
    return results


def render_suite(results: dict[str, Any], md_path: Path | None, report_dir: Path, name: str = "eval_report",
                 md_link_base: Path | None = None) -> None:
    """Write `<report_dir>/<name>.html` (self-contained), `<report_dir>/<name>.json`, the PNG plots, and
    the Markdown fragment `md_path` (links relative to `md_link_base`, default its own folder)."""
    report_dir.mkdir(parents=True, exist_ok=True)
    save_json(results, report_dir / f"{name}.json")
    blocks = build_stored_report(results, report_dir, prefix=name.replace("_report", ""))
    html_path = report_dir / f"{name}.html"
    base = md_link_base or (md_path.parent if md_path else report_dir)
    link = Path(os.path.relpath(html_path, base)).as_posix()
    write_report(blocks, REPORT_TITLE, md_path, html_path, base, "##", html_link=link)
