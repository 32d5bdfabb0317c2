"""SR and SC result objects: dciodvfy-clean, and read back with highdicom the content is where it should be."""
from __future__ import annotations

import copy
import pickle
from pathlib import Path

import highdicom as hd
import pydicom
import pytest
from pydicom.dataset import Dataset
from pydicom.sr.codedict import codes

from dicomnode.demo.records import FINDING_LABELS, make_provenance, make_record
from dicomnode.demo.synthetic import make_study, prior_spec
from inference.record import DEMO_STATEMENT, UNVERIFIED_STATEMENT, Presence, ReasoningRecord, StageStatus
from sr_writer import ExportRefused, OutputOptions, ResultObject, build_result_objects, validate
from sr_writer.codes import load_table
from sr_writer.provenance import device_uid
from sr_writer.tree_bytes import tree_part10_bytes
from sr_writer.validate import part10_bytes
from tests.sr.conftest import content_items, small_spec

MANY = ("pneumothorax", "consolidation", "pleural_effusion", "cardiac_pacemaker", "lung_opacity")

CASES = {
    "none": dict(positive=()),
    "one": dict(positive=("pneumothorax",)),
    "many_prior": dict(positive=MANY, uncertain=("edema",), prior=True),
    "unparsed": dict(positive=("cardiomegaly", "edema"), unparsed=True),
    "chinese": dict(positive=("atelectasis",), language="zh", prior=True),
    "greek_failed": dict(positive=("pneumonia",), language="el", failed_stage=6),
}


def _save_and_read(ds: Dataset, path: Path) -> Dataset:
    ds.save_as(path, enforce_file_format=True)
    return pydicom.dcmread(path)


def _name(item: Dataset) -> tuple[str, str]:
    code = item.ConceptNameCodeSequence[0]
    return str(code.CodingSchemeDesignator), str(code.CodeValue)


@pytest.fixture(scope="module", params=sorted(CASES))
def case(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory):
    kw = dict(CASES[request.param])
    with_prior = kw.pop("prior", False)
    name = {"chinese": "山田^太郎", "greek_failed": "Иванов^Иван"}.get(request.param, "Demo^Patient")
    spec = small_spec(patient_name=name)
    current = make_study(spec)
    prior = make_study(prior_spec(spec)) if with_prior else []
    record = make_record(current, prior, **kw)
    result = build_result_objects(record, current, prior)
    out = tmp_path_factory.mktemp(request.param)
    sr = _save_and_read(result.sr, out / "sr.dcm")
    return request.param, record, current, prior, result, sr, out


def test_every_object_is_dciodvfy_clean(case) -> None:
    _, _, _, _, result, _, _ = case
    assert result.reports, "objects were validated"
    for ds in result.datasets:
        report = validate(ds)
        assert report.errors == [], report.output
        assert report.unexpected_warnings == [], report.warnings


def test_sr_bytes_are_what_pydicom_writes(case) -> None:
    _, _, _, _, result, _, _ = case
    assert result.encoded[str(result.sr.SOPInstanceUID)] == part10_bytes(result.sr)
    for page in result.pages:  # pages (RLE) are written by pydicom itself
        assert result.encoded[str(page.SOPInstanceUID)] == part10_bytes(page)


def test_tree_writer_leaves_what_it_does_not_cover_to_pydicom(study: list[Dataset]) -> None:
    sr = copy.deepcopy(build_result_objects(make_record(study, positive=("edema",)), study).sr)
    sr.ContentSequence[0].SpecificCharacterSet = "ISO_IR 100"  # a nested character set
    assert tree_part10_bytes(sr) == part10_bytes(sr)
    sr.SpecificCharacterSet = "ISO_IR 100"
    del sr.ContentSequence[0].SpecificCharacterSet
    assert tree_part10_bytes(sr) == part10_bytes(sr)
    long_text = copy.deepcopy(sr)
    long_text.SpecificCharacterSet = "ISO_IR 192"
    with pytest.warns(UserWarning, match="exceeds"):  # an invalid LT longer than a 2-byte length: pydicom makes it UN
        long_text.ContentSequence[0].add_new(0x00204000, "LT", "é" * 70_000)
        assert tree_part10_bytes(long_text) == part10_bytes(long_text)


