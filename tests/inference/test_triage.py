"""Triage (inference.triage): the priority is the highest rule that fired on the state the model answered; an
uncertain answer is never taken for present; a rule for a finding the checklist does not ask about is named."""
from __future__ import annotations

import pytest

from inference.record import Presence
from inference.stages import load_stages, parse_stages
from inference.triage import (
    DEFAULT_RULES,
    Priority,
    TriageRule,
    asked_findings,
    assess,
    rule_problems,
)

P, A, U = Presence.PRESENT, Presence.ABSENT, Presence.UNCERTAIN
RULES = (TriageRule("pneumothorax", Priority.STAT), TriageRule("pneumothorax", Priority.URGENT, when=U),
         TriageRule("pleural_effusion", Priority.URGENT))


def test_the_highest_rule_that_fired_is_the_priority() -> None:
    triage = assess({"pneumothorax": P, "pleural_effusion": P, "edema": P}, RULES, {"pneumothorax": "Pneumothorax"})
    assert triage.priority is Priority.STAT and triage.raised
    assert [r.finding for r in triage.reasons] == ["pneumothorax", "pleural_effusion"]
    assert triage.describe() == "STAT (Pneumothorax present, Pleural effusion present)"
    assert triage.raised_by_present("pneumothorax") and not triage.raised_by_present("edema")
    # another finding that raises less never lowers it; the order of the rules does not matter
    assert assess({"pneumothorax": P, "pleural_effusion": P}, reversed(RULES)).priority is Priority.STAT
    assert assess({"pleural_effusion": P}, RULES).priority is Priority.URGENT


def test_an_uncertain_answer_is_never_taken_for_present() -> None:
    triage = assess({"pneumothorax": U}, DEFAULT_RULES)
    assert triage.priority is Priority.ROUTINE and not triage.reasons and triage.describe() == "routine"
    hedged = assess({"pneumothorax": U}, RULES)  # a site's rule for the uncertain answer
    assert hedged.priority is Priority.URGENT
    assert [r.presence for r in hedged.reasons] == [U] and hedged.because() == "Pneumothorax uncertain"
    assert not hedged.raised_by_present("pneumothorax")  # no abnormal flag claims it was seen


def test_absent_or_unknown_findings_raise_nothing() -> None:
    assert assess({"pneumothorax": A}, RULES).priority is Priority.ROUTINE
    assert assess({}, RULES).priority is Priority.ROUTINE
    assert assess({"pneumothorax": P}, ()).priority is Priority.ROUTINE


def test_a_rule_raises_and_fires_on_what_was_or_may_have_been_seen() -> None:
    with pytest.raises(ValueError, match="present or uncertain, not absent"):
        TriageRule("pneumothorax", Priority.STAT, when=A)
    with pytest.raises(ValueError, match="urgent or stat"):
        TriageRule("pneumothorax", Priority.ROUTINE)


def test_rules_are_checked_against_the_checklist() -> None:
    book = load_stages()
    asked = asked_findings(book)
    assert {"pneumothorax", "endotracheal_tube", "pleural_effusion"} <= asked and len(asked) == len(book.findings)
    assert rule_problems(DEFAULT_RULES, asked) == []
    problems = rule_problems([TriageRule("free_air", Priority.STAT), *DEFAULT_RULES, DEFAULT_RULES[0]], asked)
    assert [index for index, _ in problems] == [0, 2]
    assert problems[0][1].startswith("'free_air' is not a finding the checklist asks about, so the rule could never "
                                     "fire (asked: atelectasis, cardiac_pacemaker")
    assert problems[1][1] == "a second rule for pneumothorax present"


def test_only_findings_an_enabled_presence_question_asks_about_count() -> None:
    text = """
version: 1
findings:
  - {key: pneumothorax, label: Pneumothorax, term: pneumothorax, group: disease}
  - {key: chest_tube, label: Chest tube, term: a chest tube, group: device}
stages:
  - number: 2
    key: findings
    title: Findings
    questions:
      - {id: s2.present, text: "Is there {term}?", qtype: yes_no, for_each: finding, groups: [device],
         records: presence}
"""
    assert asked_findings(parse_stages(text)) == {"chest_tube"}
    disabled = text.replace("title: Findings", "title: Findings\n    enabled: false")
    assert asked_findings(parse_stages(disabled)) == set()
