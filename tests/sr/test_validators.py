"""Our SR through validators nobody here wrote (PixelMed DicomSRValidator, DCMTK dsr2xml, dciodvfy), both SOP
classes, and the Comprehensive SR option read the way Orthanc Stone's ``DicomStructuredReport.cpp`` reads it."""
from __future__ import annotations

import copy
import shutil
import subprocess
from pathlib import Path

import pydicom
import pytest
from pydicom.dataset import Dataset

from dicomnode.demo.records import make_record
from dicomnode.demo.synthetic import make_study, prior_spec
from sr_writer import OutputOptions, build_result_objects, validate
from tests.sr.conftest import content_items, small_spec

PIXELMED_JAR = Path("/usr/share/java/pixelmed.jar")  # Debian libpixelmed-java (scripts/bootstrap.sh)
JAVA_FLAGS = ["-Djdk.xml.xpathExprGrpLimit=0", "-Djdk.xml.xpathExprOpLimit=0", "-Djdk.xml.xpathTotalOpLimit=0"]
DSR2XML = "/usr/bin/dsr2xml"  # DCMTK's, never a venv script
# every kind of finding code: SCT, DCM, RADLEX, post-coordinated with a Finding Site
POSITIVE = ("pneumothorax", "consolidation", "pleural_other", "enlarged_cardiomediastinum", "lung_lesion",
            "chest_tube", "atelectasis")
SOP_CLASSES = {"comprehensive3d": "1.2.840.10008.5.1.4.1.1.88.34", "comprehensive": "1.2.840.10008.5.1.4.1.1.88.33"}


@pytest.fixture(scope="module", params=sorted(SOP_CLASSES))
def written(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory):
    spec = small_spec()
    current, prior = make_study(spec), make_study(prior_spec(spec))
    # probabilities on every finding (make_record's default) and one operating point: their NUM items validated too
    record = make_record(current, prior, positive=POSITIVE, uncertain=("edema",), thresholds={"pneumothorax": 0.3})
    result = build_result_objects(record, current, prior, options=OutputOptions(sr_sop_class=request.param))
    path = tmp_path_factory.mktemp(request.param) / "sr.dcm"
    path.write_bytes(result.encoded[str(result.sr.SOPInstanceUID)])  # the bytes the node stores and sends
    return request.param, record, current, prior, result, path


def pixelmed_errors(path: Path) -> tuple[list[str], str]:
    java = shutil.which("java")
    assert java and PIXELMED_JAR.is_file(), "PixelMed needs Debian libpixelmed-java and a JRE (scripts/bootstrap.sh)"
    proc = subprocess.run([java, *JAVA_FLAGS, "-cp", str(PIXELMED_JAR), "com.pixelmed.validate.DicomSRValidator",
                           str(path)], capture_output=True, text=True, timeout=300)
    output = proc.stdout + proc.stderr
    assert "Found Root Template TID_1500" in output, output[-3000:]  # it did validate against TID 1500
    return [line for line in output.splitlines() if line.startswith("Error")], output


def test_pixelmed_finds_no_error(written) -> None:
    sop_class, *_, path = written
    errors, output = pixelmed_errors(path)
    iod = "Comprehensive3DSR" if sop_class == "comprehensive3d" else "ComprehensiveSR"
    assert f"Found {iod} IOD" in output
    assert errors == [], "\n".join(errors)


def test_pixelmed_catches_a_procedure_code_outside_cid_100(tmp_path: Path) -> None:
    """The check above can fail: the code this project wrote before (SCT 413815006) is reported."""
    study = make_study(small_spec())
    result = build_result_objects(make_record(study, positive=("pneumothorax",)), study)
    sr = copy.deepcopy(result.sr)  # its code items are the code table's (cached per process): change a copy only
    for item in sr.ContentSequence:
        if item.ConceptNameCodeSequence[0].CodeValue == "121058":  # Procedure reported
            item.ConceptCodeSequence[0].CodeValue = "413815006"
            item.ConceptCodeSequence[0].CodeMeaning = "Chest imaging"
    sr.save_as(tmp_path / "bad.dcm", enforce_file_format=True)
    errors, _ = pixelmed_errors(tmp_path / "bad.dcm")
    assert any("context group 100" in e for e in errors), errors


