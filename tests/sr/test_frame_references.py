"""References to a frame: a Referenced Frame Number only where the source's SOP class is multi-frame.

pydicom's test data has 2-frame instances of single-frame classes (Secondary Capture Image Storage with Number of
Frames 2); dciodvfy refused an SR that named a frame of them ('Shall not be present for Referenced SOP Class that
is not multi-frame')."""
from __future__ import annotations

import copy

import numpy as np
from pydicom.dataset import Dataset

from dicomnode.demo.records import make_record
from sr_writer import build_result_objects
from tests.sr.conftest import content_items

MULTI_FRAME_WORD_SC = "1.2.840.10008.5.1.4.1.1.7.3"  # Multi-frame Grayscale Word Secondary Capture Image Storage


def _two_frames(ds: Dataset, sop_class: str | None = None) -> Dataset:
    two = copy.deepcopy(ds)
    frame = np.frombuffer(two.PixelData, dtype=np.uint16)
    two.PixelData = np.concatenate([frame, frame[::-1]]).tobytes()
    two.NumberOfFrames = 2
    if sop_class:
        two.SOPClassUID = two.file_meta.MediaStorageSOPClassUID = sop_class
    return two


def _frame_numbers(result) -> list[object]:  # type: ignore[no-untyped-def]
    refs = [i.ContentSequence[0].ReferencedSOPSequence[0] for i in content_items(result.sr.ContentSequence)
            if i.ValueType == "SCOORD"]
    assert refs
    return [ref.get("ReferencedFrameNumber") for ref in refs]


def test_two_frames_of_a_single_frame_class_are_referenced_without_a_frame_number(study: list[Dataset]) -> None:
    source = _two_frames(study[0])  # Digital X-Ray Image Storage: a single-frame class
    result = build_result_objects(make_record([source], positive=("pneumothorax",)), [source])  # validated
    assert _frame_numbers(result) == [None] * len(_frame_numbers(result))


def test_a_multi_frame_class_names_its_frame(study: list[Dataset]) -> None:
    source = _two_frames(study[0], MULTI_FRAME_WORD_SC)
    result = build_result_objects(make_record([source], positive=("pneumothorax",)), [source])  # validated
    assert set(map(int, _frame_numbers(result))) == {1}  # type: ignore[call-overload]
