"""Header hygiene: each defect a real modality sends is repaired, emptied or dropped on a copy, recorded without its
value, and the results built from such a source are dciodvfy-clean (except the inherited UIDs they must keep)."""
from __future__ import annotations

import copy
import warnings

import pytest
from pydicom.dataelem import RawDataElement
from pydicom.dataset import Dataset
from pydicom.tag import Tag

from dicomnode.demo.records import make_record
from dicomnode.demo.synthetic import make_study
from sr_writer import build_result_objects, validate
from sr_writer.hygiene import (
    UnrepairableHeader,
    clean_source,
    clean_sources,
    enumerated_values,
    invalid_reference_uids,
)
from tests.sr.conftest import content_items, small_spec


def _raw(ds: Dataset, tag: int, vr: str, value: bytes) -> None:
    ds._dict[Tag(tag)] = RawDataElement(Tag(tag), vr, len(value), value, 0, False, True)


def _code(**extra: object) -> Dataset:
    item = Dataset()
    item.CodeValue, item.CodingSchemeDesignator, item.CodeMeaning = "RPID1", "RADLEX", "XR chest"
    for keyword, value in extra.items():
        setattr(item, keyword, value)
    return item


@pytest.fixture
def source() -> Dataset:
    return make_study(small_spec())[0]


CASES = [
    # (name, how to spoil the source, keyword, action, value in the copy (None: absent))
    ("age", lambda ds: setattr(ds, "PatientAge", "75Y"), "PatientAge", "repaired", "075Y"),
    ("age_lower", lambda ds: setattr(ds, "PatientAge", "7 y"), "PatientAge", "repaired", "007Y"),
    ("age_words", lambda ds: setattr(ds, "PatientAge", "75 years"), "PatientAge", "dropped", None),
    ("study_id", lambda ds: setattr(ds, "StudyID", "S" * 17), "StudyID", "emptied", ""),
    ("accession", lambda ds: setattr(ds, "AccessionNumber", "A" * 20), "AccessionNumber", "emptied", ""),
    ("identity", lambda ds: setattr(ds, "PatientIdentityRemoved", "YES"), "PatientIdentityRemoved", "dropped", None),
    ("birth_date", lambda ds: setattr(ds, "PatientBirthDate", "19500231"), "PatientBirthDate", "emptied", ""),
    ("birth_date_dashes", lambda ds: setattr(ds, "PatientBirthDate", "1950-02-28"), "PatientBirthDate", "repaired",
     "19500228"),
    ("no_id", lambda ds: delattr(ds, "PatientID"), "PatientID", "added empty", ""),
    ("no_name", lambda ds: delattr(ds, "PatientName"), "PatientName", "added empty", ""),
    ("no_date", lambda ds: delattr(ds, "StudyDate"), "StudyDate", "added empty", ""),
    ("no_referrer", lambda ds: delattr(ds, "ReferringPhysicianName"), "ReferringPhysicianName", "added empty", ""),
    ("time_colons", lambda ds: setattr(ds, "StudyTime", "07:05:09.5"), "StudyTime", "repaired", "070509.5"),
    ("time_impossible", lambda ds: setattr(ds, "StudyTime", "256100"), "StudyTime", "emptied", ""),
    ("name_control", lambda ds: setattr(ds, "PatientName", "Doe^Jo\x07hn"), "PatientName", "repaired", "Doe^John"),
    ("name_too_long", lambda ds: setattr(ds, "PatientName", "D" * 65), "PatientName", "emptied", ""),
    ("name_components", lambda ds: setattr(ds, "PatientName", "a^b^c^d^e^f"), "PatientName", "emptied", ""),
    ("sex_lower", lambda ds: setattr(ds, "PatientSex", "m"), "PatientSex", "repaired", "M"),
    ("sex_word", lambda ds: setattr(ds, "PatientSex", "Männlich"), "PatientSex", "emptied", ""),
    ("weight", lambda ds: _raw(ds, 0x00101030, "DS", b"70kg"), "PatientWeight", "dropped", None),
    ("description_long", lambda ds: setattr(ds, "StudyDescription", "x" * 70), "StudyDescription", "dropped", None),
    ("id_two_values", lambda ds: setattr(ds, "PatientID", ["A", "B"]), "PatientID", "emptied", ""),
    # enumerated values (sr_writer/data/enumerated_values.yaml): spelled out -> repaired, unknown -> by Type
    ("sex_spelled_out", lambda ds: setattr(ds, "PatientSex", "MALE"), "PatientSex", "repaired", "M"),
    ("sex_female_lower", lambda ds: setattr(ds, "PatientSex", " female"), "PatientSex", "repaired", "F"),
    ("sex_unknown", lambda ds: setattr(ds, "PatientSex", "U"), "PatientSex", "emptied", ""),
    ("identity_y", lambda ds: (setattr(ds, "PatientIdentityRemoved", "Y"), setattr(ds, "DeidentificationMethod", "x")),
     "PatientIdentityRemoved", "repaired", "YES"),
    ("identity_maybe", lambda ds: setattr(ds, "PatientIdentityRemoved", "MAYBE"), "PatientIdentityRemoved", "dropped",
     None),
    ("laterality_word", lambda ds: setattr(ds, "Laterality", "LEFT"), "Laterality", "repaired", "L"),
    ("laterality_both", lambda ds: setattr(ds, "Laterality", "B"), "Laterality", "emptied", ""),
    ("smoking", lambda ds: setattr(ds, "SmokingStatus", "n"), "SmokingStatus", "repaired", "NO"),
    ("pregnancy", lambda ds: setattr(ds, "PregnancyStatus", 7), "PregnancyStatus", "dropped", None),
    ("neutered", lambda ds: setattr(ds, "PatientSexNeutered", "YES"), "PatientSexNeutered", "emptied", ""),
    ("code_flag", lambda ds: setattr(ds, "ProcedureCodeSequence", [_code(ContextGroupExtensionFlag="YES")]),
     "ProcedureCodeSequence", "dropped", None),
    # text: TAB and line breaks become spaces (the 2022 dciodvfy refuses a TAB in any text VR)
    ("description_tab", lambda ds: setattr(ds, "StudyDescription", "Chest\tPA"), "StudyDescription", "repaired",
     "Chest PA"),
    ("comments_tab", lambda ds: setattr(ds, "PatientComments", "one\ttwo\r\nthree"), "PatientComments", "repaired",
     "one two\r\nthree"),
    ("station_newline", lambda ds: setattr(ds, "StationName", "ROOM\n1"), "StationName", "repaired", "ROOM 1"),
]


