"""Pages made in page processes (how the node makes them) are the same objects as pages made in one process."""
from __future__ import annotations

import multiprocessing
from concurrent.futures import ProcessPoolExecutor

import numpy as np
import pydicom
from pydicom.dataset import Dataset

from sr_writer import build_result_objects
from tests.sr.records import make_record


def test_page_processes_make_the_same_pages(study: list[Dataset], prior_study: list[Dataset]) -> None:
    record = make_record(study, prior_study, positive=("pneumothorax", "pleural_effusion"), long_text=60)
    here = build_result_objects(record, study, prior_study)
    with ProcessPoolExecutor(max_workers=2, mp_context=multiprocessing.get_context("spawn")) as pool:
        there = build_result_objects(record, study, prior_study, page_executor=pool)
    assert len(here.pages) == len(there.pages) >= 2
    assert there.page_images == [] and len(here.page_images) == len(here.pages)
    for number, (mine, theirs) in enumerate(zip(here.pages, there.pages), start=1):
        assert theirs.InstanceNumber == number and theirs.ImageComments == mine.ImageComments
        assert theirs.PixelData == mine.PixelData  # same rendering, same RLE bytes
        back = pydicom.dcmread(__import__("io").BytesIO(there.encoded[str(theirs.SOPInstanceUID)]))
        assert (back.pixel_array == np.asarray(here.page_images[number - 1])).all()
        assert there.reports[str(theirs.SOPInstanceUID)].errors == []
    assert set(there.encoded) == {str(ds.SOPInstanceUID) for ds in there.datasets}
