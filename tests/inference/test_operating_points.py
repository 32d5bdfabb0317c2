"""Operating points: the one decision of present / absent / uncertain, and the flow deciding with it."""
from __future__ import annotations

import pytest

from dicomnode.demo.synthetic import StudySpec, make_study
from inference.chat import Generation, Turn
from inference.constraints import NO_HEAD, YES_HEAD
from inference.flow import run_flow
from inference.operating_points import applied_threshold, check_thresholds, decide_presence
from inference.record import Presence
from tests.inference.test_flow import BOOK, ScriptedModel

PRESENT, ABSENT, UNCERTAIN = Presence.PRESENT, Presence.ABSENT, Presence.UNCERTAIN


@pytest.mark.parametrize(("answer", "probability", "threshold", "hedged", "expected"), [
    (True, 0.9, None, False, PRESENT),  # no threshold: the model's answer
    (False, 0.1, None, False, ABSENT),
    (True, 0.9, None, True, UNCERTAIN),  # a hedged answer
    (None, None, None, False, UNCERTAIN),  # did not parse
    (False, 0.3, 0.3, False, PRESENT),  # at the threshold: present, whatever the answer said
    (True, 0.6, 0.7, False, ABSENT),
    (True, 0.6, 0.5, True, PRESENT),  # a threshold decides hedged answers too
    (None, 0.2, 0.1, False, PRESENT),
    (True, None, 0.9, False, PRESENT),  # no probability to compare: the answer decides
    (None, None, 0.9, False, UNCERTAIN),
])
def test_decide_presence(answer, probability, threshold, hedged, expected) -> None:
    assert decide_presence(answer, probability, threshold, hedged=hedged) is expected
    assert applied_threshold(probability, threshold) == (threshold if probability is not None else None)


def test_threshold_problems_are_named() -> None:
    known = {f.key: f.label for f in BOOK.findings}
    assert check_thresholds({"pneumothorax": 0.3, "edema": 1}, known) == []
    problems = check_thresholds({"pneumothorax": 1.5, "nonsense": 0.2, "edema": True}, known)
    assert problems[0].startswith("pneumothorax: threshold 1.5") and "edema: threshold True" in problems[1]
    assert problems[2].startswith("nonsense: not a checklist finding")


class ScoringModel(ScriptedModel):
    """The scripted model with a probability of presence per checklist term (as a scoring backend returns)."""

    def __init__(self, presence: dict[str, float], **kwargs) -> None:
        self.presence = {BOOK.finding(k).term: p for k, p in presence.items()}
        super().__init__(positives=[k for k, p in presence.items() if p >= 0.5], **kwargs)

    def answer(self, history: list[Turn], question: Turn, max_new_tokens: int,
               constraint: object = None) -> Generation:
        generation = super().answer(history, question, max_new_tokens, constraint)
        if "Is there any evidence of" not in question.text:
            return generation
        term = question.text.split("evidence of ", 1)[1].split(" in the main study")[0]
        p = self.presence.get(term, 0.05)
        return Generation(text=generation.text, prompt_tokens=1, cached_tokens=0, generated_tokens=1, seconds=0.0,
                          choice_probabilities={YES_HEAD: p, NO_HEAD: 1 - p})


def test_thresholds_decide_presence_and_what_stage_3_asks() -> None:
    current = make_study(StudySpec(rows=200, columns=160, views=("PA",)))
    model = ScoringModel({"pneumothorax": 0.35, "edema": 0.8})
    plain = run_flow(model, current)
    by_key = {f.key: f for f in plain.findings}
    assert (by_key["pneumothorax"].presence, by_key["edema"].presence) == (ABSENT, PRESENT)
    assert by_key["pneumothorax"].probability == pytest.approx(0.35) and by_key["pneumothorax"].threshold is None
    question = next(q for q in plain.stage(2).questions if q.finding == "pneumothorax")
    assert question.choice_probabilities == pytest.approx({YES_HEAD: 0.35, NO_HEAD: 0.65})
    assert question.answer_probability == pytest.approx(0.65)  # the model said no

    tuned = run_flow(model, current, thresholds={"pneumothorax": 0.3, "edema": 0.9})
    by_key = {f.key: f for f in tuned.findings}
    assert (by_key["pneumothorax"].presence, by_key["edema"].presence) == (PRESENT, ABSENT)
    assert (by_key["pneumothorax"].threshold, by_key["edema"].threshold) == (0.3, 0.9)
    assert by_key["cardiomegaly"].threshold is None  # not configured: the model's answer decided
    asked = {q.finding for q in tuned.stage(3).questions if q.finding}
    assert asked == {"pneumothorax"}  # stage 3 describes and boxes what the thresholds made present


def test_a_threshold_without_a_probability_leaves_the_answer_in_charge() -> None:
    current = make_study(StudySpec(rows=200, columns=160, views=("PA",)))
    record = run_flow(ScriptedModel(positives=["edema"]), current, thresholds={"edema": 0.99})
    edema = next(f for f in record.findings if f.key == "edema")
    assert (edema.presence, edema.probability, edema.threshold) == (PRESENT, None, None)