@pytest.mark.parametrize("name, spoil, keyword, action, value", CASES, ids=[c[0] for c in CASES])
def test_each_defect_is_handled_on_a_copy(source: Dataset, name, spoil, keyword, action, value) -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        spoil(source)
        before = copy.deepcopy(source)
        cleaned, repairs = clean_source(source)
    assert source == before, "the source instance is never modified"
    done = [r for r in repairs if r.keyword == keyword]
    assert [r.action for r in done] == [action], repairs
    if value is None:
        assert keyword not in cleaned
    else:
        assert str(cleaned[keyword].value if keyword != "PatientName" else cleaned.PatientName) == value
    for repair in repairs:  # what goes to logs and provenance: keyword, action, reason, never the value
        text = str(repair)
        assert text.startswith(f"{repair.keyword}: {repair.action} (")
        for secret in ("75Y", "19500231", "70kg", "Doe^", "Männlich", "S" * 17):
            assert secret not in text


def test_a_clean_source_needs_nothing(source: Dataset) -> None:
    cleaned, repairs = clean_source(source)
    assert repairs == []
    assert cleaned == source


def test_utf8_without_character_set_is_re_decoded(source: Dataset) -> None:
    del source.SpecificCharacterSet
    _raw(source, 0x00081030, "LO", "Thorax Übersicht ".encode())  # StudyDescription, UTF-8 bytes, no charset
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        cleaned, repairs = clean_source(source)
    assert cleaned.StudyDescription == "Thorax Übersicht"
    assert [r.action for r in repairs if r.keyword == "StudyDescription"] == ["repaired"]


