"""A raised triage priority in the DICOM results (sr_writer/triage.py): a coded Priority item in the SR's
Qualitative Evaluations (a code from pydicom's dictionary, not invented), an AI-triage comment, the label in front
of the series description, the banner on the first reasoning page; PixelMed still finds no error. A routine study,
or an uncertain answer under a rule for present, shows none of it."""
from __future__ import annotations

import numpy as np
import pydicom
import pytest
from pydicom.sr.codedict import codes

from dicomnode.demo.records import make_record
from dicomnode.demo.synthetic import make_study
from inference.triage import DEFAULT_RULES, Priority, TriageRule
from sr_writer import OutputOptions, build_result_objects
from sr_writer.page import TRIAGE_BG, render_some_pages
from tests.sr.conftest import small_spec
from tests.sr.test_validators import pixelmed_errors

RULES = (*DEFAULT_RULES, TriageRule("pleural_effusion", Priority.URGENT))


@pytest.fixture(scope="module")
def study():
    return make_study(small_spec())


def _qualitative(sr: pydicom.Dataset) -> list[pydicom.Dataset]:
    [container] = [item for item in sr.ContentSequence if item.ValueType == "CONTAINER"
                   and item.ConceptNameCodeSequence[0].CodeValue == "C0034375"]
    return list(container.ContentSequence)


def _texts(sr: pydicom.Dataset, code: str) -> list[str]:
    return [item.TextValue for item in sr.ContentSequence
            if item.ValueType == "TEXT" and item.ConceptNameCodeSequence[0].CodeValue == code]


def test_a_stat_study_is_coded_named_and_still_valid(study, tmp_path) -> None:
    record = make_record(study, positive=("pneumothorax", "pleural_effusion"))
    result = build_result_objects(record, study, options=OutputOptions(triage_rules=RULES))
    sr = result.sr
    first = _qualitative(sr)[0]
    name, value = first.ConceptNameCodeSequence[0], first.ConceptCodeSequence[0]
    assert (name.CodeValue, name.CodingSchemeDesignator) == (codes.SCT.Priority.value, "SCT")
    assert (value.CodeValue, value.CodeMeaning) == (codes.SCT.Emergency.value, "Emergency")
    assert _texts(sr, "TRIAGE") == ["AI triage: STAT (Pneumothorax present, Pleural effusion present). "
                                    "AI-generated, not verified by a physician."]
    assert sr.SeriesDescription == "DEMO STAT AI CXR reasoning report (unverified)"
    path = tmp_path / "sr.dcm"
    path.write_bytes(result.encoded[str(sr.SOPInstanceUID)])
    errors, _ = pixelmed_errors(path)
    assert errors == []
    assert result.reports[str(sr.SOPInstanceUID)].errors == []  # dciodvfy


def test_urgent_uses_the_urgent_code(study) -> None:
    record = make_record(study, positive=("pleural_effusion",), demo=False)
    sr = build_result_objects(record, study, options=OutputOptions(triage_rules=RULES, validate=False)).sr
    value = _qualitative(sr)[0].ConceptCodeSequence[0]
    assert value.CodeValue == codes.SCT.UrgentProcedure.value
    assert sr.SeriesDescription == "URGENT AI CXR reasoning report (unverified)"


@pytest.mark.parametrize("uncertain", [(), ("pneumothorax",)])
def test_routine_and_uncertain_studies_show_no_priority(study, uncertain) -> None:
    record = make_record(study, positive=("edema",), uncertain=uncertain)
    sr = build_result_objects(record, study, options=OutputOptions(triage_rules=DEFAULT_RULES, validate=False)).sr
    assert codes.SCT.Priority.value not in {i.ConceptNameCodeSequence[0].CodeValue for i in _qualitative(sr)}
    assert _texts(sr, "TRIAGE") == []
    assert sr.SeriesDescription == "DEMO AI CXR reasoning report (unverified)"


def _banner_pixels(page) -> int:
    header = np.asarray(page)[:400]
    return int(np.all(header == np.array(TRIAGE_BG, dtype=np.uint8), axis=-1).sum())


def test_the_first_page_carries_the_banner(study) -> None:
    record = make_record(study, positive=("pneumothorax",))
    [raised], _ = render_some_pages(record, study, [], OutputOptions(triage_rules=DEFAULT_RULES), only=[1])
    [routine], _ = render_some_pages(record, study, [], OutputOptions(), only=[1])
    assert _banner_pixels(raised) > 20_000 and _banner_pixels(routine) == 0