def test_sr_header_same_patient_and_study_new_series(case) -> None:
    name, record, current, prior, result, sr, _ = case
    src = current[0]
    assert sr.SOPClassUID == "1.2.840.10008.5.1.4.1.1.88.34"  # Comprehensive 3D SR
    assert sr.StudyInstanceUID == src.StudyInstanceUID
    assert sr.PatientID == src.PatientID and str(sr.PatientName) == str(src.PatientName)
    assert sr.SeriesInstanceUID not in {ds.SeriesInstanceUID for ds in current}
    assert sr.SeriesNumber == OutputOptions().sr_series_number
    assert sr.SpecificCharacterSet == "ISO_IR 192"
    assert sr.VerificationFlag == "UNVERIFIED"
    assert sr.PreliminaryFlag == "PRELIMINARY"
    incomplete = bool(record.unparsed_questions) or any(s.status is StageStatus.FAILED for s in record.stages)
    assert sr.CompletionFlag == ("PARTIAL" if incomplete else "COMPLETE")
    assert sr.SeriesDescription.startswith("DEMO ")
    # title DCM 126000 for demo output too (viewers show TID 1500 measurements only under it); DEMO is said in the
    # series description (above) and a root comment (test_sr_stage_containers)
    assert sr.ContentSequence and sr.ConceptNameCodeSequence[0].CodeValue == "126000"
    assert sr.SeriesDate and sr.SeriesTime and (sr.SeriesDate, sr.SeriesTime) == (sr.ContentDate, sr.ContentTime)
    evidence = {i.ReferencedSOPSequence[0].ReferencedSOPInstanceUID
                for s in sr.CurrentRequestedProcedureEvidenceSequence for i in s.ReferencedSeriesSequence}
    assert evidence == {ds.SOPInstanceUID for ds in current}
    if prior:
        other = {i.ReferencedSOPSequence[0].ReferencedSOPInstanceUID
                 for s in sr.PertinentOtherEvidenceSequence for i in s.ReferencedSeriesSequence}
        assert other == {ds.SOPInstanceUID for ds in prior}
    else:
        assert "PertinentOtherEvidenceSequence" not in sr


def test_sr_algorithm_identification(case) -> None:
    _, record, _, _, _, sr, _ = case
    ours = [e for e in sr.ContributingEquipmentSequence if e.Manufacturer == OutputOptions().manufacturer]
    assert len(ours) == 1  # next to the source's acquisition equipment and highdicom itself
    equipment = ours[0]
    assert equipment.PurposeOfReferenceCodeSequence[0].CodeValue == codes.DCM.ProcessingEquipment.value
    assert equipment.ContributionDescription.startswith("Processing Algorithm")
    assert equipment.Manufacturer == OutputOptions().manufacturer
    assert equipment.ManufacturerModelName.startswith(record.provenance.model_name)
    assert equipment.DeviceSerialNumber == device_uid(record.provenance)
    items = content_items(sr.ContentSequence)
    uids = [i.UID for i in items if i.ValueType == "UIDREF" and _name(i) == ("DCM", "121012")]
    assert uids == [device_uid(record.provenance)]  # Device Observer UID
    texts = [str(i.TextValue) for i in items if i.ValueType == "TEXT"]
    assert any(record.provenance.weights_sha256 in t for t in texts)
    assert any(f"quantization={record.provenance.quantization}" in t or "quantization nf4" in t for t in texts)


