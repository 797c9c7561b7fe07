"""`mllm-protector eval ...`: benchmark runs against an MLLM, stored-response and detector evaluation, reports."""

from __future__ import annotations

import json
import logging
import shlex
import sys
from pathlib import Path
from typing import Any, Optional

import typer
from rich.console import Console

from ..errors import ProtectorError

app = typer.Typer(help="Measure attack success before/after the protector, benign pass-through and detector quality.",
                  no_args_is_help=True)
err = Console(stderr=True)
logger = logging.getLogger(__name__)

DATA_HELP = "Data folder (default ../shared/data or MLLM_PROTECTOR_DATA)."
DETOX_HELP = "none (fixed refusal, action 'refused'), refusal (RefusalDetoxifier), lm (local SmolLM2 + adapter; llamacpp or transformers force its runtime), or an OpenAI-compatible base URL."


def _fail(message: str) -> None:
    err.print(f"[bold red]error:[/] {message}", highlight=False)
    raise typer.Exit(2)


def _command() -> str:
    return "mllm-protector " + shlex.join(sys.argv[1:])


def make_detoxifier(spec: str, model: str = "smollm2-135m-instruct") -> Any:
    """Detoxifier from a CLI spec, as the CLI and the proxy build it (None for `none`: the fixed refusal)."""
    from ..protector import build_detoxifier

    return build_detoxifier(spec, model)


def _caps(values: list[str]) -> dict[str, int]:
    caps = {}
    for value in values:
        name, _, count = value.partition("=")
        if not count.isdigit():
            raise ProtectorError(f"--max-per-source expects SOURCE=N, got {value!r}")
        caps[name] = int(count)
    return caps


@app.command("run")
def run(
    bench: str = typer.Option(..., help="mm-safetybench, figstep, jbb-benign or llava-bench."),
    mllm: str = typer.Option(..., help="OpenAI-compatible base URL (http://host:port/v1), hf:<model>, or stored:<answers.jsonl>."),
    mllm_model: str = typer.Option("default", help="Model name sent to an OpenAI-compatible endpoint."),
    api_key: Optional[str] = typer.Option(None, envvar="MLLM_API_KEY", help="Bearer key for the MLLM endpoint."),
    max_tokens: int = typer.Option(512, min=1, help="Answer length limit for the MLLM."),
    output: Path = typer.Option(..., "--output", "-o", help="Result JSONL (one row per item); resumed if it exists."),
    data_dir: Optional[Path] = typer.Option(None, "--data-dir", help=DATA_HELP),
    variants: str = typer.Option("TEXT,TYPO", help="MM-SafetyBench variants: TEXT, TYPO, SD, SD_TYPO (SD needs --image-dir)."),
    scenarios: Optional[str] = typer.Option(None, help="Comma-separated scenario numbers/names (default all)."),
    tiny: bool = typer.Option(False, "--tiny", help="MM-SafetyBench tiny list (168 ids) / FigStep SafeBench-Tiny."),
    limit: Optional[int] = typer.Option(None, min=1, help="Only the first N items."),
    image_dir: Optional[Path] = typer.Option(None, help="MM-SafetyBench SD images (<scenario>/SD/<id>.jpg) or COCO images for llava-bench."),
    detector: str = typer.Option("default", help="Guard detector: saved folder or preset."),
    detoxifier: str = typer.Option("lm", help=DETOX_HELP),
    detox_model: str = typer.Option("smollm2-135m-instruct", help="Model for --detoxifier lm, or model name for a URL."),
    max_rounds: int = typer.Option(2, min=0, help="Detoxify → re-detect rounds before the fixed refusal."),
    judge: str = typer.Option("keyword", help="keyword, classifier[:<detector>], or an OpenAI-compatible base URL (LLM judge)."),
    judge_model: str = typer.Option("default", help="Model name for an LLM judge endpoint."),
    batch_size: int = typer.Option(4, min=1),
    resume: bool = typer.Option(True, help="Skip items already in --output."),
    report_dir: Optional[Path] = typer.Option(None, help="Also write <output stem>.md/.html and plots here."),
) -> None:
    """Ask an MLLM every benchmark prompt, protect and judge each answer; one JSONL row per item."""
    from ..config import ProtectorSettings
    from ..protector import build_protector
    from .benchmarks import load_bench
    from .judges import make_judge
    from .runner import make_answerer, run_benchmark, summarize_run

    try:
        items = load_bench(bench, data_dir, [v.strip().upper() for v in variants.split(",") if v.strip()],
                           scenarios.split(",") if scenarios else None, tiny, image_dir)
        items = items[:limit] if limit else items
        guard = build_protector(detector, detoxifier, detox_model, ProtectorSettings(max_rounds=max_rounds))
        the_judge = make_judge(judge, detector, judge_model)
        answer = make_answerer(mllm, mllm_model, max_tokens, api_key)
        err.print(f"{bench}: {len(items)} items → {output}")
        rows = run_benchmark(items, answer, guard, output, the_judge, resume, batch_size,
                             on_progress=lambda n, total: logger.info("%d more items done (of %d)", n, total))
    except ProtectorError as exc:
        _fail(str(exc))
    wanted = {i.id for i in items}
    summary = summarize_run([r for r in rows if r["id"] in wanted])
    _print_run(summary)
    if report_dir is not None:
        from .report import build_run_report, write_report

        blocks = build_run_report(summary, report_dir, output.stem, _command())
        write_report(blocks, f"Benchmark run: {bench} with {mllm}", report_dir / f"{output.stem}.md",
                     report_dir / f"{output.stem}.html", report_dir, "#")
        err.print(f"report: {report_dir / (output.stem + '.html')}")


