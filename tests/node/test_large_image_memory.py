"""Memory bounded by design (issue 17): turning a very large radiograph into a model image or a page panel keeps
at most the decoded frame plus small working blocks, not several floating-point copies of the whole image.

Measured with tracemalloc (numpy reports its buffers to it). An 8192 x 8192 16-bit frame decodes to 128 MiB;
a single float64 copy of it would be 512 MiB, so the bound below (3 x the decoded frame) fails for any code path
that converts the whole frame to floating point."""
from __future__ import annotations

import tracemalloc

import numpy as np
import pytest
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian, generate_uid

from inference.images import display_image, to_pil

SIDE = 8192


@pytest.fixture(scope="module")
def big() -> Dataset:
    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.SOPClassUID = "1.2.840.10008.5.1.4.1.1.1.1"
    ds.SOPInstanceUID = generate_uid()
    ds.Rows = ds.Columns = SIDE
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 12, 11, 0
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
    ds.RescaleSlope, ds.RescaleIntercept = 1, 0
    ramp = (np.arange(SIDE, dtype=np.uint32) * 4095 // (SIDE - 1)).astype(np.uint16)
    ds.PixelData = np.broadcast_to(ramp, (SIDE, SIDE)).tobytes()
    return ds


def _peak(fn) -> tuple[object, int]:  # type: ignore[no-untyped-def]
    tracemalloc.start()
    try:
        result = fn()
        return result, tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()


@pytest.mark.parametrize("convert", ["model_image", "page_panel"])
def test_large_frame_converted_within_three_decoded_copies(big: Dataset, convert: str) -> None:
    decoded = SIDE * SIDE * 2
    if convert == "model_image":
        image, peak = _peak(lambda: to_pil(big, 1, max_side=1024))
        assert image.size == (1024, 1024)  # type: ignore[attr-defined]
    else:
        image, peak = _peak(lambda: display_image(big, 1, (800, 800)))  # as sr_writer.page.panel_image calls it
        assert image.size == (800, 800)  # type: ignore[attr-defined]
    pixels = np.asarray(image)
    assert pixels[:, 0].mean() < 40 and pixels[:, -1].mean() > 215  # the ramp survived: dark left, bright right
    assert peak < 3 * decoded, f"peak {peak / 2**20:.0f} MiB for a {decoded / 2**20:.0f} MiB frame"
