"""A real PACS accepts the SR and the SC pages over C-STORE, and renders the SC page through its REST preview."""
from __future__ import annotations

import io
import time
from pathlib import Path

import pytest
from PIL import Image

from dicomnode.demo.records import make_record
from dicomnode.demo.synthetic import make_study, prior_spec
from dicomnode.peers.dcmtk import storescu
from dicomnode.peers.orthanc import OrthancServer
from sr_writer import build_result_objects
from tests.sr.conftest import small_spec


@pytest.fixture(scope="module")
def orthanc(tmp_path_factory: pytest.TempPathFactory):
    server = OrthancServer(tmp_path_factory.mktemp("orthanc"))
    server.start(timeout=180)
    try:
        yield server
    finally:
        server.stop()


def _lookup(server: OrthancServer, sop_uid: str, timeout: float = 60.0) -> str:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        hits = server.rest_post("/tools/lookup", sop_uid) or []
        for hit in hits:
            if hit.get("Type") == "Instance":
                return hit["ID"]
        time.sleep(0.3)
    raise AssertionError(f"Orthanc does not hold {sop_uid}")


def test_orthanc_stores_sr_and_sc_and_previews_the_page(orthanc: OrthancServer, tmp_path: Path) -> None:
    spec = small_spec(patient_name="山田^太郎")
    current, prior = make_study(spec), make_study(prior_spec(spec))
    record = make_record(current, prior, positive=("pneumothorax", "pleural_effusion"), language="zh", long_text=40)
    result = build_result_objects(record, current, prior)
    assert len(result.pages) >= 2
    files = []
    for name, ds in [("sr", result.sr)] + [(f"page{n}", p) for n, p in enumerate(result.pages, start=1)]:
        path = tmp_path / f"{name}.dcm"
        ds.save_as(path, enforce_file_format=True)
        files.append(path)

    # pages are RLE
    sent = storescu(files, orthanc.aet, "127.0.0.1", orthanc.dicom_port, extra_args=["-R", "-xr"], timeout=300)
    assert sent.returncode == 0, sent.stdout + sent.stderr

    sr_id = _lookup(orthanc, str(result.sr.SOPInstanceUID))
    tags = orthanc.rest_get(f"/instances/{sr_id}/simplified-tags")
    assert tags["SOPClassUID"] == "1.2.840.10008.5.1.4.1.1.88.34"
    assert tags["StudyInstanceUID"] == str(current[0].StudyInstanceUID)
    assert tags["PatientName"] == "山田^太郎"  # UTF-8 survives the PACS
    assert tags["VerificationFlag"] == "UNVERIFIED"

    for page, image in zip(result.pages, result.page_images, strict=False):
        page_id = _lookup(orthanc, str(page.SOPInstanceUID))
        png = orthanc.rest_get_bytes(f"/instances/{page_id}/preview", timeout=120)
        assert png[:8] == b"\x89PNG\r\n\x1a\n"
        preview = Image.open(io.BytesIO(png)).convert("RGB")
        assert preview.size == image.size
        # Orthanc decoded our pixels: its preview matches the page we rendered
        diff = sum(abs(a - b) for a, b in zip(preview.resize((96, 128)).tobytes(), image.resize((96, 128)).tobytes(),
                                              strict=False))
        assert diff / (96 * 128 * 3) < 2.0
    study = orthanc.instances_of_study(str(current[0].StudyInstanceUID))
    assert len(study) == 1 + len(result.pages)
