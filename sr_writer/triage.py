"""How a raised triage priority (``inference.triage``) shows in the DICOM results: a coded Priority item in the
SR's Qualitative Evaluations and an AI-triage comment, the label in front of the SR's series description, and the
banner on the reasoning pages. A routine study shows none of them (triage never says "routine" over a priority an
order already has)."""
from __future__ import annotations

from highdicom.sr import CodeContentItem, ContainerContentItem, RelationshipTypeValues, TextContentItem

from inference.record import UNVERIFIED_STATEMENT
from inference.triage import Priority, Triage
from sr_writer.codes import CodeTable

LABELS = {Priority.URGENT: "URGENT", Priority.STAT: "STAT"}


def label(triage: Triage) -> str:
    """``STAT`` / ``URGENT``; "" when routine."""
    return LABELS.get(triage.priority, "")


def statement(triage: Triage) -> str:
    """``AI triage: STAT (Pneumothorax present). AI-generated, not verified by a physician.``; "" when routine."""
    if not triage.raised:
        return ""
    return f"AI triage: {label(triage)} ({triage.because()}). {UNVERIFIED_STATEMENT}"


def series_description(base: str, triage: Triage) -> str:
    """``base`` with the priority label in front when it was raised."""
    return f"{label(triage)} {base}" if triage.raised else base


def add_priority(evaluations: ContainerContentItem, triage: Triage, table: CodeTable) -> ContainerContentItem:
    """The Qualitative Evaluations container with ``Priority = Urgent | Emergency`` first, when raised."""
    if triage.raised:
        evaluations.ContentSequence.insert(0, CodeContentItem(
            name=table.triage["concept"], value=table.triage[triage.priority.value],
            relationship_type=RelationshipTypeValues.CONTAINS))
    return evaluations


def comments(triage: Triage, table: CodeTable) -> list[TextContentItem]:
    """The AI-triage comment of the SR root (why the priority was raised), when raised."""
    if not triage.raised:
        return []
    return [TextContentItem(name=table.private["triage_reason"], value=statement(triage),
                            relationship_type=RelationshipTypeValues.CONTAINS)]
