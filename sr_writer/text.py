"""Plain-text renderings of record parts, shared by the SR and the reasoning page."""
from __future__ import annotations

import re

from pydicom.dataset import Dataset
from pydicom.multival import MultiValue

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


# What the strictest reading of PS3.5 (6.1.3, 6.2) lets a text value hold: ST, LT and UT the graphic characters and
# CR, LF, FF (ESC only for ISO 2022 code extensions, which UTF-8, ISO_IR 192, never needs); the one-line VRs no
# control character at all, and no backslash (it separates values). The 2022 dciodvfy (Debian dicom3tools) refuses a
# TAB in UT, where the 2026 build accepts it. Characters that separate words (TAB, VT, NEL, the Unicode line and
# paragraph separators; CR, LF, FF in a one-line VR) become spaces; other control characters are dropped, since a
# space would split the word they sit in; U+FFFD (an undecodable byte) and lone surrogates become '?'.
_SPACE_LIKE = re.compile("[\t\x0b\x85\u2028\u2029]")
_SPACE_LIKE_ONE_LINE = re.compile("[\t-\r\x85\u2028\u2029]")
_CONTROL = re.compile("[\x00-\x08\x0e-\x1f\x7f-\x84\x86-\x9f]")
_UNENCODABLE = re.compile("[\ufffd\ud800-\udfff]")
MULTILINE_VRS = frozenset({"ST", "LT", "UT"})
ONE_LINE_VRS = frozenset({"SH", "LO", "PN", "UC"})


def dicom_text(value: str) -> str:
    """Model text made safe for DICOM's multi-line text VRs (ST, LT, UT; what an SR TEXT item holds) and for the
    page: line breaks kept, TAB and the other separators as spaces, other control characters dropped, undecodable
    bytes as '?'. The record keeps the raw answer; the result objects carry this clean one."""
    return _UNENCODABLE.sub("?", _CONTROL.sub("", _SPACE_LIKE.sub(" ", value)))


def dicom_line(value: str) -> str:
    """``dicom_text`` for the one-line VRs (SH, LO, PN, UC): line breaks as spaces too, backslash as '/'."""
    return _UNENCODABLE.sub("?", _CONTROL.sub("", _SPACE_LIKE_ONE_LINE.sub(" ", value))).replace("\\", "/")


def sweep_text(ds: Dataset) -> list[str]:
    """Every text value of ``ds`` (sequences included) made to pass ``dicom_text`` / ``dicom_line``, in place.

    The last step before a result object is encoded: whatever a value came from (model text, a configured name, a
    code meaning, a copied source attribute), the object carries no character the strictest validator refuses.
    Returns the keywords (or tags) of the elements changed, for tests and logs; never their values."""
    changed: list[str] = []
    for element in ds.iterall():
        vr = element.VR
        if vr not in MULTILINE_VRS and vr not in ONE_LINE_VRS or element.value in (None, ""):
            continue
        clean = dicom_text if vr in MULTILINE_VRS else dicom_line
        values = element.value if isinstance(element.value, MultiValue) else [element.value]
        texts = [str(v) for v in values]
        cleaned = [clean(t) for t in texts]
        if cleaned != texts:
            element.value = cleaned if isinstance(element.value, MultiValue) else cleaned[0]
            changed.append(element.keyword or str(element.tag))
    return changed


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
