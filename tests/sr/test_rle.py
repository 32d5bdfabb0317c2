"""The RLE Lossless encoder (libtiff's PackBits, and the numpy one used without libtiff): decoded by pydicom and by
DCMTK's dcmdrle back to exactly the same pixels, no packet across a row."""
from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import numpy as np
import pydicom
import pytest
from PIL import Image
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.encaps import encapsulate
from pydicom.pixels.decoders.rle import _rle_decode_frame
from pydicom.uid import ExplicitVRLittleEndian, RLELossless, SecondaryCaptureImageStorage, generate_uid

from sr_writer.rle import encode_frame, encode_frame_numpy, encode_image, libtiff_packbits


def _decode(frame: bytes, rows: int, cols: int, samples: int) -> np.ndarray:
    planes = np.frombuffer(bytes(_rle_decode_frame(frame, rows, cols, samples, 8)), np.uint8)
    pixels = planes.reshape(samples, rows, cols).transpose(1, 2, 0)
    return pixels[..., 0] if samples == 1 else pixels


def _runs(lengths: list[int], cols: int) -> np.ndarray:
    """One row per run length: a run of that length, then alternating values to the row's end."""
    rows = np.tile(np.arange(cols, dtype=np.uint8) % 2, (len(lengths), 1))
    for row, length in zip(rows, lengths, strict=False):
        row[:length] = 7
    return rows


RNG = np.random.default_rng(7)
CASES = {
    "one pixel": np.zeros((1, 1), np.uint8),
    "constant": np.full((4, 1000), 255, np.uint8),
    "noise": RNG.integers(0, 256, (9, 300), dtype=np.uint8),
    "few values": RNG.integers(0, 3, (40, 257), dtype=np.uint8),
    "run lengths at packet limits": _runs([1, 2, 127, 128, 129, 130, 255, 256, 257, 300], 300),
    "one column": RNG.integers(0, 2, (50, 1), dtype=np.uint8),
    # two 128-column blocks
    "rgb, grey rows and colour rows": np.dstack([np.tile(RNG.integers(0, 4, (6, 256), dtype=np.uint8), (2, 1))] * 3),
    "rgb noise": RNG.integers(0, 256, (5, 131, 3), dtype=np.uint8),
}
CASES["rgb, grey rows and colour rows"][3:7, 140:180, 0] = 200  # some rows where red differs from green and blue
PAPER = np.full((64, 512), 255, np.uint8)  # a page: mostly blank, some blocks with text-like noise
PAPER[10:20, 100:300] = RNG.integers(0, 256, (10, 200), dtype=np.uint8)
PAPER[30:31, 0:512:2] = 0
CASES["paper with text"] = PAPER


def _numpy_encoder(pixels: np.ndarray) -> bytes:
    return encode_frame_numpy(pixels[..., np.newaxis] if pixels.ndim == 2 else pixels)


ENCODERS = {"libtiff": encode_frame, "numpy": _numpy_encoder}


def test_pillow_here_has_libtiff() -> None:
    assert libtiff_packbits()  # else every page goes through the slower numpy encoder


def _packets_keep_to_rows(segment: bytes, rows: int, cols: int) -> bool:
    """Walk the PackBits packets of one segment: each must end at or before the end of its row (G.3.1)."""
    at, decoded = 0, 0
    while decoded < rows * cols:
        header = segment[at]
        if header < 128:
            length, at = header + 1, at + 2 + header
        elif header > 128:
            length, at = 257 - header, at + 2
        else:
            at += 1
            continue
        if decoded // cols != (decoded + length - 1) // cols:
            return False
        decoded += length
    return decoded == rows * cols


@pytest.mark.parametrize("encoder", ENCODERS)
@pytest.mark.parametrize("name", CASES)
def test_no_packet_crosses_a_row(name: str, encoder: str) -> None:
    pixels = np.ascontiguousarray(CASES[name])
    frame = ENCODERS[encoder](pixels)
    header = np.frombuffer(frame[:64], "<u4")
    ends = [*header[1 : 1 + header[0]], len(frame)]
    for begin, end in zip(ends, ends[1:], strict=False):
        assert _packets_keep_to_rows(frame[begin:end], pixels.shape[0], pixels.shape[1])


def test_an_image_encodes_as_its_array() -> None:
    page = np.ascontiguousarray(CASES["rgb, grey rows and colour rows"])
    assert encode_image(Image.fromarray(page, "RGB")) == encode_frame(page)
    assert encode_image(Image.fromarray(PAPER, "L")) == encode_frame(PAPER)


@pytest.mark.parametrize("encoder", ENCODERS)
@pytest.mark.parametrize("name", CASES)
def test_pydicom_decodes_the_same_pixels(name: str, encoder: str) -> None:
    pixels = np.ascontiguousarray(CASES[name])
    frame = ENCODERS[encoder](pixels)
    samples = pixels.shape[2] if pixels.ndim == 3 else 1
    assert len(frame) % 2 == 0
    header = np.frombuffer(frame[:64], "<u4")
    assert header[0] == samples and all(offset % 2 == 0 for offset in header[1 : 1 + samples])
    assert (_decode(frame, pixels.shape[0], pixels.shape[1], samples) == pixels).all()


@pytest.mark.parametrize("encoder", ENCODERS)
def test_rows_are_encoded_separately(encoder: str) -> None:
    """PS3.5 G.3.1: no packet crosses a row; a row of one value costs ceil(cols / 128) two-byte packets."""
    frame = ENCODERS[encoder](np.full((3, 300), 9, np.uint8))
    segment = frame[64:]
    assert segment[:6] == bytes([129, 9, 129, 9, 213, 9])  # 128 + 128 + 44 per row
    assert len(segment) == 3 * 6


def test_rejects_what_rle_cannot_hold() -> None:
    with pytest.raises(ValueError, match="8-bit"):
        encode_frame(np.zeros((2, 2), np.uint16))


@pytest.mark.skipif(shutil.which("dcmdrle") is None, reason="DCMTK dcmdrle not installed")
def test_dcmtk_decodes_a_page_like_image(tmp_path: Path) -> None:
    page = np.full((256, 192, 3), 255, np.uint8)
    page[20:30, 10:180] = (20, 20, 20)  # a black "text" bar
    page[40:60, 10:100] = (190, 20, 20)  # a red banner
    page[80:200, 20:170] = RNG.integers(0, 256, (120, 150, 1), dtype=np.uint8)  # a grey image panel
    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = RLELossless
    ds.SOPClassUID, ds.SOPInstanceUID = SecondaryCaptureImageStorage, generate_uid()
    ds.Rows, ds.Columns, ds.SamplesPerPixel, ds.PhotometricInterpretation = 256, 192, 3, "RGB"
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation, ds.PlanarConfiguration = 8, 8, 7, 0, 0
    ds.PixelData = encapsulate([encode_frame(page)])
    ds["PixelData"].VR = "OB"
    src, out = tmp_path / "rle.dcm", tmp_path / "plain.dcm"
    ds.save_as(src, enforce_file_format=True)
    done = subprocess.run(["dcmdrle", str(src), str(out)], capture_output=True, text=True, check=False)
    assert done.returncode == 0, done.stderr
    back = pydicom.dcmread(out)
    assert back.file_meta.TransferSyntaxUID == ExplicitVRLittleEndian
    assert (back.pixel_array == page).all()
