"""PKU-SafeRLHF and BeaverTails readers (via `datasets`) on small fixtures we wrote in those schemas."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from mllm_protector.data.hub import read_beavertails, read_pku_saferlhf_hub
from mllm_protector.data.records import HARMFUL, HARMLESS
from mllm_protector.errors import DatasetError

DETOX = Path(__file__).parent / "fixtures" / "detox"


def test_pku_jsonl_examples_and_pairs():
    corpus = read_pku_saferlhf_hub(DETOX / "pku.jsonl")
    assert len(corpus.examples) == 8
    assert sum(e.label == HARMFUL for e in corpus.examples) == 4
    # rows 1 and 3: exactly one safe answer; row 2 both safe, row 4 both unsafe → ordered by safer_response_id
    assert len(corpus.pairs) == 4
    first = corpus.pairs[0]
    assert first.safe.startswith("Make a chore schedule") and first.unsafe.startswith("Tell your roommate")
    both_unsafe = corpus.pairs[3]
    assert both_unsafe.safe.startswith("Your boss is so slow")
    assert all(p.group == e.group for p, e in zip(corpus.pairs[:1], corpus.examples[:1]))


def test_pku_parquet_and_json_paths(tmp_path):
    import datasets

    rows = [json.loads(line) for line in (DETOX / "pku.jsonl").read_text().splitlines()]
    for row in rows:  # parquet cannot store empty structs
        row.pop("response_0_harm_category"), row.pop("response_1_harm_category")
    parquet = tmp_path / "pku.parquet"
    datasets.Dataset.from_list(rows).to_parquet(str(parquet))
    assert len(read_pku_saferlhf_hub(parquet).examples) == 8
    folder = tmp_path / "folder"
    folder.mkdir()
    shutil.copy(parquet, folder / "part-0.parquet")
    assert len(read_pku_saferlhf_hub(folder).pairs) == 4
    as_json = tmp_path / "pku.json"
    as_json.write_text(json.dumps(rows))
    assert len(read_pku_saferlhf_hub(as_json).examples) == 8


def test_pku_malformed_rows_name_file_and_row():
    with pytest.raises(DatasetError, match=r"pku_malformed\.jsonl, line 3: missing field 'is_response_1_safe'"):
        read_pku_saferlhf_hub(DETOX / "pku_malformed.jsonl")
    with pytest.raises(DatasetError, match=r"pku_bad_safer\.jsonl, line 2: field 'safer_response_id' must be 0 or 1"):
        read_pku_saferlhf_hub(DETOX / "pku_bad_safer.jsonl")


def test_beavertails_reader():
    corpus = read_beavertails(DETOX / "beavertails.jsonl")
    labels = [e.label for e in corpus.examples]
    assert labels == [HARMFUL, HARMLESS, HARMLESS]
    assert corpus.examples[0].scenario == "property_crime"
    assert corpus.examples[1].scenario is None


def test_beavertails_malformed_row():
    with pytest.raises(DatasetError, match=r"beavertails_malformed\.jsonl, line 2: missing field 'response'"):
        read_beavertails(DETOX / "beavertails_malformed.jsonl")


def test_missing_and_unsupported_sources(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(DatasetError, match="cannot read dataset|not found"):
        read_pku_saferlhf_hub("no-such-org/no-such-dataset")
    odd = tmp_path / "data.txt"
    odd.write_text("x")
    with pytest.raises(DatasetError, match="unsupported file type"):
        read_beavertails(odd)
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(DatasetError, match="no .json"):
        read_beavertails(empty)


def test_pku_pairs_become_detox_records():
    from mllm_protector.data.detox import pairs_to_detox

    records = pairs_to_detox(read_pku_saferlhf_hub(DETOX / "pku.jsonl").pairs, source="pku_hub")
    assert len(records) == 4 and {r.source for r in records} == {"pku_hub"}
    assert records[0].query == "How do I get out of doing the dishes?"
    assert records[0].target.startswith("Make a chore schedule") and records[0].category == "harm"
