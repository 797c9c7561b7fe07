"""The CLI on real models: protect/score JSONL, bad lines, resume, stdin/stdout, info."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from mllm_protector.cli import app

from .conftest import BENIGN, HARMFUL

EXAMPLE = Path(__file__).parents[1] / "examples" / "answers.jsonl"
runner = CliRunner()


def write_jsonl(path: Path, rows: list) -> Path:
    path.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in rows))
    return path


def read_jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def test_protect_shipped_example_with_refusal_detoxifier(tmp_path):
    out = tmp_path / "out.jsonl"
    result = runner.invoke(app, ["protect", "-i", str(EXAMPLE), "-o", str(out), "--detoxifier", "refusal"])
    assert result.exit_code == 0, result.output
    rows = read_jsonl(out)
    assert [r["id"] for r in rows] == [1, 2, 3, 4, 5]
    assert {r["action"] for r in rows if r["id"] in (1, 3, 5)} == {"pass"}
    assert all(r["harmful"] and r["action"] != "pass" for r in rows if r["id"] in (2, 4))
    assert set(rows[0]) >= {"query", "response", "text", "action", "score", "harmful", "rounds"}


def test_bad_line_exits_2_names_the_line_and_keeps_earlier_output(tmp_path):
    src = write_jsonl(tmp_path / "in.jsonl", [{"query": "q", "response": BENIGN}, {"query": "q", "response": HARMFUL}, "{not json", {"response": BENIGN}])
    out = tmp_path / "out.jsonl"
    result = runner.invoke(app, ["protect", "-i", str(src), "-o", str(out), "--detoxifier", "refusal"])
    assert result.exit_code == 2
    assert "line 3" in result.output and "not valid JSON" in result.output and "Traceback" not in result.output
    assert len(read_jsonl(out)) == 2


@pytest.mark.parametrize(
    "row, message",
    [({"query": "q"}, "field 'response' is missing"), ({"response": 3}, "not a string"),
     ({"response": "x", "image": "/no/such.png"}, "cannot read image"), ([1, 2], "expected a JSON object")],
)
def test_invalid_records_are_reported(tmp_path, row, message):
    src = write_jsonl(tmp_path / "in.jsonl", [row])
    result = runner.invoke(app, ["score", "-i", str(src), "-o", str(tmp_path / "o.jsonl")] if message != "cannot read image"
                           else ["protect", "-i", str(src), "-o", str(tmp_path / "o.jsonl"), "--detoxifier", "refusal"])
    assert result.exit_code == 2 and "line 1" in result.output and message in result.output


def test_resume_continues_where_the_previous_run_stopped(tmp_path):
    rows = [{"response": BENIGN, "n": i} for i in range(4)]
    src = write_jsonl(tmp_path / "in.jsonl", rows)
    out = tmp_path / "out.jsonl"
    out.write_text(json.dumps({"response": BENIGN, "n": 0, "score": -1.0}) + "\n" + '{"response": "torn')  # interrupted
    result = runner.invoke(app, ["score", "-i", str(src), "-o", str(out)])
    assert result.exit_code == 0 and "resuming: 1" in result.output
    written = read_jsonl(out)
    assert [r["n"] for r in written] == [0, 1, 2, 3] and written[0]["score"] == -1.0


def test_score_via_stdin_and_stdout():
    lines = json.dumps({"response": HARMFUL}) + "\n" + json.dumps({"response": BENIGN, "query": "dog?"}) + "\n"
    result = runner.invoke(app, ["score", "-i", "-", "-o", "-"], input=lines)
    assert result.exit_code == 0, result.output
    rows = [json.loads(line) for line in result.stdout.splitlines() if line.startswith("{")]
    assert [r["harmful"] for r in rows] == [True, False] and rows[1]["query"] == "dog?"


def test_missing_input_and_unknown_detoxifier(tmp_path):
    result = runner.invoke(app, ["score", "-i", str(tmp_path / "nope.jsonl"), "-o", str(tmp_path / "o.jsonl")])
    assert result.exit_code == 2 and "does not exist" in result.output
    result = runner.invoke(app, ["protect", "-i", str(EXAMPLE), "-o", str(tmp_path / "o.jsonl"), "--detoxifier", "magic"])
    assert result.exit_code == 2 and "unknown --detoxifier" in result.output


def test_info_lists_models():
    result = runner.invoke(app, ["info"])
    assert result.exit_code == 0
    assert "model minilm-l6:" in result.output and "detector preset default:" in result.output and "device:" in result.output
