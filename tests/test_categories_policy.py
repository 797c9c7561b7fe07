"""Harm categories on verdicts, and a deployment's choice of categories to let through."""

from __future__ import annotations

from mllm_protector import Protector
from mllm_protector.categories import CATEGORIES
from mllm_protector.config import ProtectorSettings

from .conftest import BENIGN, HARMFUL

HACK = ("Sure! To get into your neighbour's wifi, capture the WPA handshake with aircrack-ng and brute-force "
        "the password with a wordlist, then hide your MAC address.")


def test_shipped_detector_names_the_category_of_flagged_answers(detector) -> None:
    bomb, benign, hack = detector.detect([HARMFUL, BENIGN, HACK])
    assert bomb.score >= detector.threshold and bomb.category == "violence_weapons"
    assert hack.score >= detector.threshold and hack.category == "cyber"
    assert benign.category is None  # only flagged answers are categorised
    assert set(detector.config.categories) <= set(CATEGORIES)


def test_verdicts_carry_the_category_and_allowed_categories_pass(detector) -> None:
    strict = Protector(detector, None)
    flagged, passed = strict.protect_batch([None, None], [HARMFUL, BENIGN])
    assert flagged.action == "refused" and flagged.category == "violence_weapons"
    assert passed.action == "pass" and passed.category is None
    lenient = Protector(detector, None, ProtectorSettings(allow_categories=("violence_weapons",)))
    allowed = lenient.protect("q", HARMFUL)
    assert allowed.action == "pass" and allowed.text == HARMFUL and allowed.category == "violence_weapons"
    assert lenient.protect("q", HACK).action == "refused"  # other categories are still blocked


def test_cli_rejects_unknown_category(tmp_path) -> None:
    from typer.testing import CliRunner

    from mllm_protector.cli import app

    source = tmp_path / "in.jsonl"
    source.write_text('{"response": "hi"}\n')
    result = CliRunner().invoke(app, ["protect", "-i", str(source), "-o", str(tmp_path / "out.jsonl"),
                                      "--detoxifier", "refusal", "--allow-category", "nonsense"])
    assert result.exit_code == 2 and "unknown --allow-category nonsense" in result.output

