"""DICOM -> model image: LUTs and windows, MONOCHROME1, compressed transfer syntaxes, view ordering."""
from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import numpy as np
import pydicom
import pytest
from pydicom.dataset import Dataset
from pydicom.sequence import Sequence as DicomSequence
from pydicom.uid import JPEG2000Lossless, RLELossless

from dicomnode.demo.synthetic import StudySpec, make_instance, make_study, write_study
from inference.images import ImageError, display_image, order_views, prepare_images, to_pil, view_of


def _ramp_instance(values: np.ndarray, **attrs: object) -> Dataset:
    """A 12-bit instance whose pixel values are ``values`` (2-D uint16)."""
    spec = StudySpec(rows=values.shape[0], columns=values.shape[1], with_window=False)
    ds = make_instance(spec, "PA", 1, pydicom.uid.generate_uid())
    ds.PixelData = values.astype(np.uint16).tobytes()
    for key, value in attrs.items():
        setattr(ds, key, value)
    return ds


def _grey(ds: Dataset) -> np.ndarray:
    arr = np.asarray(to_pil(ds))
    assert arr.ndim == 3 and arr.shape[2] == 3 and arr.dtype == np.uint8
    assert (arr[..., 0] == arr[..., 1]).all() and (arr[..., 1] == arr[..., 2]).all()
    return arr[..., 0].astype(int)


RAMP = np.tile(np.arange(0, 4096, 16, dtype=np.uint16), (4, 1))  # 256 columns, 0..4080


def test_window_linear() -> None:
    out = _grey(_ramp_instance(RAMP, WindowCenter=2048, WindowWidth=1024))
    row = out[0]
    assert (row[RAMP[0] < 1536] == 0).all()
    assert (row[RAMP[0] > 2560] == 255).all()
    middle = row[(RAMP[0] > 1600) & (RAMP[0] < 2500)]
    assert (np.diff(middle) >= 0).all() and 100 < row[RAMP[0] == 2048][0] < 155


def test_modality_lut_applies_before_window() -> None:
    # stored v -> 2v - 1000; window [1000, 3000] in output units covers stored values 1000..2000
    out = _grey(_ramp_instance(RAMP, RescaleSlope=2, RescaleIntercept=-1000, WindowCenter=2000,
                               WindowWidth=2000))[0]
    assert (out[RAMP[0] < 990] == 0).all() and (out[RAMP[0] > 2010] == 255).all()
    assert 110 < out[RAMP[0] == 1504][0] < 145


def test_voi_lut_sequence_wins_over_window() -> None:
    item = Dataset()
    item.LUTDescriptor = [4096, 0, 8]
    item.LUTData = [0] * 2048 + [255] * 2048  # a step at 2048
    item.LUTExplanation = "step"
    out = _grey(_ramp_instance(RAMP, VOILUTSequence=DicomSequence([item]), WindowCenter=100, WindowWidth=10))[0]
    assert (out[RAMP[0] < 2048] == 0).all() and (out[RAMP[0] >= 2048] == 255).all()


