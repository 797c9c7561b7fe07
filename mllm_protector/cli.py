"""The `mllm-protector` command line: protect, score, train, info (eval and serve plug in here too)."""

from __future__ import annotations

import logging
import platform
from collections.abc import Callable, Iterator
from typing import Any, Optional

import typer
from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    SpinnerColumn,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)

from .batch import JOBS, GuardSpec
from .errors import ProtectorError
from .eval.cli import app as eval_app
from .jsonl import Line, iter_lines, open_input, open_output
from .server.cli import playground as playground_command
from .server.cli import serve as serve_command
from .train.cli import app as train_app

app = typer.Typer(help="Safety layer for multimodal LLMs: detect harmful answers and detoxify them.", no_args_is_help=True)
app.add_typer(train_app, name="train")
app.command(name="serve")(serve_command)  # guard proxy; FastAPI loads only when it runs
app.command(name="playground")(playground_command)  # the guard's page and /v1/guard, no upstream
app.add_typer(eval_app, name="eval")
err = Console(stderr=True)

INPUT_HELP = "Input JSONL (`-` for stdin)."
OUTPUT_HELP = "Output JSONL (`-` for stdout); an existing file is resumed unless --no-resume."
RAY = typer.Option(None, "--ray", metavar="ADDRESS", help="Run on Ray Data: `local` (a Ray runtime on this machine), `auto` "
                   "(the cluster this machine joined with `ray start`) or `ray://HOST:10001`. --input is then a file or folder of "
                   "JSONL or Parquet (`.parquet`), --output a new folder of shards (Parquet if it ends in `.parquet`, else JSONL); "
                   "--no-resume replaces an existing one.")
WORKERS = typer.Option(None, min=1, help="With --ray: actors, each holding its own models (default: as many as the cluster's CPUs, or GPUs, hold).")
CPUS = typer.Option(1.0, min=0.0, help="With --ray: CPUs per actor (also its torch threads).")
GPUS = typer.Option(0.0, min=0.0, help="With --ray: GPUs per actor (fractions share a GPU).")


@app.callback()
def main(verbose: bool = typer.Option(False, "--verbose", "-v", help="Log progress details.")) -> None:
    """Configure logging once for every command."""
    logging.basicConfig(level=logging.INFO if verbose else logging.WARNING, format="%(levelname)s %(name)s: %(message)s")


def fail(message: str) -> None:
    """One-line error on stderr and exit code 2 (never a traceback for expected failures)."""
    err.print(f"[bold red]error:[/] {message}", highlight=False, soft_wrap=True)
    raise typer.Exit(2)


def _chunks(lines: Iterator[Line], size: int, check: Callable[[Line], None]) -> Iterator[tuple[list[Line], ProtectorError | None]]:
    """Group valid lines into chunks; a bad line ends the stream after the lines before it are yielded."""
    chunk: list[Line] = []
    try:
        for line in lines:
            check(line)
            chunk.append(line)
            if len(chunk) == size:
                yield chunk, None
                chunk = []
    except ProtectorError as exc:
        yield chunk, exc
        return
    yield chunk, None


def _count_lines(path: str, done: int) -> int | None:
    """Non-blank lines still to process in a file (None for stdin: the bar then shows a count only)."""
    if path == "-":
        return None
    with open(path, "rb") as handle:
        return max(0, sum(1 for line in handle if line.strip()) - done)


def _run_jsonl(input_path: str, output_path: str, resume: bool, required: tuple[str, ...], batch_size: int,
               check: Callable[[Line], None], process: Callable[[list[Line]], list[dict[str, Any]]], label: str) -> None:
    """Shared loop of `protect` and `score`: resume, validate, process in batches, flush every line."""
    try:
        with open_input(input_path) as stream, open_output(output_path, resume) as (write, done):
            if done:
                err.print(f"resuming: {done} records already in {output_path}")
            with Progress(SpinnerColumn(), TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                          TimeElapsedColumn(), TimeRemainingColumn(), console=err, transient=True,
                          disable=not err.is_terminal) as progress:
                # counting the lines is a second pass over the input: only worth it when a bar is shown
                task = progress.add_task(label, total=_count_lines(input_path, done) if err.is_terminal else None)
                for chunk, error in _chunks(iter_lines(stream, required, input_path, skip=done), batch_size, check):
                    if chunk:
                        for out in process(chunk):
                            write(out)
                        progress.advance(task, len(chunk))
                    if error is not None:
                        raise error
    except ProtectorError as exc:
        fail(str(exc))