def test_sr_findings_and_boxes_read_back(case) -> None:
    _, record, current, _, _, sr, out = case
    doc = hd.sr.srread(out / "sr.dcm")
    table = load_table()
    items = content_items(sr.ContentSequence)
    assert not [i for i in items if _name(i) == ("DCM", "121071") and i.ValueType == "TEXT"]  # no TEXT "Finding"
    # every checklist finding, coded, in Qualitative Evaluations (UMLS C0034375), with its presence
    evaluations = [i for i in sr.ContentSequence if _name(i) == ("UMLS", "C0034375")]
    assert len(evaluations) == 1 and evaluations[0].ValueType == "CONTAINER"
    coded = {_name(i): i for i in evaluations[0].ContentSequence if i.ValueType == "CODE"}
    assert len(coded) == len(record.findings) == len(FINDING_LABELS)
    for finding in record.findings:
        entry = table.findings[finding.key]
        item = coded[(entry.code.scheme_designator, entry.code.value)]
        assert item.ConceptCodeSequence[0].CodeValue == table.presence[finding.presence.value].value, finding.key
        sites = [c.ConceptCodeSequence[0].CodeValue for c in item.get("ContentSequence", [])
                 if _name(c) == ("SCT", "363698007")]
        assert sites == ([entry.site.value] if entry.site else []), finding.key

    # Imaging Measurements holds box groups only, each with a SCOORD: none there without a box
    rois = doc.content.get_planar_roi_measurement_groups()
    measurements = [i for i in sr.ContentSequence if _name(i) == ("DCM", "126010")]
    expected = [b for f in record.findings for b in f.boxes] + 3 * [None]  # + heart, right and left lung
    assert len(rois) == len(expected)
    assert len(measurements) == 1
    for group in measurements[0].ContentSequence:
        assert any(i.ValueType == "SCOORD" for i in content_items(group.ContentSequence)), "every group has geometry"
    frontal = current[0]
    for roi, box in zip(rois, expected, strict=False):
        region = roi.roi
        assert region.graphic_type == hd.sr.GraphicTypeValues.POLYLINE
        ref = region.ContentSequence[0].ReferencedSOPSequence[0]  # SELECTED FROM the source image
        assert ref.ReferencedSOPInstanceUID == frontal.SOPInstanceUID
        data = region.value
        assert data.shape == (5, 2) and (data[0] == data[-1]).all()
        assert 0 <= data[:, 0].min() and data[:, 0].max() <= frontal.Columns
        assert 0 <= data[:, 1].min() and data[:, 1].max() <= frontal.Rows
        if box is not None:
            x1, y1, x2, y2 = box.pixels
            assert data[0] == pytest.approx([x1, y1]) and data[2] == pytest.approx([x2, y2])
            finding = next(f for f in record.findings if box in f.boxes)
            assert finding.label in str(roi.tracking_identifier)
            code = table.findings[finding.key].code
            assert (roi.finding_type.scheme_designator, roi.finding_type.value) == (code.scheme_designator,
                                                                                  code.value)
            assert roi.finding_type.meaning == code.meaning  # what a viewer labels the box with
        else:
            assert roi.finding_sites, "anatomy box carries its finding site"
            assert roi.finding_type.value == "404684003"


def test_sr_stage_containers(case) -> None:
    _, record, _, _, _, sr, _ = case
    stages = [i for i in sr.ContentSequence if i.ValueType == "CONTAINER" and _name(i)[0] == "99CXRNODE"]
    assert [_name(s)[1] for s in stages] == [f"STAGE-{n}" for n in range(1, 9)]
    for container, stage in zip(stages, sorted(record.stages, key=lambda s: s.number), strict=False):
        status = container.ContentSequence[0]
        assert _name(status) == ("99CXRNODE", "STAGE-STATUS")
        assert str(status.TextValue).startswith(stage.status.value.replace("_", " "))
        qa = [i for i in container.ContentSequence if i.ValueType == "CONTAINER"]
        assert len(qa) == len(stage.questions)
        for item, question in zip(qa, stage.questions, strict=False):
            values = {_name(i)[1]: str(i.TextValue) for i in item.ContentSequence}
            assert values["QUESTION-ID"] == question.id
            assert values["ANSWER"] == (question.raw_answer or "(empty)")
            assert question.question in values["QUESTION"]
            assert ("PARSE-ERROR" in values) == (not question.parsed.ok)
        if stage.number == 8:
            texts = {_name(i): str(i.TextValue) for i in container.ContentSequence if i.ValueType == "TEXT"}
            assert texts[("DCM", "121073")] == record.report.impression.strip()
            assert texts[("DCM", "121070")] == record.report.findings.strip()  # UT drops trailing spaces
    not_applicable = [s.number for s in record.stages if s.status is StageStatus.NOT_APPLICABLE]
    for number in not_applicable:
        assert str(stages[number - 1].ContentSequence[0].TextValue).startswith("not applicable")
    comments = [str(i.TextValue) for i in sr.ContentSequence if i.ValueType == "TEXT"]
    assert UNVERIFIED_STATEMENT in comments and DEMO_STATEMENT in comments


