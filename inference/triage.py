"""Triage: which studies go to the top of the worklist. One pure function of the checklist's answers.

A site's rules (the node config's ``triage:``) name checklist findings (keys of the stage book, the same keys as
``sr_writer/data/finding_codes.yaml``) and the priority each raises when the model's answer is ``present`` (or, for
a rule that says so, ``uncertain``). :func:`assess` takes each finding's state (present / absent / uncertain) and
the rules, and answers the study's priority and why. The result is the same wherever it is asked (the SR, the pages,
the HL7 and FHIR messages, the database): it depends on nothing else.

- It never lowers a priority: it starts at ``routine`` and only the highest rule that fired counts; an output that
  has no raised priority says nothing about priority at all (an ORU leaves OBR-27 empty, FHIR gets no Flag), so a
  priority the order already has is never overwritten with a lower one.
- It never claims more than the model said: a rule fires on the state it names and nothing stronger; a reason keeps
  the state the model answered (an ``uncertain`` pneumothorax is reported as uncertain, never as present).
- Its input is each finding's state, not the record: per-finding probabilities and a site's thresholds can decide
  the states first and feed the same function.
"""
from __future__ import annotations

from collections.abc import Collection, Iterable, Mapping
from dataclasses import dataclass, field
from enum import StrEnum

from inference.record import Finding, Presence, ReasoningRecord
from inference.stages import ForEach, Records, StageBook


class Priority(StrEnum):
    """Worklist priority, lowest first (FHIR request-priority's words; HL7 table 0027: R, A, S)."""

    ROUTINE = "routine"
    URGENT = "urgent"
    STAT = "stat"

    @property
    def rank(self) -> int:
        return list(Priority).index(self)


# the states a rule may fire on: never "absent" (triage raises on what was seen, or may have been)
RULE_STATES = (Presence.PRESENT, Presence.UNCERTAIN)


@dataclass(frozen=True)
class TriageRule:
    """``finding`` answered ``when`` raises the study to ``priority``."""

    finding: str
    priority: Priority
    when: Presence = Presence.PRESENT

    def __post_init__(self) -> None:
        if self.when not in RULE_STATES:
            raise ValueError(f"a triage rule fires on present or uncertain, not {self.when.value}")
        if self.priority is Priority.ROUTINE:
            raise ValueError("a triage rule raises the priority: urgent or stat (routine is where every study starts)")

    def describe(self) -> str:
        return f"{self.finding} {self.when.value} -> {self.priority.value}"


# What the node ships (node.example.yaml documents it): of the urgent chest X-ray findings (pneumothorax, tension
# signs, free air, a misplaced tube), the shipped checklist asks only about pneumothorax. Tension, free air and tube
# position are not asked (a device is asked about as present or absent, not its position): a rule for them is a
# config error until a stage book asks about them.
DEFAULT_RULES: tuple[TriageRule, ...] = (TriageRule("pneumothorax", Priority.STAT),)


@dataclass(frozen=True)
class TriageReason:
    """One rule that fired: the finding, the state the model answered, the priority it raised."""

    finding: str
    label: str
    presence: Presence
    priority: Priority

    def describe(self) -> str:
        return f"{self.label} {self.presence.value}"


@dataclass(frozen=True)
class Triage:
    priority: Priority = Priority.ROUTINE
    reasons: tuple[TriageReason, ...] = field(default_factory=tuple)

    @property
    def raised(self) -> bool:
        return self.priority is not Priority.ROUTINE

    @property
    def finding_keys(self) -> set[str]:
        """Findings whose answer raised the priority (any rule that fired)."""
        return {reason.finding for reason in self.reasons}

    def raised_by_present(self, key: str) -> bool:
        """Whether ``key`` raised the priority with a ``present`` answer (what an abnormal flag may say)."""
        return any(r.finding == key and r.presence is Presence.PRESENT for r in self.reasons)

    def because(self) -> str:
        """``Pneumothorax present`` (the reasons, highest priority first); "" when nothing fired."""
        ordered = sorted(self.reasons, key=lambda r: -r.priority.rank)
        return ", ".join(dict.fromkeys(r.describe() for r in ordered))

    def describe(self) -> str:
        """``STAT (Pneumothorax present)``, or ``routine``."""
        return f"{self.priority.value.upper()} ({self.because()})" if self.raised else Priority.ROUTINE.value


def assess(states: Mapping[str, Presence], rules: Iterable[TriageRule],
           labels: Mapping[str, str] | None = None) -> Triage:
    """The study's priority from each finding's state (key -> present / absent / uncertain) under ``rules``."""
    labels = labels or {}
    reasons: list[TriageReason] = []
    for rule in rules:
        state = states.get(rule.finding)
        if state is not None and state is rule.when:
            label = labels.get(rule.finding) or rule.finding.replace("_", " ").capitalize()
            reasons.append(TriageReason(rule.finding, label, state, rule.priority))
    priority = max((r.priority for r in reasons), key=lambda p: p.rank, default=Priority.ROUTINE)
    return Triage(priority, tuple(reasons))


def finding_states(findings: Iterable[Finding]) -> dict[str, Presence]:
    return {finding.key: finding.presence for finding in findings}


def assess_record(record: ReasoningRecord, rules: Iterable[TriageRule]) -> Triage:
    """:func:`assess` of a record's checklist findings."""
    return assess(finding_states(record.findings), rules, {f.key: f.label for f in record.findings})


def asked_findings(book: StageBook) -> set[str]:
    """The finding keys whose presence the stage book's checklist asks about (an enabled presence question)."""
    asked: set[str] = set()
    for stage in book.stages:
        if not stage.enabled:
            continue
        for question in stage.questions:
            if question.records is Records.PRESENCE and question.for_each is ForEach.FINDING:
                asked |= {f.key for f in book.findings if question.groups is None or f.group in question.groups}
    return asked


def rule_problems(rules: Iterable[TriageRule], asked: Collection[str]) -> list[tuple[int, str]]:
    """(rule index, problem) for each rule naming a finding the checklist does not ask about (it could never
    fire), or repeating another rule."""
    problems: list[tuple[int, str]] = []
    seen: set[tuple[str, Presence]] = set()
    known = ", ".join(sorted(asked))
    for index, rule in enumerate(rules):
        if rule.finding not in asked:
            problems.append((index, f"{rule.finding!r} is not a finding the checklist asks about, so the rule could "
                                    f"never fire (asked: {known})"))
        if (rule.finding, rule.when) in seen:
            problems.append((index, f"a second rule for {rule.finding} {rule.when.value}"))
        seen.add((rule.finding, rule.when))
    return problems
