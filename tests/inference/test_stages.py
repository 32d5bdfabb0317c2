"""The stage book: the shipped file is valid and complete, edits work, malformed files are refused with line+reason."""
from __future__ import annotations

from pathlib import Path

import pytest

from inference.record import QType
from inference.stages import (
    CANONICAL_STAGES,
    DEFAULT_STAGES_PATH,
    ForEach,
    Records,
    StageConfigError,
    load_stages,
    parse_stages,
)

FINDING_KEYS = [
    "enlarged_cardiomediastinum", "cardiomegaly", "lung_opacity", "lung_lesion", "edema", "consolidation",
    "pneumonia", "atelectasis", "pneumothorax", "pleural_effusion", "pleural_other", "fracture", "support_devices",
    "endotracheal_tube", "chest_tube", "central_venous_catheter", "nasogastric_tube", "cardiac_pacemaker",
]
TEXT = DEFAULT_STAGES_PATH.read_text(encoding="utf-8")


def _line(needle: str, text: str = TEXT) -> int:
    """The last line holding ``needle`` (for a duplicate, the second occurrence is the one refused)."""
    return max(i for i, line in enumerate(text.splitlines(), start=1) if needle in line)


def test_shipped_book_has_the_eight_stages_and_shared_keys() -> None:
    book = load_stages()
    assert [(s.number, s.key, s.title) for s in book.stages] == [
        (n, key, title) for n, (key, title) in CANONICAL_STAGES.items()]
    assert [f.key for f in book.findings] == FINDING_KEYS
    assert [a.key for a in book.anatomy] == ["heart", "right_lung", "left_lung"]
    presence = book.presence_questions
    assert len(presence) == 1 and presence[0].for_each is ForEach.FINDING and presence[0].qtype is QType.YES_NO
    s3 = book.stage(3)
    assert s3 is not None
    assert {(q.for_each, q.qtype) for q in s3.questions} >= {
        (ForEach.POSITIVE_FINDING, QType.DETECTION), (ForEach.ANATOMY, QType.DETECTION)}
    assert book.stage(4).when.min_positive_findings == 2
    assert book.stage(5).when.prior is True and book.stage(6).when.prior is True
    assert {q.records for q in book.stage(8).questions} == {Records.REPORT_FINDINGS, Records.REPORT_IMPRESSION}
    assert set(book.max_new_tokens) == set(QType)
    assert book.system_prompt.startswith("You are a helpful radiology assistant")


def test_hospital_edit_add_question_and_drop_stage(tmp_path: Path) -> None:
    text = TEXT.replace(
        "  - number: 7\n",
        "  - number: 7\n    enabled: false\n",
    )
    start, end = text.index("  - number: 4\n"), text.index("  - number: 5\n")
    text = text[:start] + text[end:]  # stage 4 deleted
    text = text.replace(
        "      - id: s2.notable\n",
        "      - id: s2.devices\n        text: Are there any medical devices, tubes, or foreign bodies visible on the"
        " chest X-ray?\n        qtype: open\n      - id: s2.notable\n",
    )
    path = tmp_path / "stages.yaml"
    path.write_text(text, encoding="utf-8")
    book = load_stages(path)
    assert [s.number for s in book.stages] == [1, 2, 3, 5, 6, 7, 8]
    assert book.stage(4) is None and book.stage(7).enabled is False
    assert [q.id for q in book.stage(2).questions] == ["s2.devices", "s2.notable", "s2.present"]


@pytest.mark.parametrize(
    ("old", "new", "anchor", "reason"),
    [
        ("qtype: detection\n        for_each: anatomy", "qtype: detectoin\n        for_each: anatomy",
         "qtype: detectoin", "Input should be 'open'"),
        ("options: [Mild, Moderate, Severe]", "options: [Mild]", "options: [Mild]", "at least two options"),
        ("{term} in the main study", "{trem} in the main study", "id: s2.present", "placeholder {trem}"),
        ("  - number: 4\n", "  - number: 4\n    colour: red\n", "colour: red", "Extra inputs"),
        ("id: s7.advice", "id: s6.trend", "id: s6.trend", "appears twice"),
        ("key: pneumothorax,", "key: pneumonia,", "label: Pneumothorax", "finding key 'pneumonia' appears twice"),
        ("  - number: 8\n", "  - number: 9\n", "number: 9", "less than or equal to 8"),
        ("    questions:\n      - id: s7.advice", "    questions: []\n    x:\n      - id: s7.advice",
         "questions: []", "at least 1 item"),
        ("max_new_tokens:\n  open: 160", "max_new_tokens:\n  open: -5", "open: -5", "not within"),
        ("stages:\n", "stages:\n  - [\n", "  - [", "YAML syntax"),
        ("records: report_impression", "records: presence", "records: presence", "needs qtype yes_no"),
    ],
)
def test_malformed_file_is_refused_with_line_and_reason(
    tmp_path: Path, old: str, new: str, anchor: str, reason: str
) -> None:
    assert old in TEXT
    text = TEXT.replace(old, new, 1)
    path = tmp_path / "stages.yaml"
    path.write_text(text, encoding="utf-8")
    with pytest.raises(StageConfigError) as info:
        load_stages(path)
    message = str(info.value)
    assert reason in message
    expected = _line(anchor, text)
    lines = {int(part.split(":")[1]) for part in message.splitlines()}
    assert any(abs(line - expected) <= 2 for line in lines), (message, expected)
    assert message.startswith(f"{path}:")


def test_unreadable_and_non_mapping_files(tmp_path: Path) -> None:
    with pytest.raises(StageConfigError, match="cannot read"):
        load_stages(tmp_path / "missing.yaml")
    with pytest.raises(StageConfigError, match="must be a mapping"):
        parse_stages("- just\n- a list\n")


def test_image_placeholder_not_allowed_in_question_text() -> None:
    text = TEXT.replace("text: Offer recommendations", "text: <image> Offer recommendations")
    with pytest.raises(StageConfigError, match=r":\d+: .*image_prompts"):
        parse_stages(text)