def test_text_round_trips_unchanged(case) -> None:
    name, record, current, _, result, sr, _ = case
    assert str(sr.PatientName) == str(current[0].PatientName)
    texts = {str(i.TextValue) for i in content_items(sr.ContentSequence) if i.ValueType == "TEXT"}
    answers = {q.raw_answer.rstrip() for s in record.stages for q in s.questions}
    assert answers <= texts  # every answer, byte for byte after decoding (no "?" substitution)
    if name in ("chinese", "greek_failed"):
        marker = "双肺清晰" if name == "chinese" else "πνεύμονες"
        assert any(marker in t for t in texts)
    assert result.pages[0].SpecificCharacterSet == "ISO_IR 192"


def test_sc_pages(case) -> None:
    _, record, current, _, result, _, out = case
    assert len(result.pages) == len(result.page_images) >= 1
    series = {p.SeriesInstanceUID for p in result.pages}
    assert len(series) == 1
    assert series.isdisjoint({ds.SeriesInstanceUID for ds in current} | {result.sr.SeriesInstanceUID})
    for number, (page, image) in enumerate(zip(result.pages, result.page_images, strict=False), start=1):
        back = _save_and_read(page, out / f"page{number}.dcm")
        assert back.SOPClassUID == "1.2.840.10008.5.1.4.1.1.7"
        assert back.file_meta.TransferSyntaxUID == pydicom.uid.RLELossless  # the default: about 10x smaller
        assert len(back.PixelData) * 2 < back.Rows * back.Columns * 3
        assert back.StudyInstanceUID == current[0].StudyInstanceUID and back.PatientID == current[0].PatientID
        assert (back.SamplesPerPixel, back.PhotometricInterpretation, back.BitsAllocated) == (3, "RGB", 8)
        assert back.BurnedInAnnotation == "YES"
        assert back.InstanceNumber == number and back.SeriesNumber == OutputOptions().sc_series_number
        assert back.SeriesDescription.startswith("DEMO ")
        assert (back.Rows, back.Columns) == (image.height, image.width) == (2048, 1536)
        assert (back.pixel_array == __import__("numpy").asarray(image)).all()


def test_predecessor_and_non_demo(study: list[Dataset], tmp_path: Path) -> None:
    first = build_result_objects(make_record(study, positive=("pneumothorax",)), study)
    record = make_record(study, positive=("pneumothorax", "edema"), demo=False)
    second = build_result_objects(record, study, predecessor=first.sr)
    sr = second.sr
    ref = sr.PredecessorDocumentsSequence[0].ReferencedSeriesSequence[0].ReferencedSOPSequence[0]
    assert ref.ReferencedSOPInstanceUID == first.sr.SOPInstanceUID
    assert "DEMO" not in sr.SeriesDescription and "DEMO" not in second.pages[0].SeriesDescription
    assert sr.ConceptNameCodeSequence[0].CodeValue == "126000"
    comments = [str(i.TextValue) for i in sr.ContentSequence if i.ValueType == "TEXT"]
    assert UNVERIFIED_STATEMENT in comments and DEMO_STATEMENT not in comments
    assert validate(sr).errors == []


def test_device_uid_follows_the_weights() -> None:
    a, b = make_provenance(weights_sha256="11" * 32), make_provenance(weights_sha256="22" * 32)
    assert device_uid(a) == device_uid(make_provenance(weights_sha256="11" * 32))
    assert device_uid(a) != device_uid(b)
    assert len(device_uid(a)) <= 64