def test_stored_range_without_voi() -> None:
    """No VOI LUT, no window: the frame's smallest value is black, its largest white (as a viewer shows it)."""
    values = np.tile(np.arange(1000, 3048, 8, dtype=np.uint16), (4, 1))  # 1000..3040
    out = _grey(_ramp_instance(values))[0]
    assert out[0] == 0 and out[-1] == 255 and (np.diff(out) >= 0).all()
    assert 120 < out[len(out) // 2] < 136  # linear between them
    outlier = values.copy()
    outlier[0, 0] = 4095  # the range is the data's: one bright pixel widens it
    assert _grey(_ramp_instance(outlier))[1].max() < 200


def test_a_wide_window_is_shown_as_wide_not_stretched() -> None:
    """A 12-bit image with a 4096-wide window and values 1000-2000 is grey 62-125, by the window, as the modality
    chose (issue 22: the model saw 62-125, the page 0-255)."""
    values = np.tile(np.linspace(1000, 2000, 256).astype(np.uint16), (4, 1))
    out = _grey(_ramp_instance(values, WindowCenter=2048, WindowWidth=4096))
    assert out.min() == 62 and out.max() == 125


def test_monochrome1_is_inverted() -> None:
    mono2 = _ramp_instance(RAMP, WindowCenter=2048, WindowWidth=4096)
    mono1 = _ramp_instance(RAMP, WindowCenter=2048, WindowWidth=4096, PhotometricInterpretation="MONOCHROME1")
    assert (_grey(mono1) + _grey(mono2) == 255).all()
    # synthetic MONOCHROME1 study: stored values inverted, so the displayed image matches MONOCHROME2
    a = prepare_images(make_study(StudySpec(rows=128, columns=104, views=("PA",))))[0].image
    b = prepare_images(make_study(StudySpec(rows=128, columns=104, views=("PA",), photometric="MONOCHROME1")))[0].image
    assert np.abs(np.asarray(a, dtype=int) - np.asarray(b, dtype=int)).mean() < 1.5


def _compress_dcmtk(tool: str, src: Path, dst: Path) -> None:
    if not shutil.which(tool):
        pytest.skip(f"{tool} (DCMTK) not installed")
    subprocess.run([tool, str(src), str(dst)], check=True, capture_output=True, timeout=120)


@pytest.mark.parametrize("syntax", ["jpeg_lossless", "jpeg_ls", "rle_dcmtk", "rle_pydicom", "jpeg2000"])
def test_compressed_transfer_syntaxes_decode_identically(tmp_path: Path, syntax: str) -> None:
    src = write_study(tmp_path / "src", StudySpec(rows=96, columns=80, views=("PA",)))[0]
    dst = tmp_path / f"{syntax}.dcm"
    if syntax == "jpeg_lossless":
        _compress_dcmtk("dcmcjpeg", src, dst)
    elif syntax == "jpeg_ls":
        _compress_dcmtk("dcmcjpls", src, dst)
    elif syntax == "rle_dcmtk":
        _compress_dcmtk("dcmcrle", src, dst)
    else:
        ds = pydicom.dcmread(src)
        ds.compress(RLELossless if syntax == "rle_pydicom" else JPEG2000Lossless)
        ds.save_as(dst, enforce_file_format=True)
    original, compressed = pydicom.dcmread(src), pydicom.dcmread(dst)
    assert compressed.file_meta.TransferSyntaxUID.is_compressed
    assert compressed.file_meta.TransferSyntaxUID != original.file_meta.TransferSyntaxUID
    assert np.array_equal(np.asarray(to_pil(compressed)), np.asarray(to_pil(original)))


def test_frontal_first_and_view_sources() -> None:
    spec = StudySpec(rows=64, columns=48, views=("LATERAL", "AP", "PA"))
    lateral, ap, pa = make_study(spec)
    unknown = make_instance(spec, "PA", 9, pydicom.uid.generate_uid())
    del unknown.ViewPosition
    unknown.SeriesDescription = "SCOUT"
    assert [view_of(d) for d in order_views([unknown, lateral, ap, pa])] == ["PA", "AP", "LL", "UNKNOWN"]

    coded = make_instance(spec, "PA", 5, pydicom.uid.generate_uid())
    del coded.ViewPosition
    code = Dataset()
    code.CodeValue, code.CodingSchemeDesignator, code.CodeMeaning = "R-10206", "SRT", "antero-posterior"
    coded.ViewCodeSequence = DicomSequence([code])
    assert view_of(coded) == "AP"
    code.CodeValue, code.CodeMeaning = "999", "left lateral"
    assert view_of(coded) == "LL"
    del coded.ViewCodeSequence
    coded.SeriesDescription = "CHEST LAT"
    assert view_of(coded) == "LATERAL"
    coded.SeriesDescription = "Thorax p.a."
    assert view_of(coded) == "UNKNOWN"


def test_prepare_images_keeps_source_size_and_skips_non_images() -> None:
    study = make_study(StudySpec(rows=300, columns=240, views=("LATERAL", "PA")))
    sr = Dataset()
    sr.SOPInstanceUID = "1.2.3"
    images = prepare_images([sr, *study], max_side=100)
    assert [m.view for m in images] == ["PA", "LL"]
    assert images[0].image.size == (80, 100)
    assert (images[0].rows, images[0].columns) == (300, 240)
    ref = images[1].ref(3)
    assert (ref.index, ref.role, ref.view, ref.rows, ref.columns) == (3, "current", "LL", 300, 240)
    assert ref.sop_instance_uid == study[0].SOPInstanceUID
    full = prepare_images(study)
    assert full[0].image.size == (240, 300)
    with pytest.raises(ImageError, match="no prior image"):
        prepare_images([sr], role="prior")


def test_lossy_jpeg_extended_decodes_close_to_original(tmp_path: Path) -> None:
    src = write_study(tmp_path / "src", StudySpec(rows=96, columns=80, views=("PA",)))[0]
    dst = tmp_path / "jpeg_extended.dcm"
    if not shutil.which("dcmcjpeg"):
        pytest.skip("dcmcjpeg (DCMTK) not installed")
    subprocess.run(["dcmcjpeg", "+ee", "+q", "95", str(src), str(dst)], check=True, capture_output=True, timeout=120)
    compressed = pydicom.dcmread(dst)
    assert compressed.file_meta.TransferSyntaxUID == "1.2.840.10008.1.2.4.51"  # JPEG Extended (12-bit)
    a = np.asarray(to_pil(pydicom.dcmread(src)), dtype=int)
    b = np.asarray(to_pil(compressed), dtype=int)
    assert a.shape == b.shape and np.abs(a - b).mean() < 3


def test_undecodable_pixels_raise_image_error() -> None:
    ds = _ramp_instance(RAMP)
    ds.PixelData = b"\x00" * 10
    with pytest.raises(ImageError, match="cannot decode"):
        to_pil(ds)


def test_window_width_zero_falls_back_to_the_stored_range() -> None:
    out = _grey(_ramp_instance(RAMP, WindowCenter=2048, WindowWidth=0))[0]
    assert out[0] == 0 and out[-1] == 255


def test_palette_colour_is_shown_through_its_palette() -> None:
    ds = _ramp_instance(np.tile(np.arange(0, 256, dtype=np.uint16), (4, 1)))
    ds.BitsAllocated, ds.BitsStored, ds.HighBit = 8, 8, 7
    ds.PixelData = np.tile(np.arange(256, dtype=np.uint8), (4, 1)).tobytes()
    ds.PhotometricInterpretation = "PALETTE COLOR"
    for colour, table in (("Red", np.arange(256)), ("Green", 255 - np.arange(256)), ("Blue", np.zeros(256))):
        setattr(ds, f"{colour}PaletteColorLookupTableDescriptor", [256, 0, 8])
        setattr(ds, f"{colour}PaletteColorLookupTableData", table.astype(np.uint8).tobytes())
    for keyword in ("WindowCenter", "WindowWidth"):
        if keyword in ds:
            delattr(ds, keyword)
    arr = np.asarray(display_image(ds))
    assert (arr[0, :, 0] == np.arange(256)).all() and (arr[0, :, 1] == 255 - np.arange(256)).all()
    assert (arr[..., 2] == 0).all()


# -- GDCM's reader as the decoder's fallback ---------------------------------------------------------------
def _jpeg_lossless_frames(tmp_path: Path, frames: int = 4) -> tuple[Path, np.ndarray]:
    """A multi-frame 8-bit JPEG Lossless file made by DCMTK, and the pixels it holds."""
    if not shutil.which("dcmcjpeg"):
        pytest.skip("dcmcjpeg (DCMTK) not installed")
    ds = _ramp_instance(np.zeros((64, 64), np.uint16))
    ds.BitsAllocated, ds.BitsStored, ds.HighBit = 8, 8, 7
    for keyword in ("WindowCenter", "WindowWidth", "RescaleSlope", "RescaleIntercept"):
        if keyword in ds:
            delattr(ds, keyword)
    ramp = (np.add.outer(np.arange(64), np.arange(64)) * 2 % 256).astype(np.uint8)
    pixels = np.stack([np.roll(ramp, 9 * i, axis=0) for i in range(frames)])
    ds.NumberOfFrames = frames
    ds.PixelData = pixels.tobytes()
    plain, compressed = tmp_path / "plain.dcm", tmp_path / "jpll.dcm"
    ds.save_as(plain, enforce_file_format=True)
    subprocess.run(["dcmcjpeg", str(plain), str(compressed)], check=True, capture_output=True, timeout=120)
    return compressed, pixels


def _rewrite_offsets(path: Path, out: Path, shift: int) -> None:
    """The same fragments with a Basic Offset Table whose offsets after the first are ``shift`` bytes off (GDCM's
    example 00191113.dcm is off by one)."""
    import struct

    from pydicom.encaps import generate_frames

    ds = pydicom.dcmread(path)
    frames = list(generate_frames(ds.PixelData, number_of_frames=int(ds.NumberOfFrames)))
    offsets, position = [], 0
    for frame in frames:
        offsets.append(position + (shift if position else 0))
        position += len(frame) + 8

    def item(data: bytes) -> bytes:
        return b"\xfe\xff\x00\xe0" + struct.pack("<I", len(data)) + data

    ds.PixelData = item(b"".join(struct.pack("<I", o) for o in offsets)) + b"".join(item(f) for f in frames)
    ds["PixelData"].is_undefined_length = True
    ds.save_as(out)


def test_a_basic_offset_table_off_by_one_is_decoded_by_gdcm(tmp_path: Path) -> None:
    pytest.importorskip("gdcm")  # python-gdcm: an install requirement
    compressed, pixels = _jpeg_lossless_frames(tmp_path)
    bad = tmp_path / "offsets-off-by-one.dcm"
    _rewrite_offsets(compressed, bad, 1)
    ds = pydicom.dcmread(bad)
    with pytest.raises(StopIteration):  # what pydicom (every plug-in) says: an empty message
        _ = pydicom.dcmread(bad).pixel_array
    for frame in (1, 4):
        shown = np.asarray(to_pil(ds, frame))[..., 0]
        assert np.array_equal(shown, np.asarray(to_pil(pydicom.dcmread(compressed), frame))[..., 0])
        assert np.array_equal(np.argsort(shown[:, 0], kind="stable"),
                              np.argsort(pixels[frame - 1][:, 0], kind="stable"))  # the frame asked for


def test_undecodable_pixels_give_each_decoders_reason(tmp_path: Path) -> None:
    compressed, _ = _jpeg_lossless_frames(tmp_path, frames=1)
    ds = pydicom.dcmread(compressed)
    fragment = b"\xff\xd8\xff\xc3" + b"\x00" * 30  # a JPEG Lossless start, then nothing a decoder can use
    ds.PixelData = b"\xfe\xff\x00\xe0\x00\x00\x00\x00" + b"\xfe\xff\x00\xe0" + len(fragment).to_bytes(4, "little") \
        + fragment
    ds["PixelData"].is_undefined_length = True
    ds.save_as(tmp_path / "broken.dcm")
    with pytest.raises(ImageError) as raised:
        to_pil(pydicom.dcmread(tmp_path / "broken.dcm"))
    message = str(raised.value)
    assert "JPEG Lossless" in message and "pydicom: " in message and "GDCM: " in message
    for part in message.split(": ", 1)[1].split("; "):
        assert part.split(": ", 1)[-1].strip(), message  # every decoder's reason has words