@app.command()
def protect(
    input: str = typer.Option(..., "--input", "-i", help=INPUT_HELP),
    output: str = typer.Option(..., "--output", "-o", help=OUTPUT_HELP),
    detector: str = typer.Option("default", help="Saved detector folder or the shipped preset `default`."),
    detoxifier: str = typer.Option("lm", help="lm (local SmolLM2 + shipped adapter on llama.cpp, else transformers; force with llamacpp or transformers), refusal, or an OpenAI-compatible base URL."),
    detox_model: str = typer.Option("smollm2-135m-instruct", help="Model for --detoxifier lm, or model name for a URL."),
    max_rounds: int = typer.Option(2, min=0, help="Detoxify → re-detect rounds before the fixed refusal."),
    threshold: Optional[float] = typer.Option(None, help="Override the detector's calibrated threshold."),
    allow_category: list[str] = typer.Option([], "--allow-category", help="Harm category to let through (repeatable), e.g. professional_advice."),
    input_guard: str = typer.Option("off", "--input-guard", help="Check each request (`query` + `image`) first: off; flag (the "
                                    "request with the image's text is the query for the guard and the detoxifier); block (a "
                                    "harmful request's answer is never shown: action blocked_input)."),
    batch_size: int = typer.Option(16, min=1),
    resume: bool = typer.Option(True, help="Continue an existing output file where it stopped."),
    ray: Optional[str] = RAY,
    workers: Optional[int] = WORKERS,
    cpus_per_worker: float = CPUS,
    gpus_per_worker: float = GPUS,
) -> None:
    """Check each line's `response` (with `query`, optional `image`) and write back the Verdict fields."""
    from .input_guard import POLICIES

    _check_categories(allow_category)
    if input_guard not in POLICIES:
        fail(f"unknown --input-guard {input_guard!r}: choose from {', '.join(POLICIES)}")
    if input_guard != "off" and ray is not None:
        fail("--input-guard runs in this process only: leave out --ray")
    spec = _guard_spec(detector, detoxifier, detox_model, max_rounds, threshold, tuple(allow_category), input_guard)
    if ray is not None:
        _run_on_ray("protect", spec, input, output, resume, ray, workers, cpus_per_worker, gpus_per_worker, batch_size)
        return
    _run_job("protect", spec, input, output, resume, batch_size, "protecting")


@app.command()
def score(
    input: str = typer.Option(..., "--input", "-i", help=INPUT_HELP),
    output: str = typer.Option(..., "--output", "-o", help=OUTPUT_HELP),
    detector: str = typer.Option("default", help="Saved detector folder or the shipped preset `default`."),
    batch_size: int = typer.Option(32, min=1),
    resume: bool = typer.Option(True, help="Continue an existing output file where it stopped."),
    ray: Optional[str] = RAY,
    workers: Optional[int] = WORKERS,
    cpus_per_worker: float = CPUS,
    gpus_per_worker: float = GPUS,
) -> None:
    """Write each line back with `score` = P(harmful), `harmful` (the Protector's decision at the detector's
    saved threshold) and the harm `category` of flagged answers; no detoxification."""
    spec = _guard_spec(detector, "none", "", max_rounds=0, threshold=None)
    if ray is not None:
        _run_on_ray("score", spec, input, output, resume, ray, workers, cpus_per_worker, gpus_per_worker, batch_size)
        return
    _run_job("score", spec, input, output, resume, batch_size, "scoring")


def _guard_spec(detector: str, detoxifier: str, detox_model: str, max_rounds: int, threshold: Optional[float],
                allow_categories: tuple[str, ...] = (), input_policy: str = "off") -> GuardSpec:
    """What the Protector is built from, given the CLI options (models load later, in this process or in Ray actors)."""
    from .config import ProtectorSettings

    settings = ProtectorSettings(max_rounds=max_rounds, threshold=threshold, allow_categories=allow_categories,
                                 input_policy=input_policy)
    return GuardSpec(detector, detoxifier, detox_model, settings)


def _run_job(name: str, spec: GuardSpec, input_path: str, output_path: str, resume: bool, batch_size: int, label: str) -> None:
    """`score` or `protect` in this process: build the Protector, then the shared JSONL loop."""
    job = JOBS[name]
    try:
        guard = spec.build()
    except ProtectorError as exc:
        fail(str(exc))
    _run_jsonl(input_path, output_path, resume, job.required, batch_size, lambda line: job.check(line.record, f"line {line.number}"),
               lambda chunk: job.process(guard, [line.record for line in chunk]), label)