def test_a_model_served_by_an_engine_is_named_with_its_engine(study: list[Dataset]) -> None:
    """The openai backend knows no weights hash: the SR names the engine and its version, the device UID follows
    the served model id and engine version (not one UID for every engine), and the model is not given the engine's
    version as its own."""
    from sr_writer.provenance import software_versions, summary

    def served(name: str, version: str):  # type: ignore[no-untyped-def]
        return make_provenance(weights_sha256="").model_copy(update=dict(
            model_name=name, model_version="", engine_url="http://vllm:8000/v1", engine_version=version,
            quantization="engine"))

    a = served("cxr-vlm", "0.32.0")
    assert device_uid(a) == device_uid(served("cxr-vlm", "0.32.0"))
    assert len({device_uid(a), device_uid(served("other-vlm", "0.32.0")), device_uid(served("cxr-vlm", "0.33.0"))}) == 3
    assert "served by the engine at http://vllm:8000/v1 (version 0.32.0)" in summary(a)
    assert "weights sha256" not in summary(a)
    assert software_versions(a) == ["cxr-node 0.1.0", "transformers 5.23.0", "engine 0.32.0"]
    record = make_record(study).model_copy(update={"provenance": a})
    objects = build_result_objects(record, study)
    for dataset in (objects.sr, objects.pages[0]):
        [ours] = [e for e in dataset.ContributingEquipmentSequence if e.Manufacturer == OutputOptions().manufacturer]
        assert "engine 0.32.0" in list(ours.SoftwareVersions)
        assert ours.DeviceSerialNumber == device_uid(a)
        assert validate(dataset).errors == []
    texts = [str(i.TextValue) for i in content_items(objects.sr.ContentSequence) if i.ValueType == "TEXT"]
    assert any("served by the engine at http://vllm:8000/v1" in t for t in texts)
    from sr_writer.page import PageRenderer

    header = " ".join(line.text for line in PageRenderer(record, study, (), OutputOptions())._header_lines())
    assert "served by the engine at http://vllm:8000/v1 (version 0.32.0)" in header and "weights" not in header
    local = make_record(study)
    header = " ".join(line.text for line in PageRenderer(local, study, (), OutputOptions())._header_lines())
    assert f"weights {local.provenance.weights_sha256[:16]}" in header


def test_invalid_object_is_refused(study: list[Dataset]) -> None:
    from sr_writer import ensure_valid

    result = build_result_objects(make_record(study), study, options=OutputOptions(validate=False))
    broken = result.pages[0]
    del broken.StudyInstanceUID
    with pytest.raises(ExportRefused) as info:
        ensure_valid(broken, "SC page 1")
    assert any("StudyInstanceUID" in r or "Study Instance UID" in r for r in info.value.reasons)


def test_record_with_box_on_missing_image_still_builds(study: list[Dataset]) -> None:
    record = make_record(study, positive=("pneumothorax",))
    data = record.model_dump()
    data["images"][0]["sop_instance_uid"] = "1.2.3.4.5"  # the frontal image is not among the sources
    record = ReasoningRecord.model_validate(data)
    result = build_result_objects(record, study)
    doc_rois = [i for i in content_items(result.sr.ContentSequence) if i.ValueType == "SCOORD"]
    assert doc_rois == []
    assert result.pages and validate(result.sr).errors == []
    assert Presence.PRESENT in {f.presence for f in record.findings}


@pytest.mark.parametrize("variant", ["cr_monochrome1_lateral_only", "stage2_failed_no_findings", "box_on_prior"])
def test_edge_records_still_give_valid_objects(variant: str) -> None:
    if variant == "cr_monochrome1_lateral_only":
        current = make_study(small_spec(modality="CR", photometric="MONOCHROME1", views=("LATERAL",)))
        record, prior = make_record(current, positive=("fracture",)), []
    elif variant == "stage2_failed_no_findings":
        current, prior = make_study(small_spec()), []
        data = make_record(current, failed_stage=2).model_dump()
        data["findings"] = []
        for stage in data["stages"]:
            if stage["number"] in (2, 3):
                stage["questions"] = []
        record = ReasoningRecord.model_validate(data)
    else:
        spec = small_spec()
        current, prior = make_study(spec), make_study(prior_spec(spec))
        record = make_record(current, prior, positive=("pneumothorax",))
        data = record.model_dump()
        data["findings"][8]["boxes"].append({**data["findings"][8]["boxes"][0], "image_index": len(current)})
        record = ReasoningRecord.model_validate(data)
    result = build_result_objects(record, current, prior)
    for ds in result.datasets:
        report = validate(ds)
        assert report.errors == [] and report.unexpected_warnings == [], report.output
    assert result.sr.CompletionFlag == ("PARTIAL" if variant == "stage2_failed_no_findings" else "COMPLETE")
    scoords = [i for i in content_items(result.sr.ContentSequence) if i.ValueType == "SCOORD"]
    refs = [i.ContentSequence[0].ReferencedSOPSequence[0].ReferencedSOPInstanceUID for i in scoords]
    if variant == "box_on_prior":
        assert str(prior[0].SOPInstanceUID) in refs
    if variant == "stage2_failed_no_findings":
        texts = [str(i.TextValue) for i in content_items(result.sr.ContentSequence) if i.ValueType == "TEXT"]
        assert "The record holds no checklist findings." in texts and not scoords
        names = [_name(i) for i in result.sr.ContentSequence]
        assert ("UMLS", "C0034375") in names and ("DCM", "126010") not in names  # no group without geometry


