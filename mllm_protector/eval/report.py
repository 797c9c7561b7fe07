"""Reports: Markdown + one self-contained HTML file (PNG plots embedded) from evaluation results.

A report is built once as a list of blocks (headings, paragraphs, tables, images) and rendered twice, so the
Markdown fragment (for docs/RESULTS.md) and the HTML page always show the same numbers. Plots are written as
small matplotlib PNGs beside the HTML file.
"""

from __future__ import annotations

import base64
import html
import json
import math
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .benchmarks import scenario_label

# ---------------------------------------------------------------- blocks


@dataclass
class Block:
    kind: str  # h2 | h3 | p | table | img | details | code
    text: str = ""
    headers: list[str] = field(default_factory=list)
    rows: list[list[str]] = field(default_factory=list)
    path: Path | None = None
    children: list[Block] = field(default_factory=list)


def pct(value: Any, digits: int = 1) -> str:
    """12.3% for 0.123; an en dash for missing/NaN."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "–"
    return f"{100 * value:.{digits}f}%"


def num(value: Any, digits: int = 3) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "–"
    if isinstance(value, int):
        return str(value)
    return f"{value:.{digits}f}"


def to_markdown(blocks: Sequence[Block], link_base: Path) -> str:
    """Markdown text; image paths are written relative to `link_base` (the folder the .md is read from)."""
    out: list[str] = []
    for b in blocks:
        if b.kind in ("h2", "h3", "h4"):
            out.append("#" * int(b.kind[1]) + " " + b.text)
        elif b.kind == "p":
            out.append(b.text)
        elif b.kind == "code":
            out.append("```bash\n" + b.text + "\n```")
        elif b.kind == "table":
            lines = ["| " + " | ".join(b.headers) + " |", "|" + "|".join("---" for _ in b.headers) + "|"]
            lines += ["| " + " | ".join(cell.replace("|", "\\|") for cell in row) + " |" for row in b.rows]
            out.append("\n".join(lines))
        elif b.kind == "img" and b.path is not None:
            out.append(f"![{b.text}]({Path(os.path.relpath(b.path, link_base)).as_posix()})")
        elif b.kind == "details":
            out.append(f"<details><summary>{b.text}</summary>\n\n{to_markdown(b.children, link_base)}\n\n</details>")
    return "\n\n".join(out) + "\n"


_CSS = """body{font-family:system-ui,sans-serif;max-width:1100px;margin:2em auto;padding:0 1em;color:#222}
table{border-collapse:collapse;margin:1em 0;font-size:14px}td,th{border:1px solid #ccc;padding:3px 8px;text-align:right}
td:first-child,th:first-child{text-align:left}th{background:#f3f3f3}img{max-width:100%}code,pre{background:#f6f6f6}
pre{padding:.6em;overflow-x:auto}details{margin:1em 0}"""


def _inline(text: str) -> str:
    """Escape, then the little Markdown used in paragraphs: `code`, **bold**, [text](link)."""
    import re

    text = html.escape(text, quote=False)
    text = re.sub(r"`([^`]+)`", r"<code>\1</code>", text)
    text = re.sub(r"\*\*([^*]+)\*\*", r"<b>\1</b>", text)
    return re.sub(r"\[([^\]]+)\]\(([^)]+)\)", r'<a href="\2">\1</a>', text)


def to_html(blocks: Sequence[Block], title: str) -> str:
    """A self-contained HTML page: PNGs embedded as data URLs."""
    body = _html_blocks(blocks)
    return (f"<!doctype html>\n<html><head><meta charset='utf-8'><title>{html.escape(title)}</title>"
            f"<style>{_CSS}</style></head><body>\n<h1>{html.escape(title)}</h1>\n{body}\n</body></html>\n")


def _html_blocks(blocks: Sequence[Block]) -> str:
    out = []
    for b in blocks:
        if b.kind in ("h2", "h3", "h4"):
            out.append(f"<{b.kind}>{_inline(b.text)}</{b.kind}>")
        elif b.kind == "p":
            out.append(f"<p>{_inline(b.text)}</p>")
        elif b.kind == "code":
            out.append(f"<pre><code>{html.escape(b.text)}</code></pre>")
        elif b.kind == "table":
            head = "".join(f"<th>{_inline(h)}</th>" for h in b.headers)
            rows = "".join("<tr>" + "".join(f"<td>{_inline(c)}</td>" for c in row) + "</tr>" for row in b.rows)
            out.append(f"<table><tr>{head}</tr>{rows}</table>")
        elif b.kind == "img" and b.path is not None and Path(b.path).is_file():
            data = base64.b64encode(Path(b.path).read_bytes()).decode("ascii")
            out.append(f"<p><img alt='{html.escape(b.text)}' src='data:image/png;base64,{data}'></p>")
        elif b.kind == "details":
            out.append(f"<details><summary>{_inline(b.text)}</summary>{_html_blocks(b.children)}</details>")
    return "\n".join(out)


# ---------------------------------------------------------------- plots


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _save(fig: Any, path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.tight_layout()
    fig.savefig(path, dpi=90, metadata={"Software": None})
    _pyplot().close(fig)
    return path


def plot_asr(panels: Sequence[tuple[str, Sequence[dict[str, Any]]]], path: Path, title: str) -> Path:
    """Grouped bars per scenario, ASR before vs after, one panel per (panel title, rows with key/asr_*)."""
    import numpy as np

    plt = _pyplot()
    fig, axes = plt.subplots(1, len(panels), figsize=(5.5 * len(panels), 4.2), squeeze=False, sharey=True)
    for ax, (panel_title, rows) in zip(axes[0], panels, strict=True):
        labels = [scenario_label(r["key"]) for r in rows]
        x = np.arange(len(rows))
        before = [100 * (r.get("asr_before") or 0.0) for r in rows]
        after = [100 * (r.get("asr_after") or 0.0) for r in rows]
        ax.bar(x - 0.2, before, 0.4, label="before", color="#d62728")
        ax.bar(x + 0.2, after, 0.4, label="after protector", color="#2ca02c")
        ax.set_xticks(x, [label[:22] for label in labels], rotation=55, ha="right", fontsize=8)
        ax.set_title(panel_title, fontsize=10)
        ax.grid(axis="y", alpha=0.3)
    top = max([100 * r[k] for _, rows in panels for r in rows for k in ("asr_before", "asr_after")
               if r.get(k) is not None and not math.isnan(r[k])] + [1.0])
    axes[0][0].set_ylim(0, min(100.0, top * 1.15 + 2))
    axes[0][0].set_ylabel("attack success rate (%)")
    axes[0][0].legend(fontsize=8)
    fig.suptitle(title, fontsize=11)
    return _save(fig, path)


def plot_roc(curves: Sequence[tuple[str, dict[str, list[float]], float]], path: Path) -> Path:
    """ROC curves: (label, {fpr, tpr}, auroc) each."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(5.2, 4.6))
    for label, roc, auc in curves:
        if roc.get("fpr"):
            ax.plot(roc["fpr"], roc["tpr"], label=f"{label} (AUROC {num(auc)})", lw=1.5)
    ax.plot([0, 1], [0, 1], color="#999", lw=0.8, ls="--")
    ax.set_xlabel("false-positive rate")
    ax.set_ylabel("true-positive rate (recall)")
    ax.set_title("Detector ROC", fontsize=11)
    ax.legend(fontsize=7, loc="lower right")
    ax.grid(alpha=0.3)
    return _save(fig, path)


def plot_reliability(curves: Sequence[tuple[str, Sequence[dict[str, float]]]], path: Path) -> Path:
    """Reliability diagram: harmful fraction vs mean P(harmful) per bin, marker size ~ log count."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(5.2, 4.6))
    ax.plot([0, 1], [0, 1], color="#999", lw=0.8, ls="--", label="perfect calibration")
    for label, bins in curves:
        if bins:
            sizes = [12 + 8 * math.log10(b["count"]) for b in bins]
            ax.plot([b["mean_score"] for b in bins], [b["frac_harmful"] for b in bins], marker="o", lw=1.2, label=label)
            ax.scatter([b["mean_score"] for b in bins], [b["frac_harmful"] for b in bins], s=sizes, alpha=0.4)
    ax.set_xlabel("mean predicted P(harmful) in bin")
    ax.set_ylabel("fraction labelled harmful")
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1)
    ax.set_title("Detector reliability (10 bins)", fontsize=11)
    ax.legend(fontsize=7, loc="upper left")
    ax.grid(alpha=0.3)
    return _save(fig, path)


def plot_summary(asr: Sequence[tuple[str, float, float]], benign: Sequence[tuple[str, float, int]],
                 curves: Sequence[tuple[str, dict[str, list[float]], float]], path: Path) -> Path:
    """The report's first screen in one figure: attack success before/after per benchmark (label, before,
    after), benign pass-through per source (label, rate, n), detector ROC curves (label, {fpr, tpr}, auroc)."""
    import numpy as np

    plt = _pyplot()
    fig, (ax_asr, ax_benign, ax_roc) = plt.subplots(1, 3, figsize=(13, 3.9), gridspec_kw={"width_ratios": [1, 1.15, 1]})
    x = np.arange(len(asr))
    for offset, values, label, color in ((-0.2, [b for _, b, _ in asr], "before", "#d62728"),
                                         (0.2, [a for _, _, a in asr], "after protector", "#2ca02c")):
        bars = ax_asr.bar(x + offset, [100 * v for v in values], 0.4, label=label, color=color)
        ax_asr.bar_label(bars, [f"{100 * v:.0f}%" for v in values], fontsize=8, padding=1)
    ax_asr.set_xticks(x, [label for label, _, _ in asr], fontsize=9)
    ax_asr.set_ylim(0, 105)
    ax_asr.set_ylabel("attack success rate (%)")
    ax_asr.set_title("Attack success, held-out answers", fontsize=10)
    ax_asr.legend(fontsize=8, loc="upper left")
    y = np.arange(len(benign))[::-1]
    bars = ax_benign.barh(y, [100 * rate for _, rate, _ in benign], color="#1f77b4")
    ax_benign.bar_label(bars, [f"{100 * rate:.1f}% of {n}" for _, rate, n in benign], fontsize=8, label_type="center",
                        color="white")
    ax_benign.set_yticks(y, [label[:28] for label, _, _ in benign], fontsize=8)
    ax_benign.set_xlim(0, 100)
    ax_benign.set_xlabel("answers passed unchanged (%)")
    ax_benign.set_title("Benign pass-through, held-out answers", fontsize=10)
    for label, roc, auc in curves:
        ax_roc.plot(roc["fpr"], roc["tpr"], lw=1.4, label=f"{label} ({num(auc)})")
    ax_roc.plot([0, 1], [0, 1], color="#999", lw=0.8, ls="--")
    ax_roc.set_xlabel("false-positive rate")
    ax_roc.set_ylabel("recall")
    ax_roc.set_title("Detector ROC, held-out (AUROC)", fontsize=10)
    ax_roc.legend(fontsize=7, loc="lower right")
    for ax in (ax_asr, ax_benign, ax_roc):
        ax.grid(alpha=0.3, axis="x" if ax is ax_benign else "both" if ax is ax_roc else "y")
    return _save(fig, path)


def plot_latency(series: Sequence[tuple[str, Sequence[float]]], path: Path) -> Path:
    """Latency histograms in milliseconds, one panel per non-empty series."""
    plt = _pyplot()
    series = [(label, values) for label, values in series if len(values)]
    fig, axes = plt.subplots(1, max(1, len(series)), figsize=(5 * max(1, len(series)), 3.6), squeeze=False)
    for ax, (label, values) in zip(axes[0], series, strict=False):
        ax.hist(values, bins=30, color="#1f77b4")
        ax.set_xlabel("milliseconds")
        ax.set_ylabel("answers")
        values_sorted = sorted(values)
        median = values_sorted[len(values_sorted) // 2]
        ax.set_title(f"{label} (median {median:.0f} ms)", fontsize=10)
        ax.grid(alpha=0.3)
    return _save(fig, path)


# ---------------------------------------------------------------- stored-evaluation report


def _harm_table(section_by_split: dict[str, Any], bench: str, rows_key: str = "rows", label: str = "Scenario",
                pretty: bool = True) -> Block:
    """One table: per scenario, held-out and all-data columns side by side."""
    val = section_by_split.get("val", {}).get(bench, {})
    all_ = section_by_split.get("all", {}).get(bench, {})
    val_rows = {r["key"]: r for r in val.get(rows_key, [])}
    headers = [label, "n held-out", "ASR before", "ASR after", "recall", "FPR",
               "n all", "ASR before", "ASR after", "recall", "FPR"]
    rows = []

    def cells(r: dict[str, Any] | None) -> list[str]:
        if not r:
            return ["0", "–", "–", "–", "–"]
        return [str(r["n"]), pct(r["asr_before"]), pct(r["asr_after"]), pct(r["recall"]), pct(r["fpr"])]

    for r in all_.get(rows_key, []):
        name = scenario_label(r["key"]) if pretty else r["key"]
        rows.append([name] + cells(val_rows.get(r["key"])) + cells(r))
    if all_.get("overall"):
        rows.append(["**all**"] + cells(val.get("overall")) + cells(all_["overall"]))
    return Block("table", headers=headers, rows=rows)


def _action_table(harmful: dict[str, Any], names: dict[str, str]) -> Block:
    rows = []
    for bench in harmful.get("all", {}):
        for split in ("val", "all"):
            section = harmful.get(split, {}).get(bench)
            if not section:
                continue
            o = section["overall"]
            row = [names.get(bench, bench), "held-out" if split == "val" else "all", str(o["n"]), pct(o["frac_pass"]),
                   pct(o["frac_detoxified"]), pct(o["frac_refused"]), str(o["missed"]), str(o["replaced_unsafe"])]
            row.append(pct(o.get("judge_agreement")))
            rows.append(row)
    return Block("table", headers=["Benchmark", "split", "n", "pass", "detoxified", "refused", "unsafe passed",
                                   "replaced, judged unsafe", "judge vs labels"], rows=rows)


def _benign_table(benign: dict[str, Any]) -> Block:
    val = {r["key"]: r for r in benign.get("val", {}).get("rows", [])}
    rows = []
    for r in benign.get("all", {}).get("rows", []):
        v = val.get(r["key"])
        rows.append([r["key"], str(v["n"]) if v else "0", pct(v["pass_through"]) if v else "–",
                     str(r["n"]), pct(r["pass_through"]), str(r["flagged"])])
    o, vo = benign.get("all", {}).get("overall"), benign.get("val", {}).get("overall")
    if o:
        rows.append(["**all benign**", str(vo["n"]) if vo else "0", pct(vo["pass_through"]) if vo else "–",
                     str(o["n"]), pct(o["pass_through"]), str(o["flagged"])])
    return Block("table", headers=["Source", "n held-out", "pass-through", "n all", "pass-through", "flagged (all)"], rows=rows)


def _detector_table(detector: dict[str, Any], recorded: dict[str, Any] | None) -> Block:
    headers = ["Split", "n", "harmful", "AUROC", "AUPRC", "F1", "accuracy", "precision", "recall", "FPR",
               "FPR@95% recall", "ECE", "Brier"]
    rows = []
    for split in ("val", "all"):
        m = detector.get(split, {}).get("overall")
        if m:
            rows.append(["held-out" if split == "val" else "all", str(m["n"]), str(m["harmful"]), num(m["auroc"]),
                         num(m["auprc"]), num(m["f1"]), pct(m["accuracy"]), pct(m["precision"]), pct(m["recall"]),
                         pct(m["fpr"]), pct(m["fpr_at_95_recall"]), num(m["ece"]), num(m["brier"])])
    if recorded:
        rows.append(["recorded at training (its val split, all sources)", str(recorded.get("n", "–")), "–",
                     num(recorded.get("auroc")), num(recorded.get("auprc")), num(recorded.get("f1")), "–", "–",
                     pct(recorded.get("recall")), pct(recorded.get("fpr")), pct(recorded.get("fpr_at_95_recall")), "–", "–"])
    return Block("table", headers=headers, rows=rows)


def _source_table(detector: dict[str, Any]) -> Block:
    val = detector.get("val", {}).get("by_source", {})
    rows = []
    for source, m in detector.get("all", {}).get("by_source", {}).items():
        v = val.get(source)
        rows.append([source, str(v["n"]) if v else "0", str(v["harmful"]) if v else "–", num(v["auroc"]) if v else "–",
                     pct(v["recall"]) if v else "–", pct(v["fpr"]) if v else "–",
                     str(m["n"]), str(m["harmful"]), num(m["auroc"]), pct(m["recall"]), pct(m["fpr"])])
    return Block("table", headers=["Source", "n held-out", "harmful", "AUROC", "recall", "FPR",
                                   "n all", "harmful", "AUROC", "recall", "FPR"], rows=rows)


BENCH_NAMES = {"mm-safetybench": "MM-SafetyBench", "figstep": "FigStep", "jailbreakbench": "JailbreakBench"}


def _summary(results: dict[str, Any], report_dir: Path, prefix: str) -> list[Block]:
    """The first screen: one sentence and one figure (attack success before/after per benchmark, benign
    pass-through, ROC per held-out source), all on the held-out answers the detector never saw."""
    harmful = results["stored"]["harmful"].get("val", {})
    benign = results["stored"]["benign"].get("val", {})
    detector = results["detector"].get("val", {})
    asr = [(BENCH_NAMES.get(b, b), s["overall"]["asr_before"] or 0.0, s["overall"]["asr_after"] or 0.0)
           for b, s in harmful.items()]
    passing = [(r["key"], r["pass_through"], r["n"]) for r in benign.get("rows", []) if r["n"]]
    if benign.get("overall"):
        passing.append(("all benign", benign["overall"]["pass_through"], benign["overall"]["n"]))
    curves = [(source, m["roc"], m["auroc"]) for source, m in detector.get("by_source", {}).items() if m.get("roc", {}).get("fpr")]
    if detector.get("overall"):
        curves.append(("all held-out", detector["overall"]["roc"], detector["overall"]["auroc"]))
    text = "**Summary** (held-out answers: sources the detector was trained on, but groups it never saw). Attack success " + \
        ", ".join(f"{name} {pct(before)} → {pct(after)}" for name, before, after in asr)
    if benign.get("overall"):
        text += f"; benign answers passed unchanged: {pct(benign['overall']['pass_through'])} of {benign['overall']['n']}"
    if detector.get("overall"):
        text += f"; detector AUROC {num(detector['overall']['auroc'])}"
    png = plot_summary(asr, passing, curves, report_dir / f"{prefix}_summary.png")
    return [Block("p", text + ". Tables and per-scenario plots follow."), Block("img", "Summary", path=png)]


def build_stored_report(results: dict[str, Any], report_dir: Path, prefix: str = "eval") -> list[Block]:
    """Blocks for the stored-response + detector evaluation; writes the PNG plots into `report_dir`."""
    meta = results["meta"]
    stored = results["stored"]
    smeta = stored["meta"]
    det = results["detector_info"]
    blocks = _summary(results, report_dir, prefix)
    blocks.append(Block("p", "Regenerate with (from the repository root; ../shared/data must exist):"))
    blocks.append(Block("code", meta["command"]))
    blocks.append(Block("p", (
        f"Run on {meta['date']} in {meta['seconds'] / 60:.1f} min ({meta['machine']}). "
        f"**Detector (guard):** `{det['name']}` — {det['backbone']} backbone, input `{det['input_format']}`, "
        f"threshold {det['threshold']:.3f}. **Detoxifier:** {smeta['detoxifier']}, max {smeta['max_rounds']} round(s). "
        f"**Judge for replaced answers:** `{smeta['judge']}`"
        + (" (the same model as the guard: it cannot see the guard's misses)" if smeta.get("judge_same_as_guard") else
           " (independent of the detector)") + ". "
        "ASR before is the stored label of each answer (model judges; see each data set's MANIFEST)."
    )))
    blocks.append(Block("p", (
        f"The detector was trained on a group split of these same sources (`group_split`, validation fraction "
        f"{smeta['val_fraction']}, seed {smeta['split_seed']}). **Held-out** columns use only the validation groups "
        f"it never saw ({smeta['held_out_answers']} of {smeta['answers']} answers); **all** columns include its "
        f"training data and are optimistic. ASR after = (unsafe answers that pass undetected + replaced answers "
        f"the judge finds unsafe) / all answers. Recall = flagged unsafe answers / unsafe answers; FPR = flagged safe "
        f"answers / safe answers (a flagged safe answer is replaced, which costs helpfulness, not safety)."
    )))
    if smeta.get("max_per_source"):
        totals = smeta.get("totals", {})
        caps = ", ".join(f"{k}: {min(v, totals.get(k, v))} of {totals.get(k, '?')}" for k, v in smeta["max_per_source"].items())
        blocks.append(Block("p", (
            f"**Subsampled** to fit the time budget on this CPU: the *all* columns use a uniform random sample "
            f"(seed {meta.get('seed', 0)}) of some sources ({caps} answers); the *held-out* columns always use every "
            f"held-out answer. Every other source is complete ({smeta['answers']} answers scored in total).")))
    harmful = stored["harmful"]
    for bench, rows_key, label in (("mm-safetybench", "rows", "Scenario"), ("figstep", "rows", "Topic"),
                                   ("jailbreakbench", "rows", "Attack")):
        if bench not in harmful.get("all", {}):
            continue
        blocks.append(Block("h3", f"{BENCH_NAMES[bench]} — {smeta['descriptions'].get(bench, '')}"))
        blocks.append(_harm_table(harmful, bench, rows_key, label, pretty=bench != "jailbreakbench"))
        if bench == "mm-safetybench":
            blocks.append(Block("details", "MM-SafetyBench by prompt variant (question/changed_question: text only; "
                                           "rephrased_question: SD_TYPO image; rephrased_question_sd: TYPO image)",
                                children=[_harm_table(harmful, bench, "by_variant", "Variant", pretty=False)]))
        if bench in ("mm-safetybench", "figstep"):
            panels = [(f"held-out groups (n={harmful['val'][bench]['overall']['n']})", harmful["val"][bench]["rows"]),
                      (f"all data (n={harmful['all'][bench]['overall']['n']})", harmful["all"][bench]["rows"])]
            png = plot_asr(panels, report_dir / f"{prefix}_asr_{bench.replace('-', '')}.png",
                           f"{BENCH_NAMES[bench]}: ASR before / after the protector")
            blocks.append(Block("img", f"{BENCH_NAMES[bench]} ASR per scenario", path=png))
    blocks.append(Block("h3", "Action mix"))
    blocks.append(_action_table(harmful, BENCH_NAMES))
    blocks.append(Block("p", "\"judge vs labels\": how often the judge, run on the stored answers, agrees with the "
                             "stored labels — a check of the judge itself."))
    blocks.append(Block("h3", "Benign pass-through (answers that must pass unchanged)"))
    blocks.append(_benign_table(stored["benign"]))
    detector = results["detector"]
    blocks.append(Block("h3", "Detector metrics"))
    blocks.append(Block("p", f"All scored answers ({', '.join(detector.get('sources', []))}), threshold "
                             f"{det['threshold']:.3f}. ECE: expected calibration error over 10 equal-width bins."))
    blocks.append(_detector_table(detector, det.get("recorded_validation")))
    blocks.append(Block("details", "Per source", children=[_source_table(detector)]))
    curves = [(f"{'held-out' if s == 'val' else 'all'}: overall", detector[s]["overall"]["roc"], detector[s]["overall"]["auroc"])
              for s in ("val", "all") if s in detector]
    for source, m in detector.get("val", {}).get("by_source", {}).items():
        if m.get("roc", {}).get("fpr"):
            curves.append((f"held-out: {source}", m["roc"], m["auroc"]))
    roc_png = plot_roc(curves, report_dir / f"{prefix}_roc.png")
    rel_png = plot_reliability([(("held-out" if s == "val" else "all"), detector[s]["overall"]["reliability"])
                                for s in ("val", "all") if s in detector], report_dir / f"{prefix}_reliability.png")
    blocks.append(Block("img", "Detector ROC", path=roc_png))
    blocks.append(Block("img", "Detector reliability", path=rel_png))
    lm = results.get("lm_detox")
    if lm and lm.get("n"):
        blocks.append(Block("h3", f"Detoxifier sample: {lm['detoxifier']}"))
        detox_s = sorted(lm["detox_ms"])
        blocks.append(Block("p", (
            f"{lm['n']} flagged unsafe answers ({lm['held_out']} from held-out groups; "
            + ", ".join(f"{BENCH_NAMES.get(k, k)} {v}" for k, v in lm["benches"].items())
            + f") were protected with this detoxifier (up to {lm['max_rounds']} rounds) instead of the fixed "
            f"refusal. Result: {pct(lm['frac_detoxified'])} detoxified (re-checked below threshold), the rest refused; "
            f"the `{lm['judge']}` judge finds {lm['detoxified_judged_unsafe']} of the detoxified rewrites unsafe "
            f"({pct(lm['frac_detoxified_judged_unsafe'])}); mean {lm['mean_rounds']:.2f} rounds; detox time per answer "
            f"median {detox_s[len(detox_s) // 2] / 1000:.1f} s on this CPU."
            + (" The keyword judge counts every answer without a refusal or disclaimer phrase as unsafe, so for "
               "rewrites it is an upper bound; use an LLM judge (`--judge <url>`) for a finer verdict."
               if lm["judge"] == "keyword" else "")
        )))
    lat = results.get("latency")
    if lat and lat.get("n"):
        totals = sorted(lat["total_ms"])
        blocks.append(Block("h3", "Latency"))
        blocks.append(Block("p", (
            f"Guard latency per answer, one answer at a time (as a server sees it), {lat['n']} random stored answers "
            f"with the fixed-refusal detoxifier: median {totals[len(totals) // 2]:.0f} ms, 95th percentile "
            f"{totals[min(len(totals) - 1, int(0.95 * len(totals)))]:.0f} ms. Batched throughput in the full run: "
            f"{1000 * smeta['seconds'] / max(1, smeta['answers']):.1f} ms per answer."
        )))
        series = [("guard per answer (detector + refusal)", lat["total_ms"])]
        if lm and lm.get("n"):
            series.append(("LM detoxifier per flagged answer", lm["detox_ms"]))
        png = plot_latency(series, report_dir / f"{prefix}_latency.png")
        blocks.append(Block("img", "Latency histograms", path=png))
    return blocks


def write_report(blocks: Sequence[Block], title: str, md_path: Path | None, html_path: Path | None,
                 md_link_base: Path | None = None, md_heading: str = "##", html_link: str | None = None) -> None:
    """Write the Markdown fragment (title as `md_heading`) and/or the self-contained HTML page."""
    if md_path is not None:
        md_path.parent.mkdir(parents=True, exist_ok=True)
        intro = [Block("p", f"Full report with plots: [{Path(html_link).name}]({html_link}).")] if html_link else []
        text = f"{md_heading} {title}\n\n" + to_markdown(intro + list(blocks), md_link_base or md_path.parent)
        md_path.write_text(text, encoding="utf-8")
    if html_path is not None:
        html_path.parent.mkdir(parents=True, exist_ok=True)
        html_path.write_text(to_html(blocks, title), encoding="utf-8")


# ---------------------------------------------------------------- benchmark-run report


def build_run_report(summary: dict[str, Any], report_dir: Path, prefix: str = "run", command: str | None = None) -> list[Block]:
    """Blocks for `eval run` results: per benchmark the judge's ASR before/after per scenario, or the
    pass-through rate for benign benchmarks, action mix and latency."""
    blocks: list[Block] = []
    if command:
        blocks += [Block("p", "Command:"), Block("code", command)]
    for bench, section in summary.items():
        blocks.append(Block("h3", bench))
        o = section["overall"]
        if section["benign"]:
            blocks.append(Block("p", f"Benign prompts: pass-through {pct(o['frac_pass'])} of {o['n']} answers."))
        headers = ["Scenario", "n", "ASR before", "ASR after", "flagged", "pass", "detoxified", "refused",
                   "MLLM ms", "guard ms"]
        rows = [[scenario_label(r["key"]), str(r["n"]), pct(r.get("asr_before")), pct(r.get("asr_after")),
                 pct(r["flagged"]), pct(r["frac_pass"]), pct(r["frac_detoxified"]), pct(r["frac_refused"]),
                 f"{r['mean_mllm_ms']:.0f}", f"{r['mean_guard_ms']:.0f}"] for r in section["rows"] + [{"key": "all", **o}]]
        blocks.append(Block("table", headers=headers, rows=rows))
        if len(section["by_variant"]) > 1:
            rows = [[r["key"], str(r["n"]), pct(r.get("asr_before")), pct(r.get("asr_after")), pct(r["flagged"]),
                     pct(r["frac_pass"]), pct(r["frac_detoxified"]), pct(r["frac_refused"]),
                     f"{r['mean_mllm_ms']:.0f}", f"{r['mean_guard_ms']:.0f}"] for r in section["by_variant"]]
            blocks.append(Block("table", headers=["Variant"] + headers[1:], rows=rows))
        if section.get("judge"):
            blocks.append(Block("p", f"ASR by the `{section['judge']}` judge on the original answer (before) and on "
                                     "what the user sees (after)."))
        if not section["benign"] and all(r.get("asr_before") is not None for r in section["rows"]):
            png = plot_asr([(bench, section["rows"])], report_dir / f"{prefix}_asr_{bench.replace('-', '')}.png",
                           f"{bench}: ASR before / after the protector")
            blocks.append(Block("img", f"{bench} ASR", path=png))
    return blocks


def save_json(data: Any, path: Path) -> None:
    """JSON with NaN written as null (valid JSON for other tools)."""

    def clean(x: Any) -> Any:
        if isinstance(x, float) and math.isnan(x):
            return None
        if isinstance(x, dict):
            return {k: clean(v) for k, v in x.items()}
        if isinstance(x, (list, tuple)):
            return [clean(v) for v in x]
        return x

    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(clean(data), indent=1) + "\n", encoding="utf-8")
