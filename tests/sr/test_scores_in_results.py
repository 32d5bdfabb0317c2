"""Probabilities of presence and operating points in the result objects: a NUM (DCM 111012 Certainty of Finding,
UCUM %) under each finding's qualitative evaluation and the threshold that decided it, read back with highdicom;
the first page's table beside the badges; both say what decided presence."""
from __future__ import annotations

from pathlib import Path

import highdicom as hd
import numpy as np
import pytest
from pydicom.dataset import Dataset

from dicomnode.demo.records import make_record
from sr_writer import OutputOptions, build_result_objects
from sr_writer.codes import load_table
from sr_writer.page import PageRenderer
from sr_writer.text import operating_points_text, parsed_text, percent, score_text

QUALITATIVE = "C0034375"
CERTAINTY = ("111012", "DCM")


def _qualitative(sr: Dataset) -> Dataset:
    return next(item for item in sr.ContentSequence
                if item.ValueType == "CONTAINER" and item.ConceptNameCodeSequence[0].CodeValue == QUALITATIVE)


def _numbers(item: Dataset) -> dict[str, tuple[float, str, str]]:
    """A qualitative item's NUM children read by highdicom: concept meaning -> (value, unit, relationship)."""
    out = {}
    for child in item.get("ContentSequence", []):
        if child.ValueType == "NUM":
            number = hd.sr.NumContentItem.from_dataset(child)
            out[number.name.meaning] = (float(number.value), number.unit.value, str(number.relationship_type.value))
    return out


def test_the_sr_carries_each_probability_and_the_threshold_that_decided(study: list[Dataset],
                                                                        tmp_path: Path) -> None:
    record = make_record(study, positive=("pneumothorax",), thresholds={"atelectasis": 0.05})
    result = build_result_objects(record, study)
    path = tmp_path / "sr.dcm"
    path.write_bytes(result.encoded[str(result.sr.SOPInstanceUID)])
    sr = hd.sr.srread(path)  # highdicom reads it back
    items = [i for i in _qualitative(sr).ContentSequence if i.ValueType == "CODE"]
    by_code = {i.ConceptNameCodeSequence[0].CodeMeaning: i for i in items}
    table = load_table()
    for finding in record.findings:
        code = table.finding(finding.key).code
        assert code is not None
        numbers = _numbers(by_code[code.meaning])
        value, unit, relationship = numbers["Certainty of Finding"]
        assert (unit, relationship) == ("%", "HAS PROPERTIES")
        assert value == pytest.approx(100 * (finding.probability or 0.0), abs=1e-3)
        if finding.threshold is None:
            assert "Presence threshold" not in numbers
    atelectasis = _numbers(by_code["Atelectasis"])
    assert atelectasis["Presence threshold"] == (5.0, "%", "HAS PROPERTIES")
    assert by_code["Atelectasis"].ConceptCodeSequence[0].CodeMeaning == "Present"  # 8% >= 5%: the threshold made it
    comments = [i.TextValue for i in _qualitative(sr).ContentSequence if i.ValueType == "TEXT"]
    assert comments == [operating_points_text(record)] and "Atelectasis at >= 5%" in comments[0]


def test_without_probabilities_the_sr_has_no_numbers_and_says_why(study: list[Dataset]) -> None:
    record = make_record(study, positive=("pneumothorax",), probabilities=False, thresholds={"pneumothorax": 0.9})
    sr = build_result_objects(record, study).sr
    container = _qualitative(sr)
    assert not any(_numbers(i) for i in container.ContentSequence)
    assert record.findings[8].threshold is None  # a threshold with nothing to compare: the answer decided
    assert container.ContentSequence[-1].TextValue == ("No probabilities (the model gave none). Presence: the "
                                                       "model's own answer for every finding.")


def test_score_texts() -> None:
    assert [percent(v) for v in (0.0, 0.004, 0.3, 0.996, 1.0)] == ["0%", "<1%", "30%", ">99%", "100%"]
    from inference.record import Finding, Presence

    plain = Finding(key="edema", label="Pulmonary edema", presence=Presence.PRESENT, question_id="q",
                    probability=0.734)
    assert score_text(plain) == "73%"
    assert score_text(plain.model_copy(update={"threshold": 0.4123})) == "73% >= 41.23%"
    assert score_text(plain.model_copy(update={"threshold": 0.8, "presence": Presence.ABSENT})) == "73% < 80%"
    assert score_text(plain.model_copy(update={"probability": None})) == ""


def test_the_parsed_line_gives_the_answers_probability(study: list[Dataset]) -> None:
    record = make_record(study, positive=("pneumothorax",))
    question = next(q for q in record.stage(2).questions if q.finding == "pneumothorax")
    assert parsed_text(question) == f"yes, probability {percent(question.answer_probability or 0.0)}"


def _first_row_score_ink(record, study: list[Dataset]) -> int:
    """Pixels of the score text's colour (MUTED, exactly) in the first finding's row, left of its badge."""
    renderer = PageRenderer(record, study, (), OutputOptions())
    plan = renderer.layout()
    page = np.asarray(renderer.render(only={1})[0][0]).astype(int)
    top = plan.header_bottom + renderer.faces.heading.line_height + 6
    status_x = plan.table_left + plan.table_width - 190
    row = page[top:top + renderer.faces.body.line_height, status_x - 220:status_x]
    return int(np.all(row == 90, axis=-1).sum())


def test_the_page_shows_scores_beside_the_badges_and_the_threshold(study: list[Dataset]) -> None:
    """The first finding's row: no score without probabilities, "3%" with, "3% < 50%" with a threshold."""
    none = _first_row_score_ink(make_record(study, probabilities=False), study)
    plain = _first_row_score_ink(make_record(study), study)
    tuned = _first_row_score_ink(make_record(study, thresholds={"enlarged_cardiomediastinum": 0.5}), study)
    assert none < 5 < 20 < plain < tuned
