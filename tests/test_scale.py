"""`score` / `protect --ray` on a real local Ray runtime with 2 actors: JSONL and Parquet give the same scores
and verdicts as the single-process CLI, in input order; bad input ends in one line and exit code 2."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from typer.testing import CliRunner

from mllm_protector.cli import app

from .conftest import BENIGN, HARMFUL

pytestmark = pytest.mark.slow
runner = CliRunner()
RAY_ARGS = ["--ray", "local", "--workers", "2", "--cpus-per-worker", "1"]


def rows(n: int = 50) -> list[dict[str, Any]]:
    """Our answers: harmful and benign of several lengths, some with a query, non-ASCII text, a nested field."""
    out = []
    for i in range(n):
        text = f"{HARMFUL} Step {i}." if i % 4 == 0 else f"{BENIGN} Photo {i}, café 東京." * (1 + i % 3)
        out.append({"id": i, "query": f"What is in picture {i}?" if i % 3 else None, "response": text, "meta": {"batch": i // 10}})
    return out


def write_jsonl(path: Path, records: list[dict[str, Any]]) -> Path:
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records), encoding="utf-8")
    return path


def read_jsonl(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


def read_shards(folder: Path) -> list[dict[str, Any]]:
    """A Ray output folder in shard-name order (the input order)."""
    return [r for shard in sorted(folder.glob("*.jsonl")) for r in read_jsonl(shard)]


def invoke(*args: str) -> Any:
    result = runner.invoke(app, list(args))
    assert result.exit_code == 0, result.output
    return result


def assert_same(single: list[dict[str, Any]], scaled: list[dict[str, Any]], fields: tuple[str, ...]) -> None:
    """Same records in the same order, scores within 1e-4 and every other output field equal."""
    assert [r["id"] for r in scaled] == [r["id"] for r in single]
    for one, many in zip(single, scaled, strict=True):
        assert abs(one["score"] - many["score"]) <= 1e-4, (one["id"], one["score"], many["score"])
        assert {k: many.get(k) for k in fields} == {k: one.get(k) for k in fields}, one["id"]


def test_bad_line_in_a_real_cli_process_exits_2_with_one_line(tmp_path):
    """The installed entry point starts its own Ray runtime; a record without `response` stops it cleanly."""
    src = write_jsonl(tmp_path / "in.jsonl", rows(6)[:3] + [{"id": 3, "query": "q"}] + rows(6)[4:])
    out = tmp_path / "out"
    done = subprocess.run([sys.executable, "-m", "mllm_protector.cli", "score", "-i", str(src), "-o", str(out),
                           "--ray", "local", "--workers", "1"], capture_output=True, text=True, timeout=240,
                          env={**os.environ, "HF_HUB_OFFLINE": "1"})
    assert done.returncode == 2, done.stderr[-2000:]
    assert "field 'response' is missing" in done.stderr and '{"id": 3, "query": "q"}' in done.stderr
    assert "Traceback" not in done.stderr + done.stdout


@pytest.fixture(scope="module")
def torch_backend():
    """The detector on torch fp32 in this process and (through the environment Ray passes on) in the actors: int8
    ONNX Runtime quantises activations per batch, so its scores move with the batch an answer shares, and Ray's
    batches are not the single-process ones. These tests compare the two paths, not the backends."""
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("MLLM_PROTECTOR_BACKEND", "torch")
        yield


@pytest.fixture(scope="module")
def ray_runtime(torch_backend):
    """One local Ray runtime with 2 CPUs for the tests below (the CLI joins it instead of starting its own)."""
    import ray

    ray.init(num_cpus=2, include_dashboard=False)
    yield
    ray.shutdown()


@pytest.fixture(scope="module")
def answers(torch_backend, tmp_path_factory) -> tuple[Path, list[dict[str, Any]]]:
    """The 50-line input (with a blank line) and the single-process `score` output for it."""
    folder = tmp_path_factory.mktemp("answers")
    src = write_jsonl(folder / "in.jsonl", rows())
    src.write_text(src.read_text(encoding="utf-8").replace("\n", "\n\n", 1), encoding="utf-8")
    invoke("score", "-i", str(src), "-o", str(folder / "single.jsonl"))
    single = read_jsonl(folder / "single.jsonl")
    assert {r["harmful"] for r in single} == {True, False}
    return src, single


def test_score_jsonl_on_ray_equals_single_process(ray_runtime, answers, tmp_path):
    src, single = answers
    invoke("score", "-i", str(src), "-o", str(tmp_path / "out"), "--batch-size", "8", *RAY_ARGS)
    scaled = read_shards(tmp_path / "out")
    assert_same(single, scaled, ("query", "response", "meta", "harmful", "category", "error"))
    assert [list(r) for r in scaled] == [list(r) for r in single]  # the same fields, in the same order, per line


def test_score_parquet_folder_on_ray_equals_single_process(ray_runtime, answers, tmp_path):
    _, single = answers
    folder = tmp_path / "in.parquet"
    folder.mkdir()
    table = pa.Table.from_pylist(rows())
    pq.write_table(table.slice(0, 20), folder / "part-0.parquet")
    pq.write_table(table.slice(20), folder / "part-1.parquet")
    invoke("score", "-i", str(folder), "-o", str(tmp_path / "out.parquet"), "--batch-size", "8", *RAY_ARGS)
    written = pq.read_table(tmp_path / "out.parquet")
    assert {"id", "query", "response", "meta", "score", "harmful", "category", "error"} <= set(written.column_names)
    assert written.schema.field("meta").type == table.schema.field("meta").type  # input columns keep their types
    scaled = [{k: v for k, v in r.items() if v is not None} for r in written.to_pylist()]
    assert_same(single, scaled, ("query", "response", "meta", "harmful", "category"))


def test_protect_on_ray_equals_single_process(ray_runtime, tmp_path):
    src = write_jsonl(tmp_path / "in.jsonl", rows(12))
    invoke("protect", "-i", str(src), "-o", str(tmp_path / "single.jsonl"), "--detoxifier", "refusal")
    invoke("protect", "-i", str(src), "-o", str(tmp_path / "out"), "--detoxifier", "refusal", "--batch-size", "4", *RAY_ARGS)
    single = read_jsonl(tmp_path / "single.jsonl")
    assert {r["action"] for r in single} >= {"pass"} and any(r["action"] != "pass" for r in single)
    assert_same(single, read_shards(tmp_path / "out"), ("text", "action", "harmful", "rounds", "category", "error"))


def test_eval_detector_on_ray_gives_the_single_process_metrics(ray_runtime, tmp_path):
    labelled = [{**r, "label": ("harmful" if r["id"] % 8 == 0 else 1) if r["id"] % 4 == 0 else 0,
                 **({"source": "own"} if r["id"] % 2 else {})} for r in rows(40)]
    src = write_jsonl(tmp_path / "labelled.jsonl", labelled)
    invoke("eval", "detector", "--data", str(src), "-o", str(tmp_path / "single.json"))
    invoke("eval", "detector", "--data", str(src), "-o", str(tmp_path / "ray.json"), "--ray", "local", "--workers", "2",
           "--scores-dir", str(tmp_path / "scores"))
    single, scaled = (json.loads((tmp_path / name).read_text()) for name in ("single.json", "ray.json"))
    for key in ("n", "harmful", "auroc", "recall", "fpr"):
        assert scaled["overall"][key] == pytest.approx(single["overall"][key], abs=1e-6), key
    assert set(scaled["by_source"]) == set(single["by_source"]) == {"own", "labelled"}  # rows without one: the file's stem
    assert len(read_shards(tmp_path / "scores")) == 40

    write_jsonl(src, [{"response": BENIGN}])  # no label: one line, exit code 2
    result = runner.invoke(app, ["eval", "detector", "--data", str(src), "--ray", "local", "--workers", "1"])
    assert result.exit_code == 2 and "no `label` field" in " ".join(result.output.split())


def test_driver_side_errors_are_one_line(ray_runtime, answers, tmp_path):
    src, _ = answers
    (tmp_path / "taken").mkdir()
    (tmp_path / "taken" / "x.jsonl").write_text("{}\n")
    cases = [(["-i", str(tmp_path / "nope.jsonl"), "-o", str(tmp_path / "o")], "does not exist"),
             (["-i", str(src), "-o", str(tmp_path / "taken")], "already exists"),
             (["-i", "-", "-o", str(tmp_path / "o")], "not stdin/stdout")]
    for args, message in cases:
        result = runner.invoke(app, ["score", *args, *RAY_ARGS])
        assert result.exit_code == 2 and message in result.output and "Traceback" not in result.output, result.output
