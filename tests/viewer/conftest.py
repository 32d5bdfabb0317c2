"""A study with positive findings, its SR and SC pages in Orthanc (DICOMweb plugin), and OHIF in front of it."""
from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from PIL import Image
from pydicom.dataset import Dataset

from dicomnode.demo.records import make_record
from dicomnode.demo.synthetic import StudySpec, make_study
from dicomnode.peers.ohif import OhifServer
from dicomnode.peers.orthanc import OrthancServer
from sr_writer import build_result_objects
from sr_writer.validate import part10_bytes

ROOT = Path(__file__).resolve().parents[2]

ARTEFACTS = ROOT / "out" / "viewer"  # git-ignored; screenshots stay here after the run
POSITIVE = ("pneumothorax", "pleural_effusion")


@dataclass
class ViewerStudy:
    study_instance_uid: str
    frontal: Dataset  # the image the boxes are drawn on
    boxes: dict[str, tuple[float, float, float, float]]  # finding label -> normalized (x1, y1, x2, y2)
    sr_series_number: int  # the study browser's thumbnails carry data-series="<SeriesNumber>"
    sc_series_number: int
    page_images: list[Image.Image]


@pytest.fixture(scope="module")
def orthanc(tmp_path_factory: pytest.TempPathFactory) -> Iterator[OrthancServer]:
    with OrthancServer(tmp_path_factory.mktemp("orthanc-dicomweb"), dicomweb=True) as server:
        yield server


@pytest.fixture(scope="module")
def viewer_study(orthanc: OrthancServer) -> ViewerStudy:
    """A PA + lateral study whose record has two positive findings, each with a box on the PA image.

    The record is hand-made (``make_record``) and goes through the real writer, so the test is deterministic.
    """
    current = make_study(StudySpec(seed=3, patient_name="Viewer^Test", patient_id="VIEW0001"))
    record = make_record(current, positive=POSITIVE, anatomy_boxes=False)
    result = build_result_objects(record, current)
    for ds in current:
        orthanc.rest_post("/instances", part10_bytes(ds))
    for ds in result.datasets:
        orthanc.rest_post("/instances", result.encoded.get(str(ds.SOPInstanceUID)) or part10_bytes(ds))
    boxes = {f.label: f.boxes[0].normalized for f in record.findings if f.boxes}
    assert set(boxes) == {"Pneumothorax", "Pleural effusion"}
    return ViewerStudy(
        study_instance_uid=str(current[0].StudyInstanceUID),
        frontal=current[0],
        boxes=boxes,
        sr_series_number=int(result.sr.SeriesNumber),
        sc_series_number=int(result.pages[0].SeriesNumber),
        page_images=[Image.fromarray(page.pixel_array) for page in result.pages],
    )


@pytest.fixture(scope="module")
def ohif(orthanc: OrthancServer) -> Iterator[OhifServer]:
    with OhifServer(orthanc.url) as server:
        yield server


@pytest.fixture(scope="module")
def artefacts() -> Path:
    ARTEFACTS.mkdir(parents=True, exist_ok=True)
    return ARTEFACTS
