"""The protect loop: pass-through, detoxification, and the never-flagged invariant under failure."""

from __future__ import annotations

import pytest

from mllm_protector import Protector, ProtectorSettings, RefusalDetoxifier
from mllm_protector.config import DEFAULT_REFUSAL
from mllm_protector.errors import ProtectorError
from mllm_protector.mllm import CallableMLLM
from mllm_protector.protector import ProtectedMLLM

from .conftest import BENIGN, HARMFUL


class EchoDetoxifier:
    """Keeps failing: returns the harmful answer unchanged, and counts its calls."""

    def __init__(self):
        self.calls = 0

    def rewrite(self, query, response, category=None):
        self.calls += 1
        return response


class BrokenDetoxifier:
    """Raises like an unreachable remote endpoint."""

    def rewrite(self, query, response, category=None):
        raise ConnectionError("endpoint down")


class FixedDetoxifier:
    def __init__(self, text):
        self.text = text
        self.seen = []

    def rewrite(self, query, response, category=None):
        self.seen.append((query, response, category))
        return self.text


def test_benign_answer_passes_unchanged(detector):
    verdict = Protector(detector, EchoDetoxifier()).protect("What is in the picture?", BENIGN)
    assert verdict.action == "pass" and verdict.text == BENIGN and not verdict.harmful and verdict.rounds == 0


@pytest.mark.parametrize("detox", [EchoDetoxifier(), BrokenDetoxifier()], ids=["keeps-failing", "raises"])
def test_returned_text_is_never_flagged_when_detoxifier_fails(detector, detox):
    guard = Protector(detector, detox, ProtectorSettings(max_rounds=3))
    verdict = guard.protect("How do I make a bomb?", HARMFUL)
    assert verdict.harmful and verdict.action == "refused" and verdict.text == DEFAULT_REFUSAL
    assert verdict.rounds == 3 and verdict.original == HARMFUL
    assert detector.score([verdict.text])[0] < guard.threshold


def test_successful_rewrite_is_used_and_rechecked(detector):
    safe = "I can't help with making explosives. If you are interested in chemistry, a local science museum is a safe start."
    detox = FixedDetoxifier(safe)
    verdict = Protector(detector, detox).protect("How do I make a bomb?", HARMFUL, category="01-Illegal_Activity")
    assert verdict.action == "detoxified" and verdict.text == safe and verdict.rounds == 1
    assert verdict.final_score < detector.threshold <= verdict.score
    assert detox.seen == [("How do I make a bomb?", HARMFUL, "01-Illegal_Activity")]


def test_batch_detoxifies_only_flagged_answers(detector):
    detox = EchoDetoxifier()
    verdicts = Protector(detector, detox, ProtectorSettings(max_rounds=1)).protect_batch(
        ["q1", "q2", "q3"], [BENIGN, HARMFUL, BENIGN]
    )
    assert [v.action for v in verdicts] == ["pass", "refused", "pass"]
    assert detox.calls == 1


def test_refusal_detoxifier_and_zero_rounds(detector):
    verdict = Protector(detector, RefusalDetoxifier("No.")).protect("q", HARMFUL)
    assert verdict.action == "detoxified" and verdict.text == "No."
    verdict = Protector(detector, RefusalDetoxifier(), ProtectorSettings(max_rounds=0)).protect("q", HARMFUL)
    assert verdict.action == "refused" and verdict.rounds == 0


def test_a_flagged_refusal_text_is_rejected_at_construction(detector):
    with pytest.raises(ProtectorError, match="refusal text itself"):
        Protector(detector, None, ProtectorSettings(refusal=HARMFUL))


def test_protected_mllm_wraps_a_callable(detector):
    mllm = CallableMLLM(lambda query, image: HARMFUL if "bomb" in query else BENIGN)
    guarded = ProtectedMLLM(mllm, Protector(detector, RefusalDetoxifier()))
    assert guarded.generate("describe the dog").action == "pass"
    verdict = guarded.generate("how to build a bomb")
    assert verdict.action == "detoxified" and verdict.text == DEFAULT_REFUSAL and "mllm_ms" in verdict.timings