def test_invalid_reference_uids_are_kept_and_listed(source: Dataset) -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        source.StudyInstanceUID = "1.2.840.0010.5.01"
        source.SOPInstanceUID = "1.2." + "3" * 70
        cleaned, repairs = clean_source(source)
    assert cleaned.StudyInstanceUID == "1.2.840.0010.5.01"  # the study the PACS has
    assert {r.keyword for r in repairs if r.action == "kept"} == {"StudyInstanceUID", "SOPInstanceUID"}
    accepted = invalid_reference_uids([cleaned])
    assert {"1.2.840.0010.5.01", "1.2." + "3" * 70} <= accepted
    assert str(cleaned.SOPClassUID) not in accepted  # a well-formed SOP class UID is ours too: never accepted


def test_an_invalid_frame_of_reference_uid_is_kept_and_listed(source: Dataset) -> None:
    """The SR's image library names the source's Frame of Reference UID: handled like the study UID."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        source.FrameOfReferenceUID = "1.2.840.0010.7.01"
        cleaned, repairs = clean_source(source)
    assert cleaned.FrameOfReferenceUID == "1.2.840.0010.7.01"
    assert [r.action for r in repairs if r.keyword == "FrameOfReferenceUID"] == ["kept"]
    assert "1.2.840.0010.7.01" in invalid_reference_uids([cleaned])


def test_every_enumerated_value_in_the_table_is_accepted_as_it_is(source: Dataset) -> None:
    for keyword, (values, _) in enumerated_values().items():
        for value in values:
            ds = copy.deepcopy(source)
            if keyword == "ContextGroupExtensionFlag":
                ds.ProcedureCodeSequence = [_code(ContextGroupExtensionFlag=value)]
            else:
                setattr(ds, keyword, int(value) if keyword == "PregnancyStatus" else value)
            if keyword == "PatientIdentityRemoved":
                ds.DeidentificationMethod = "tool"
            assert clean_source(ds)[1] == [], (keyword, value)


def test_an_invalid_uid_in_a_type_3_sequence_drops_it(source: Dataset) -> None:
    item = Dataset()
    item.ReferencedSOPClassUID = "1.2.840.10008.3.1.2.3.1"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        item.ReferencedSOPInstanceUID = "1.2.03"
    source.ReferencedStudySequence = [item]
    cleaned, repairs = clean_source(source)
    assert "ReferencedStudySequence" not in cleaned and "ReferencedStudySequence" in source
    assert [r.action for r in repairs if r.keyword == "ReferencedStudySequence"] == ["dropped"]


def test_no_study_uid_is_unrepairable_and_named(source: Dataset) -> None:
    del source.StudyInstanceUID
    with pytest.raises(UnrepairableHeader, match="StudyInstanceUID"):
        clean_source(source)


def test_repairs_of_a_study_are_listed_once(source: Dataset) -> None:
    other = copy.deepcopy(source)
    for ds in (source, other):
        ds.PatientAge = "75Y"
    (current, prior), repairs = clean_sources([source, other], [])
    assert len(current) == 2 and prior == [] and [str(r) for r in repairs].count(str(repairs[0])) == 1


def test_dirty_study_gives_valid_results_and_keeps_its_uid() -> None:
    current = make_study(small_spec())
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for ds in current:
            ds.StudyInstanceUID = "1.2.826.0.1.3680043.8.498.0012.7"
            ds.PatientAge, ds.StudyID, ds.PatientIdentityRemoved = "75Y", "X" * 20, "YES"
            ds.PatientBirthDate, ds.BodyPartExamined = "20230229", "THORAX"
            ds.PatientSex, ds.Laterality, ds.FrameOfReferenceUID = "MALE", "LEFT", "1.2.840.0010.7.01"
            for keyword in ("PatientID", "PatientName", "StudyDate"):
                delattr(ds, keyword)
        originals = copy.deepcopy(current)
        record = make_record(current, positive=("pneumothorax",))
        result = build_result_objects(record, current)  # validates every object: refuses on errors
    assert current == originals
    assert len(result.pages) >= 1, "a THORAX study gets its pages (issue 17)"
    for ds in result.datasets:
        assert ds.StudyInstanceUID == "1.2.826.0.1.3680043.8.498.0012.7"
        assert not ds.PatientID and not str(ds.PatientName or "") and not ds.StudyDate  # present, empty (type 2)
        assert all(k in ds for k in ("PatientID", "PatientName", "StudyDate"))
        assert ds.get("PatientAge") in (None, "075Y") and "PatientIdentityRemoved" not in ds
        assert ds.PatientSex == "M"
        report = validate(ds)
        assert report.errors and all("0012" in e or "0010.7" in e or "invalid data values" in e for e in report.errors)
    assert result.pages[0].Laterality == "L"
    library_uids = [str(i.UID) for i in content_items(result.sr.ContentSequence) if i.ValueType == "UIDREF"]
    assert "1.2.840.0010.7.01" in library_uids  # the image library's Frame of Reference UID, as the PACS has it
    accepted = [e for r in result.reports.values() for e in r.accepted]
    assert accepted and all("1.2.826.0.1.3680043.8.498.0012.7" in e or "1.2.840.0010.7.01" in e
                            or "invalid data values" in e for e in accepted)
    assert any("1.2.840.0010.7.01" in e for e in accepted)
    assert "PatientAge: repaired (age zero-padded to nnnX)" in result.repairs


def test_a_source_without_modality_still_gets_its_boxes() -> None:
    """Modality is Type 1, yet absent in some real headers: highdicom's from_source_image read it and raised
    ``AttributeError: ... no attribute 'Modality'`` for every box."""
    current = make_study(small_spec())
    for ds in current:
        del ds.Modality
    record = make_record(current, positive=("pneumothorax",))
    result = build_result_objects(record, current)
    regions = [i for i in content_items(result.sr.ContentSequence) if i.ValueType == "SCOORD"]
    assert len(regions) == 1 + 3  # the finding's box, and heart, right and left lung
    for region in regions:
        assert region.ContentSequence[0].ReferencedSOPSequence[0].ReferencedSOPInstanceUID == current[0].SOPInstanceUID


def test_a_retired_sop_class_is_unrepairable_and_named(source: Dataset) -> None:
    """highdicom copies patient and study by the source's IOD; a retired class has none (pydicom's color-pl.dcm,
    Ultrasound Image Storage 1.2.840.10008.5.1.4.1.1.6, raised a bare KeyError in the SR before)."""
    source.SOPClassUID = "1.2.840.10008.5.1.4.1.1.6"
    with pytest.raises(UnrepairableHeader, match=r"SOPClassUID 1\.2\.840\.10008\.5\.1\.4\.1\.1\.6 .*retired"):
        clean_source(source)


def test_hash_uids_of_a_deidentified_study_are_kept_and_accepted() -> None:
    """De-identification tools that hash UIDs (pydicom's bad_sequence.dcm): dciodvfy reports them as 'Illegal root
    for UID - "..."' (quoted, not <...>); the results keep and reference them all the same."""
    current = make_study(small_spec())
    study_hash, instance_hash = "05fa52f0e599f17b8186ff18fcdf2b55", "dccc9599087131742838cc1162a630fe"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for ds in current:
            ds.StudyInstanceUID = study_hash
        current[0].SOPInstanceUID = instance_hash
        result = build_result_objects(make_record(current, positive=("pneumothorax",)), current)
    accepted = [e for r in result.reports.values() for e in r.accepted]
    assert any(f'"{instance_hash}"' in e for e in accepted) and any(f'"{study_hash}"' in e for e in accepted)
    assert all(ds.StudyInstanceUID == study_hash for ds in result.datasets)


def test_a_well_formed_uid_under_an_arc_that_does_not_exist_is_accepted() -> None:
    """pydicom's rtdose*.dcm: instance UID 1.9.999... is well formed, but dciodvfy reports 'Illegal root for UID
    uses non-existent ISO arc' on the pages' Source Image Sequence, which must name it."""
    current = make_study(small_spec())
    current[0].SOPInstanceUID = "1.9.999.999.99.9.9999.9999.20030818153516"
    result = build_result_objects(make_record(current, positive=("pneumothorax",)), current)  # validated
    accepted = [e for r in result.reports.values() for e in r.accepted]
    assert any("1.9.999.999.99.9.9999.9999.20030818153516" in e for e in accepted)
    for page in result.pages:
        assert current[0].SOPInstanceUID in {str(i.ReferencedSOPInstanceUID) for i in page.SourceImageSequence}