@pytest.mark.parametrize("charset,name", [("ISO_IR 100", "Müller^Jürgen"),
                                          (["", "ISO 2022 IR 87"], "Yamada^Tarou=山田^太郎")])
def test_sources_in_other_character_sets_keep_the_patient_name(charset, name: str, tmp_path: Path) -> None:
    current = []
    for n, ds in enumerate(make_study(small_spec(patient_name=name))):
        ds.SpecificCharacterSet = charset
        current.append(_save_and_read(ds, tmp_path / f"src{n}.dcm"))
    result = build_result_objects(make_record(current), current)
    for n, ds in enumerate(result.datasets):
        back = _save_and_read(ds, tmp_path / f"out{n}.dcm")
        assert back.SpecificCharacterSet == "ISO_IR 192"
        assert str(back.PatientName) == name


def test_control_characters_in_model_text_are_dropped(study: list[Dataset]) -> None:
    data = make_record(study, positive=("pneumothorax",)).model_dump()
    question = data["stages"][0]["questions"][1]
    question["raw_answer"] = "Adequate\x00 inspiration\x07,\x1b no rotation \ufffd."
    record = ReasoningRecord.model_validate(data)
    result = build_result_objects(record, study)  # validated: dciodvfy would flag control characters
    texts = [str(i.TextValue) for i in content_items(result.sr.ContentSequence) if i.ValueType == "TEXT"]
    assert "Adequate inspiration, no rotation ?." in texts


def test_uncompressed_pages_on_request(study: list[Dataset], tmp_path: Path) -> None:
    options = OutputOptions(page_transfer_syntax=pydicom.uid.ExplicitVRLittleEndian)
    result = build_result_objects(make_record(study, positive=("pneumothorax",)), study, options=options)
    back = _save_and_read(result.pages[0], tmp_path / "page.dcm")
    assert back.file_meta.TransferSyntaxUID == pydicom.uid.ExplicitVRLittleEndian
    for page in result.pages:  # uncompressed pages go through the tree writer: still pydicom's bytes
        assert result.encoded[str(page.SOPInstanceUID)] == part10_bytes(page)
    assert len(back.PixelData) == back.Rows * back.Columns * 3
    assert (back.pixel_array == __import__("numpy").asarray(result.page_images[0])).all()
    with pytest.raises(ValueError, match="page transfer syntax"):
        OutputOptions(page_transfer_syntax=pydicom.uid.JPEGBaseline8Bit)


def test_a_pickled_object_is_filed_without_parsing_its_bytes(case) -> None:
    """A result object made in a page process travels as its bytes and its identity: the worker files and queues
    it (UIDs, instance number) without reading the bytes back, and still can read them when asked."""
    result = case[4]
    for made in result.objects:
        received = pickle.loads(pickle.dumps(made))
        ds = made.dataset
        number = int(ds.InstanceNumber)
        assert (received.sop_instance_uid, received.sop_class_uid, received.series_instance_uid,
                received.identity.instance_number) == (ds.SOPInstanceUID, ds.SOPClassUID, ds.SeriesInstanceUID, number)
        assert received._header is None and received._dataset is None  # nothing was parsed for that
        assert received.dataset.SOPInstanceUID == ds.SOPInstanceUID  # the bytes are there when asked for
        assert isinstance(received, ResultObject)
