"""storescu -> Orthanc -> Lua routing rule -> node (tiny NF4 model) -> SR + SC back in Orthanc, same study.

A prior study sent first is found by the node in Orthanc (C-FIND) and retrieved (C-GET) for the current study's
stages 5-6; the prior itself, having no earlier study, has those stages not applicable.
"""
from __future__ import annotations

import io

import pydicom
import pytest
from PIL import Image
from pydicom.sr.codedict import codes

from dicomnode.demo.synthetic import StudySpec, prior_spec, write_study
from dicomnode.peers.dcmtk import storescu
from inference.record import DEMO_STATEMENT, UNVERIFIED_STATEMENT
from sr_writer.codes import load_table

from .conftest import Site, wait_until

pytestmark = pytest.mark.slow
STAGE_SCHEME = "99CXRNODE"


def _send_to_pacs(site: Site, spec: StudySpec, folder) -> None:
    files = write_study(folder, spec)
    done = storescu(files, site.orthanc.aet, "127.0.0.1", site.orthanc.dicom_port, calling_aet="MODALITY")
    assert done.returncode == 0, done.stderr


def _results(site: Site, study_uid: str) -> tuple[pydicom.Dataset, list[dict]]:
    srs, pages = wait_until(lambda: (lambda r: r if r[0] and r[1] else None)(site.results(study_uid)),
                            timeout=600, what=f"SR and SC of {study_uid} in Orthanc", interval=1.0)
    assert len(srs) == 1
    raw = site.orthanc.rest_get_bytes(f"/instances/{srs[0]['ID']}/file")
    return pydicom.dcmread(io.BytesIO(raw)), pages


def _stage_containers(sr: pydicom.Dataset) -> dict[int, pydicom.Dataset]:
    stages = {}
    for item in sr.ContentSequence:
        code = item.ConceptNameCodeSequence[0] if "ConceptNameCodeSequence" in item else None
        if item.ValueType == "CONTAINER" and code is not None and code.CodingSchemeDesignator == STAGE_SCHEME:
            stages[int(str(code.CodeValue).split("-")[1])] = item
    return stages


def _status(container: pydicom.Dataset) -> str:
    return str(container.ContentSequence[0].TextValue)


def _questions(container: pydicom.Dataset) -> list[pydicom.Dataset]:
    return [i for i in container.ContentSequence if i.ValueType == "CONTAINER"]


@pytest.fixture(scope="module")
def studies(site: Site, tmp_path_factory: pytest.TempPathFactory) -> dict[str, StudySpec]:
    current = StudySpec(patient_name="Roundtrip^Erika", patient_id="E2E0001", accession_number="E2E1",
                        study_date="20260301", rows=256, columns=208)
    prior = prior_spec(current, days_before=60)
    prior.rows, prior.columns = 256, 208
    _send_to_pacs(site, prior, tmp_path_factory.mktemp("prior"))
    _results(site, prior.study_instance_uid)  # the prior is a study of its own: wait for its results first
    _send_to_pacs(site, current, tmp_path_factory.mktemp("current"))
    return {"current": current, "prior": prior}


def test_results_come_back_in_the_same_study(site: Site, studies: dict[str, StudySpec]) -> None:
    spec = studies["current"]
    sr, pages = _results(site, spec.study_instance_uid)
    assert sr.StudyInstanceUID == spec.study_instance_uid
    assert sr.PatientID == spec.patient_id and str(sr.PatientName) == spec.patient_name
    assert sr.VerificationFlag == "UNVERIFIED"
    assert "DEMO" in sr.SeriesDescription
    sources = {i["MainDicomTags"]["SOPInstanceUID"] for i in site.orthanc.instances_of_study(spec.study_instance_uid)}
    evidence = {ref.ReferencedSOPInstanceUID for study in sr.CurrentRequestedProcedureEvidenceSequence
                for series in study.ReferencedSeriesSequence for ref in series.ReferencedSOPSequence}
    assert evidence and evidence <= sources  # the SR points at the images the PACS holds
    texts = [str(i.TextValue) for i in sr.ContentSequence if i.ValueType == "TEXT"]
    assert UNVERIFIED_STATEMENT in texts and DEMO_STATEMENT in texts

    # Algorithm identification (IHE AIR): Contributing Equipment with purpose Processing Equipment/Algorithm.
    ours = [e for e in sr.ContributingEquipmentSequence
            if e.PurposeOfReferenceCodeSequence[0].CodeValue == codes.DCM.ProcessingEquipment.value
            and str(e.get("ContributionDescription", "")).startswith("Processing Algorithm")]
    assert len(ours) == 1 and ours[0].SoftwareVersions

    # Every page previews as a PNG in the PACS.
    for page in pages:
        png = site.orthanc.rest_get_bytes(f"/instances/{page['ID']}/preview")
        image = Image.open(io.BytesIO(png))
        assert image.format == "PNG" and image.size[0] > 500


def test_sr_has_every_stage_and_the_findings(site: Site, studies: dict[str, StudySpec]) -> None:
    sr, _ = _results(site, studies["current"].study_instance_uid)
    stages = _stage_containers(sr)
    assert sorted(stages) == list(range(1, 9))
    for number in (1, 2, 3, 7, 8):
        assert not _status(stages[number]).startswith("not applicable"), number
        assert _questions(stages[number]), number
    # presence of every checklist finding: study level, in TID 1500's Qualitative Evaluations (UMLS C0034375)
    [container] = [i for i in sr.ContentSequence if i.ConceptNameCodeSequence[0].CodeValue == "C0034375"]
    values = {i.ConceptNameCodeSequence[0].CodeValue: i.ConceptCodeSequence[0].CodeValue
              for i in container.ContentSequence if i.ValueType == "CODE"}
    table = load_table()
    coded = {entry.code.value for entry in table.findings.values()}
    priority = table.triage["concept"].value  # the example config's triage rule: pneumothorax present -> STAT
    pneumothorax = table.findings["pneumothorax"].code.value
    assert coded and set(values) - {priority} == coded  # one per checklist finding, each coded
    assert (priority in values) == (values[pneumothorax] == table.presence["present"].value)


def test_prior_fills_stages_5_and_6(site: Site, studies: dict[str, StudySpec]) -> None:
    current_sr, _ = _results(site, studies["current"].study_instance_uid)
    current = _stage_containers(current_sr)
    for number in (5, 6):
        assert not _status(current[number]).startswith("not applicable"), _status(current[number])
        assert _questions(current[number])
    prior_uids = {ref.ReferencedSOPInstanceUID for study in current_sr.PertinentOtherEvidenceSequence
                  for series in study.ReferencedSeriesSequence for ref in series.ReferencedSOPSequence}
    held = {i["MainDicomTags"]["SOPInstanceUID"]
            for i in site.orthanc.instances_of_study(studies["prior"].study_instance_uid)
            if i["MainDicomTags"].get("SOPInstanceUID")}
    assert prior_uids and prior_uids <= held  # the retrieved prior images are the evidence

    prior_sr, _ = _results(site, studies["prior"].study_instance_uid)
    prior = _stage_containers(prior_sr)
    for number in (5, 6):
        assert _status(prior[number]).startswith("not applicable")
        assert not _questions(prior[number])