def test_dsr2xml_reads_it(written, tmp_path: Path) -> None:
    *_, path = written
    proc = subprocess.run([DSR2XML, str(path)], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert "Qualitative Evaluations" in proc.stdout and "Imaging Measurement Report" in proc.stdout
    broken = tmp_path / "broken.dcm"  # and it does refuse a structural error: a relationship the IOD forbids
    ds = pydicom.dcmread(path)
    ds.ContentSequence[-1].RelationshipType = "SELECTED FROM"  # a stage container SELECTED FROM the root
    ds.save_as(broken, enforce_file_format=True)
    assert subprocess.run([DSR2XML, str(broken)], capture_output=True, timeout=120).returncode != 0


def test_dciodvfy_finds_no_error(written) -> None:
    sop_class, *_, path = written
    report = validate(pydicom.dcmread(path))
    assert report.errors == [] and report.unexpected_warnings == [], report.output
    assert str(pydicom.dcmread(path).SOPClassUID) == SOP_CLASSES[sop_class]


def _code(item: Dataset, attribute: str = "ConceptNameCodeSequence") -> tuple[str, str]:
    code = item[attribute][0]
    return str(code.CodingSchemeDesignator), str(code.CodeValue)


def stone_regions(ds: Dataset) -> list[dict]:
    """What Orthanc Stone's DicomStructuredReport.cpp takes from an SR (its rules, restated).

    - Only Comprehensive SR (1.2.840.10008.5.1.4.1.1.88.33) with a TID 1500 root (DCM 126000).
    - The referenced instances are those of CurrentRequestedProcedureEvidenceSequence (0040,A375); a region on an
      instance not listed there cannot be drawn.
    - Regions: TID 1410 groups (DCM 125007) under Imaging Measurements (DCM 126010), each with a SCOORD (DCM 111030
      Image Region) whose child is SELECTED FROM an IMAGE named DCM 111040 "Original Source"; the label from the
      group's Finding (DCM 121071) and Tracking Identifier (DCM 112039)."""
    assert ds.SOPClassUID == "1.2.840.10008.5.1.4.1.1.88.33", "Stone reads TID 1500 from Comprehensive SR only"
    assert _code(ds) == ("DCM", "126000")
    evidence = {
        str(sop.ReferencedSOPInstanceUID): str(sop.ReferencedSOPClassUID)
        for study in ds.CurrentRequestedProcedureEvidenceSequence
        for series in study.ReferencedSeriesSequence
        for sop in series.ReferencedSOPSequence
    }
    regions = []
    for container in ds.ContentSequence:
        if _code(container) != ("DCM", "126010"):
            continue
        for group in container.ContentSequence:
            assert group.ValueType == "CONTAINER" and _code(group) == ("DCM", "125007")
            children = {_code(c): c for c in group.ContentSequence}
            scoord = children[("DCM", "111030")]
            assert scoord.ValueType == "SCOORD" and scoord.RelationshipType == "CONTAINS"
            images = [c for c in scoord.ContentSequence if c.ValueType == "IMAGE"]
            assert len(images) == 1 and images[0].RelationshipType == "SELECTED FROM"
            assert _code(images[0]) == ("DCM", "111040"), "Stone looks for 'Original Source'"
            ref = images[0].ReferencedSOPSequence[0]
            uid = str(ref.ReferencedSOPInstanceUID)
            assert evidence.get(uid) == str(ref.ReferencedSOPClassUID), f"{uid} is not in the evidence (0040,A375)"
            finding = children[("DCM", "121071")]
            regions.append({
                "instance": uid,
                "points": list(scoord.GraphicData),
                "type": str(scoord.GraphicType),
                "finding": str(finding.ConceptCodeSequence[0].CodeMeaning),
                "tracking": str(children[("DCM", "112039")].TextValue),
            })
    return regions


def test_stone_reads_the_comprehensive_option(written) -> None:
    sop_class, record, current, prior, result, path = written
    ds = pydicom.dcmread(path)
    if sop_class != "comprehensive":
        with pytest.raises(AssertionError, match="Comprehensive SR only"):
            stone_regions(ds)
        # the 3D SR keeps highdicom's SCT 260753009 "Source" that OHIF reads
        names = {_code(c) for c in content_items(ds.ContentSequence) if c.ValueType == "IMAGE"
                 and c.RelationshipType == "SELECTED FROM"}
        assert names == {("SCT", "260753009")}
        return
    regions = stone_regions(ds)
    boxes = [b for f in record.findings for b in f.boxes]
    assert len(regions) == len(boxes) + 3  # each finding's box, plus heart and both lungs
    labels = {r["finding"] for r in regions}
    assert {"Pneumothorax", "consolidation", "Chest tube"} <= labels
    assert all(r["type"] == "POLYLINE" and len(r["points"]) == 10 for r in regions)
    evidence = {str(s.ReferencedSOPInstanceUID) for st in ds.CurrentRequestedProcedureEvidenceSequence
                for se in st.ReferencedSeriesSequence for s in se.ReferencedSOPSequence}
    assert {str(d.SOPInstanceUID) for d in current} <= evidence


@pytest.mark.parametrize("written", ["comprehensive"], indirect=True)  # the option the Stone rules apply to
def test_stone_check_catches_highdicoms_source_name(written) -> None:
    """The Stone check can fail: an SR with highdicom's 'Source' name is refused."""
    *_, path = written
    ds = pydicom.dcmread(path)
    image = next(i for i in content_items(ds.ContentSequence)
                 if i.ValueType == "IMAGE" and i.RelationshipType == "SELECTED FROM")
    image.ConceptNameCodeSequence[0].CodeValue = "260753009"
    image.ConceptNameCodeSequence[0].CodingSchemeDesignator = "SCT"
    with pytest.raises(AssertionError, match="Original Source"):
        stone_regions(ds)