def _run_on_ray(name: str, spec: GuardSpec, input_path: str, output_path: str, resume: bool, address: str,
                workers: Optional[int], cpus: float, gpus: float, batch_size: int) -> None:
    """`score` or `protect` on Ray Data (see `scale.py`); user errors end as one line and exit code 2."""
    try:
        from .scale import RayOptions, run
    except ImportError as exc:
        fail(f"--ray needs Ray Data ({exc}): pip install 'mllm-protector[scale]'")
    try:
        run(name, spec, input_path, output_path, RayOptions(address, workers, cpus, gpus, batch_size), overwrite=not resume)
    except ProtectorError as exc:
        fail(str(exc))
    err.print(f"wrote {output_path}")


@app.command("check-input")
def check_input(
    input: str = typer.Option(..., "--input", "-i", help=INPUT_HELP),
    output: str = typer.Option(..., "--output", "-o", help=OUTPUT_HELP),
    model: str = typer.Option("default", "--model", help="Request classifier folder or a shipped preset: default (the LoRA fine-tune) or probe."),
    threshold: Optional[float] = typer.Option(None, help="Override the request classifier's threshold."),
    allow_category: list[str] = typer.Option([], "--allow-category", help="Harm category whose requests pass (repeatable), e.g. professional_advice."),
    batch_size: int = typer.Option(16, min=1),
    resume: bool = typer.Option(True, help="Continue an existing output file where it stopped."),
) -> None:
    """Check each line's request (`query`, optional `image` path) before any MLLM answers: writes `input_score`,
    `input_harmful` (the Protector's decision), `input_category` and `ocr_text` (the text read from the image)."""
    from .config import ProtectorSettings
    from .protector import build_protector

    _check_categories(allow_category)
    try:
        settings = ProtectorSettings(input_threshold=threshold, allow_categories=tuple(allow_category))
        guard = build_protector("default", "none", settings=settings, input_guard=model)
    except ProtectorError as exc:
        fail(str(exc))
    _run_jsonl(input, output, resume, ("query",), batch_size, _check_request_image,
               lambda chunk: [{**line.record, **guard.check_input(line.record["query"], line.record.get("image")).record_fields()}
                              for line in chunk], "checking")


def _check_categories(names: list[str]) -> None:
    """Every --allow-category must name a harm category; exit 2 naming the unknown ones."""
    from .categories import CATEGORIES

    unknown = [c for c in names if c not in CATEGORIES]
    if unknown:
        fail(f"unknown --allow-category {', '.join(unknown)}: choose from {', '.join(CATEGORIES)}")


def _check_request_image(line: Line) -> None:
    """An `image` field must name an image file within the input guard's size limits; the error names the line."""
    from .errors import InputError
    from .ocr import open_image

    if line.record.get("image"):
        try:
            open_image(line.record["image"]).close()
        except ProtectorError as exc:
            raise InputError(f"line {line.number}: {exc}") from exc


@app.command()
def info() -> None:
    """Show resolved model locations, library versions and the compute device."""
    import importlib.metadata as md

    import torch

    from .config import PRETRAINED_DIR, cache_dir, data_dir
    from .detector import PRESETS
    from .models import ALIASES, resolve_model

    typer.echo(f"mllm-protector {md.version('mllm-protector')} on Python {platform.python_version()}")
    for name in ("torch", "transformers", "peft", "accelerate"):
        typer.echo(f"  {name:<13} {md.version(name)}")
    typer.echo(f"device: {'cuda (' + torch.cuda.get_device_name(0) + ')' if torch.cuda.is_available() else 'cpu'}")
    typer.echo(f"cache dir: {cache_dir()}\ndata dir: {data_dir()}")
    for alias in ALIASES:
        try:
            where = resolve_model(alias)
        except ProtectorError as exc:
            where = f"unavailable ({exc})"
        typer.echo(f"model {alias}: {where}")
    for preset, folder in PRESETS.items():
        path = PRETRAINED_DIR / folder
        typer.echo(f"detector preset {preset}: {path if path.is_dir() else 'not shipped'}")
    detox = PRETRAINED_DIR / "detoxifier-default"
    typer.echo(f"detoxifier adapter: {detox if detox.is_dir() else 'none (base instruct model)'}")


if __name__ == "__main__":
    app()
