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


# --- one decision path: isolation, failure policy, stream windows ----------------------------------

def test_one_bad_item_never_fails_its_batch(detector):
    """A text the detector cannot take (here not a string at all) fails alone; the others are decided."""
    guard = Protector(detector, RefusalDetoxifier())
    verdicts = guard.protect_batch(["q"] * 3, [BENIGN, 12345, HARMFUL])  # type: ignore[list-item]
    assert [v.action for v in verdicts] == ["pass", "refused", "detoxified"]
    assert verdicts[0].text == BENIGN and verdicts[1].text == DEFAULT_REFUSAL and "detector failed" in (verdicts[1].error or "")
    assert verdicts[1].score is None


def test_failure_policy_lives_in_the_protector(detector):
    bad = 12345  # not a string: the detector raises on it
    closed = Protector(detector, RefusalDetoxifier()).check_batch(["q", "q"], [bad, BENIGN])  # type: ignore[list-item]
    opened = Protector(detector, RefusalDetoxifier(), ProtectorSettings(fail_mode="open")).check_batch(["q", "q"], [bad, BENIGN])  # type: ignore[list-item]
    assert [v.action for v in closed] == ["refused", "pass"] and [v.action for v in opened] == ["unchecked", "pass"]
    with pytest.raises(ProtectorError, match="fail_mode"):
        Protector(detector, None, ProtectorSettings(fail_mode="ajar"))


def test_lone_surrogates_are_sanitised_not_fatal(detector):
    """A lone surrogate made the tokenizer raise and failed every answer scored with it."""
    guard = Protector(detector, RefusalDetoxifier())
    verdicts = guard.protect_batch(["q\ud800"] * 3, [BENIGN, "x \ud800 y", HARMFUL])
    assert [v.action for v in verdicts] == ["pass", "pass", "detoxified"]
    assert verdicts[1].text == "x ? y" and verdicts[1].text.encode("utf-8")


def test_check_then_detoxify_scores_the_original_once(detector):
    guard = Protector(detector, EchoDetoxifier(), ProtectorSettings(max_rounds=1))
    flagged = guard.check_batch(["q"], [HARMFUL])[0]
    assert flagged.action == "flagged" and flagged.text == DEFAULT_REFUSAL and flagged.harmful
    final = guard.detoxify_batch(["q"], [flagged])[0]
    assert final.action == "refused" and final.score == flagged.score and final.rounds == 1


def test_stream_window_is_judged_alone_and_in_context(detector):
    """The leak: after a benign lead-in the harmful window scored below threshold in context."""
    from .stream_fixtures import HARMFUL_ANSWERS, lead_in

    guard = Protector(detector, RefusalDetoxifier())
    query, answer, _ = HARMFUL_ANSWERS[0]
    first_step = answer.split(" Step 2")[0] + " "
    verdict = guard.check_window(query, lead_in(2000), first_step)
    assert verdict.action == "flagged" and verdict.text == DEFAULT_REFUSAL
    assert guard.check_window(query, lead_in(2000), BENIGN).action == "pass"
    alone, in_context = guard.window_texts("a " * 5000, "window")
    assert alone == "window" and len(in_context) <= guard.settings.context_chars + len("window")


def test_the_first_stream_window_is_scored_once(detector, monkeypatch):
    """With nothing approved yet, the window alone and in context are the same text: one detector call, not two."""
    guard = Protector(detector, RefusalDetoxifier())
    seen: list[list[str]] = []
    real = detector.detect

    def spy(texts, *args, **kwargs):
        seen.append(list(texts))
        return real(texts, *args, **kwargs)

    monkeypatch.setattr(detector, "detect", spy)
    first = guard.check_window("q", "", BENIGN)
    assert [len(t) for t in seen] == [1] and first.action == "pass"
    assert first.score == guard.check_window("q", "", BENIGN).score
    seen.clear()
    guard.check_window("q", BENIGN, " And the next sentence.")
    assert [len(t) for t in seen] == [2]


def test_a_failed_detector_call_logs_one_line_without_traceback(detector, caplog):
    guard = Protector(detector, RefusalDetoxifier())
    with caplog.at_level("WARNING", logger="mllm_protector.protector"):
        guard.check_batch(["q"], [12345])  # type: ignore[list-item]
    records = [r for r in caplog.records if r.name == "mllm_protector.protector"]
    assert len(records) == 1 and records[0].exc_info is None and "\n" not in records[0].getMessage()
