"""Which received instances go to reasoning: never a derived object or the node's own (:mod:`dicomnode.loop_guard`),
then configured modalities and body parts, image with pixel data."""
from __future__ import annotations

from dataclasses import dataclass

from dicomnode.config import StudySection
from dicomnode.loop_guard import loop_skip_reason


@dataclass(frozen=True)
class InstanceFacts:
    """The few attributes selection looks at (read from the header only)."""

    modality: str
    body_part: str
    has_pixel_data: bool
    sop_class_uid: str = ""
    written_by_node: bool = False  # one of this node's own result objects


def skip_reason(facts: InstanceFacts, rules: StudySection) -> str | None:
    """None when the instance is selected, else a short human-readable reason."""
    loop = loop_skip_reason(facts.sop_class_uid, facts.modality, facts.written_by_node)
    if loop is not None:
        return loop
    modality = facts.modality.strip().upper()
    if modality not in rules.modalities:
        return f"modality {modality or '(none)'} not in {','.join(rules.modalities)}"
    body_part = facts.body_part.strip().upper()
    if body_part not in rules.body_parts:
        allowed = ",".join(b or "(empty)" for b in rules.body_parts)
        return f"body part {body_part or '(empty)'} not in {allowed}"
    if not facts.has_pixel_data:
        return "no pixel data"
    return None


def study_skip_reason(reasons: dict[str, int]) -> str:
    """The study-level reason when no instance is selected: instance reasons with counts."""
    parts = [f"{reason} (x{count})" for reason, count in sorted(reasons.items())]
    return "no instance selected: " + "; ".join(parts) if parts else "no instance selected"