def _print_run(summary: dict[str, Any]) -> None:
    from rich.table import Table

    from .report import pct

    for bench, section in summary.items():
        table = Table(title=bench)
        for header in ("scenario", "n", "ASR before", "ASR after", "pass", "detoxified", "refused"):
            table.add_column(header)
        for r in section["rows"] + [{"key": "all", **section["overall"]}]:
            table.add_row(r["key"], str(r["n"]), pct(r.get("asr_before")), pct(r.get("asr_after")), pct(r["frac_pass"]),
                          pct(r["frac_detoxified"]), pct(r["frac_refused"]))
        Console().print(table)


@app.command("stored")
def stored(
    data_dir: Optional[Path] = typer.Option(None, "--data-dir", help=DATA_HELP),
    detector: str = typer.Option("default", help="Guard detector: saved folder or preset."),
    detoxifier: str = typer.Option("refusal", help=DETOX_HELP + " (lm is ~10 s per flagged answer on a CPU)."),
    detox_model: str = typer.Option("smollm2-135m-instruct"),
    judge: str = typer.Option("keyword", help="Judge for replaced answers: keyword, classifier[:<detector>] or an LLM judge URL."),
    judge_model: str = typer.Option("default"),
    max_per_source: list[str] = typer.Option([], help="Cap a source, e.g. vlguard=1500 (deterministic subsample)."),
    lm_sample: int = typer.Option(0, min=0, help="Also run the local LM detoxifier on this many flagged unsafe answers."),
    lm_rounds: int = typer.Option(2, min=1, help="Rounds for the LM detoxifier sample."),
    latency_sample_size: int = typer.Option(100, "--latency-sample", min=0, help="Answers timed one at a time."),
    seed: int = 0,
    md: Optional[Path] = typer.Option(None, help="Markdown fragment to write (e.g. docs/results/eval_report.md)."),
    md_link_base: Optional[Path] = typer.Option(None, help="Folder the Markdown is read from (for image links; default: its folder)."),
    report_dir: Path = typer.Option(Path("eval-report"), help="Folder for the HTML report, JSON results and PNG plots."),
) -> None:
    """Protect the stored, labelled answers in the data folder and write the Markdown + HTML report."""
    from ..detector import HarmDetector
    from .judges import make_judge
    from .suite import render_suite, run_suite

    try:
        model = HarmDetector.from_pretrained(detector)
        results = run_suite(
            model, detector, data_dir, make_detoxifier(detoxifier, detox_model), make_judge(judge, detector, judge_model),
            _caps(max_per_source), lm_detoxifier=make_detoxifier("lm", detox_model) if lm_sample else None,
            lm_sample=lm_sample, lm_rounds=lm_rounds, latency_n=latency_sample_size, seed=seed, command=_command(),
        )
        render_suite(results, md, report_dir, md_link_base=md_link_base)
    except ProtectorError as exc:
        _fail(str(exc))
    err.print(f"report: {report_dir / 'eval_report.html'}" + (f" and {md}" if md else ""))


def _score_on_ray(detector: str, data: Path, address: str, workers: int | None,
                  scores_dir: Path | None) -> tuple[list[int], list[float], list[str]]:
    """(labels, scores, sources) of labelled answers scored by an actor pool on Ray Data (`scale.py`)."""
    import tempfile

    try:
        from ..scale import RayOptions, score_labelled
    except ImportError as exc:
        raise ProtectorError(f"--ray needs Ray Data ({exc}): pip install 'mllm-protector[scale]'") from None
    from ..batch import GuardSpec

    options, spec = RayOptions(address, workers), GuardSpec(detector)
    if scores_dir is not None:
        return score_labelled(spec, str(data), scores_dir, options, data.stem)
    with tempfile.TemporaryDirectory(prefix="mllm-protector-scores-") as tmp:
        return score_labelled(spec, str(data), Path(tmp) / "scores", options, data.stem)


