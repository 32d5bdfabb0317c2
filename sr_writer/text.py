"""Plain-text renderings of record parts, shared by the SR and the reasoning page."""
from __future__ import annotations

import re

from inference.record import Box, Finding, Presence, QuestionResult, ReasoningRecord, StageResult, StageStatus


def box_text(box: Box) -> str:
    x1, y1, x2, y2 = box.pixels
    return f"{box.target} on image {box.image_index + 1}: ({x1:.0f}, {y1:.0f})-({x2:.0f}, {y2:.0f}) px"


def parsed_text(question: QuestionResult) -> str | None:
    """The typed value of an answer as one line, or None when there is nothing beyond the raw text."""
    parsed = question.parsed
    if not parsed.ok:
        return None
    parts: list[str] = []
    if parsed.yes_no is not None:
        parts.append("yes" if parsed.yes_no else "no")
    if parsed.choices:
        parts.append("choice: " + "; ".join(parsed.choices))
    if parsed.boxes:
        parts.append("boxes: " + "; ".join(box_text(b) for b in parsed.boxes))
    if parts and question.answer_probability is not None:
        parts.append(f"probability {percent(question.answer_probability)}")
    return ", ".join(parts) or None


def findings_summary(record: ReasoningRecord) -> str:
    """One line under the findings table; "No finding" (derived) only when every checklist finding is absent."""
    counts = {p: sum(1 for f in record.findings if f.presence is p) for p in Presence}
    if counts[Presence.PRESENT]:
        summary = f"Positive: {counts[Presence.PRESENT]} of {len(record.findings)}"
        if counts[Presence.UNCERTAIN]:
            summary += f", {counts[Presence.UNCERTAIN]} uncertain"
        return summary
    if counts[Presence.UNCERTAIN]:
        return f"No finding: not established ({counts[Presence.UNCERTAIN]} uncertain)"
    if record.findings:
        return "No finding: yes (every checklist finding absent)"
    return "No checklist findings in the record"


def stage_status_text(stage: StageResult) -> str:
    text = stage.status.value.replace("_", " ")
    if stage.reason:
        text += f" ({stage.reason})"
    return text


def completion_problems(record: ReasoningRecord) -> list[str]:
    """Why a record is incomplete: failed stages and unparsed answers. Empty means complete."""
    problems = [f"stage {s.number} failed: {s.reason or 'no reason given'}" for s in record.stages
                if s.status is StageStatus.FAILED]
    problems += [f"answer to {q.id} not parsed: {q.parsed.error or 'unknown'}" for q in record.unparsed_questions]
    return problems


# C0 controls other than TAB, LF, FF, CR; DEL; C1 controls. DICOM text VRs allow only CR, LF, FF, TAB (and ESC for
# ISO 2022 code extensions, which UTF-8 (ISO_IR 192) never needs).
_CONTROL = re.compile("[\x00-\x08\x0b\x0e-\x1f\x7f-\x9f]")
_REPLACEMENT = "\ufffd"


def dicom_text(value: str) -> str:
    """Model text made safe for DICOM text VRs: control characters dropped, undecodable bytes (U+FFFD) as '?'.

    The record keeps the raw answer; the result objects carry this clean one.
    """
    return _CONTROL.sub("", value).replace(_REPLACEMENT, "?")


def percent(value: float) -> str:
    """A probability as a rounded percentage ("73%"; "<1%" and ">99%" rather than a misleading 0 or 100)."""
    if 0.0 < value < 0.005:
        return "<1%"
    if 0.995 <= value < 1.0:
        return ">99%"
    return f"{100 * value:.0f}%"


def score_text(finding: Finding) -> str:
    """A finding's probability of presence and the threshold that decided it, for a table cell: "73%",
    "34% >= 30%", "12% < 30%"; "" when the record has no probability."""
    if finding.probability is None:
        return ""
    if finding.threshold is None:
        return percent(finding.probability)
    relation = ">=" if finding.probability >= finding.threshold else "<"
    return f"{percent(finding.probability)} {relation} {threshold_percent(finding.threshold)}"


def threshold_percent(threshold: float) -> str:
    """An operating point as a percentage with the digits it was set with ("30%", "41.23%")."""
    return f"{100 * threshold:.4g}%"


def operating_points_text(record: ReasoningRecord) -> str:
    """Which operating points decided presence, in one sentence (the SR's comment, the page's note)."""
    thresholded = [f for f in record.findings if f.threshold is not None]
    scored = any(f.probability is not None for f in record.findings)
    basis = ("Probability: the model's probability that the finding is present. " if scored
             else "No probabilities (the model gave none). ")
    if not thresholded:
        return basis + "Presence: the model's own answer for every finding."
    points = "; ".join(f"{f.label} at >= {threshold_percent(f.threshold or 0.0)}" for f in thresholded)
    rest = len(record.findings) - len(thresholded)
    return (basis + f"Presence by operating point: {points}"
            + (f"; the other {rest} as the model answered." if rest else "."))