@app.command("detector")
def detector_cmd(
    data: list[Path] = typer.Option([], "--data", help="Labelled JSONL (response, label[, query, source]); repeatable."),
    sources: Optional[str] = typer.Option(None, help="Comma-separated data-folder sources instead (e.g. mmsb_gemini,vicuna80)."),
    data_dir: Optional[Path] = typer.Option(None, "--data-dir", help=DATA_HELP),
    split: str = typer.Option("all", help="all, or val: only the detector's held-out validation groups."),
    detector: str = typer.Option("default", help="Saved detector folder or preset."),
    output: Optional[Path] = typer.Option(None, "--output", "-o", help="Write the metrics as JSON here."),
    report_dir: Optional[Path] = typer.Option(None, help="Also write ROC and reliability PNGs here."),
    ray: Optional[str] = typer.Option(None, "--ray", metavar="ADDRESS", help="Score on Ray Data (`local`, `auto` or "
                                      "`ray://HOST:10001`, as `score --ray`): one --data JSONL/Parquet file or folder."),
    workers: Optional[int] = typer.Option(None, min=1, help="With --ray: actors, each holding its own detector."),
    scores_dir: Optional[Path] = typer.Option(None, "--scores-dir", help="With --ray: folder for the scored shards "
                                              "(readable from this machine; default: a temporary folder)."),
) -> None:
    """Detector metrics on labelled answers: AUROC, AUPRC, F1, threshold metrics, calibration, per source."""
    from ..data import load_corpus, read_jsonl_examples
    from ..detector import HarmDetector
    from .detector_eval import evaluate_detector, evaluate_scores
    from .report import pct, plot_reliability, plot_roc, save_json
    from .stored import detector_split_args, validation_groups

    try:
        if ray is not None:
            if len(data) != 1 or sources or split != "all":
                raise ProtectorError("--ray scores one --data file or folder (JSONL or Parquet); --sources and --split val run without it")
            model = HarmDetector.from_pretrained(detector)  # its threshold, and a clear error for a wrong name before Ray starts
            report = evaluate_scores(*_score_on_ray(detector, data[0], ray, workers, scores_dir), model.threshold)
        else:
            if not data and not sources:
                raise ProtectorError("give --data <labelled.jsonl> (repeatable) or --sources <names>")
            examples = [e for path in data for e in read_jsonl_examples(path, source=path.stem)]
            if sources:
                examples += load_corpus(data_dir, sources.split(",")).examples
            model = HarmDetector.from_pretrained(detector)
            if split == "val":
                groups = validation_groups(examples, *detector_split_args(model))
                examples = [e for e in examples if e.group in groups]
            elif split != "all":
                raise ProtectorError(f"--split must be all or val, got {split!r}")
            if not examples:
                raise ProtectorError("no labelled examples to evaluate")
            _, report = evaluate_detector(model, examples)
    except ProtectorError as exc:
        _fail(str(exc))
    o = report["overall"]
    typer.echo(f"n={o['n']} harmful={o['harmful']} AUROC={o['auroc']:.4f} AUPRC={o['auprc']:.4f} F1={o['f1']:.4f} "
               f"accuracy={pct(o['accuracy'])} precision={pct(o['precision'])} recall={pct(o['recall'])} "
               f"FPR={pct(o['fpr'])} FPR@95%recall={pct(o['fpr_at_95_recall'])} ECE={o['ece']:.4f} (threshold {model.threshold:.3f})")
    for source, m in report["by_source"].items():
        typer.echo(f"  {source:<20} n={m['n']:<6} harmful={m['harmful']:<5} AUROC={m['auroc']:.4f} recall={pct(m['recall'])} FPR={pct(m['fpr'])}")
    if output is not None:
        save_json(report, output)
    if report_dir is not None:
        plot_roc([("overall", o["roc"], o["auroc"])] + [(s, m["roc"], m["auroc"]) for s, m in report["by_source"].items()
                                                      if m.get("roc", {}).get("fpr")], report_dir / "detector_roc.png")
        plot_reliability([("overall", o["reliability"])], report_dir / "detector_reliability.png")


@app.command("report")
def report(
    results: Path = typer.Option(..., help="eval_report.json written by `eval stored` / make eval."),
    md: Optional[Path] = typer.Option(None, help="Markdown fragment to write."),
    md_link_base: Optional[Path] = typer.Option(None, help="Folder the Markdown is read from (for image links)."),
    report_dir: Optional[Path] = typer.Option(None, help="Folder for HTML + PNGs (default: the results file's folder)."),
) -> None:
    """Re-render the Markdown/HTML report and plots from saved results (no model needed)."""
    from .suite import render_suite

    if not results.is_file():
        _fail(f"results file {results} does not exist")
    data = json.loads(results.read_text(encoding="utf-8"))
    render_suite(data, md, report_dir or results.parent, name=results.stem, md_link_base=md_link_base)
    err.print(f"report: {(report_dir or results.parent) / (results.stem + '.html')}")
