"""Decoded pixels of a DICOM instance: pydicom first (pylibjpeg, openjpeg, libjpeg, rle; GDCM's pydicom plug-in
when installed), then GDCM reading the whole file as its fallback, and always a reason that says what failed.

pydicom finds each frame of encapsulated pixel data through the Basic Offset Table before any plug-in sees it, so
a file whose table does not match its fragments (GDCM's example ``00191113.dcm``; its offsets are off by one)
fails in every pydicom plug-in alike, with a bare ``StopIteration``. GDCM's own reader (``gdcm.ImageReader``, PyPI
``python-gdcm``) checks the table against the fragments, as DCMTK does, and decodes such files.
"""
from __future__ import annotations

import logging
import os
import tempfile

import numpy as np
from pydicom.dataset import Dataset

log = logging.getLogger(__name__)

# GDCM scalar type -> numpy dtype (gdcm.PixelFormat.GetScalarTypeAsString)
_GDCM_DTYPES = {"UINT8": np.uint8, "INT8": np.int8, "UINT16": np.uint16, "INT16": np.int16, "UINT32": np.uint32,
                "INT32": np.int32, "FLOAT32": np.float32, "FLOAT64": np.float64}


class DecodeError(ValueError):
    """Pixel data that no decoder could read; the message names each decoder's reason (never empty)."""


def reason(exc: BaseException) -> str:
    """``exc`` as one line for an admin: its message, or its type where it has none."""
    text = " ".join(str(exc).split())
    if isinstance(exc, StopIteration):
        return "fewer frames found than Number of Frames (the Basic Offset Table does not match the fragments)"
    return text or f"{type(exc).__name__} (no message)"


def decoded_pixels(ds: Dataset) -> np.ndarray:
    """Every frame of ``ds`` as pydicom's ``pixel_array`` gives it ((frames,) rows, columns[, samples]; colour as
    RGB). Raises ``DecodeError`` naming what pydicom and GDCM each said."""
    try:
        return ds.pixel_array
    except Exception as exc:  # noqa: BLE001 - decoder errors come in many types (StopIteration included)
        first = reason(exc)
    syntax = getattr(getattr(ds, "file_meta", None), "TransferSyntaxUID", None)
    if syntax is None or not syntax.is_compressed:
        raise DecodeError(f"pydicom: {first}")
    try:
        pixels = _gdcm_pixels(ds)
    except Exception as exc:  # noqa: BLE001 - as above
        raise DecodeError(f"pydicom: {first}; GDCM: {reason(exc)}") from exc
    log.info("instance %s decoded by GDCM after pydicom failed: %s", ds.get("SOPInstanceUID", "?"), first)
    return pixels


def _gdcm_pixels(ds: Dataset) -> np.ndarray:
    """The whole pixel data decoded by GDCM's reader (the dataset written as a Part-10 file for it)."""
    try:
        import gdcm  # type: ignore[import-untyped, import-not-found, unused-ignore]
    except ImportError as exc:
        raise RuntimeError("not installed (pip install python-gdcm)") from exc
    handle, path = tempfile.mkstemp(prefix="cxr-gdcm-", suffix=".dcm")
    os.close(handle)
    try:
        ds.save_as(path, enforce_file_format=True)
        reader = gdcm.ImageReader()
        reader.SetFileName(path)
        if not reader.Read():
            raise RuntimeError("cannot read the file")
        image = reader.GetImage()
        dims = [image.GetDimension(i) for i in range(image.GetNumberOfDimensions())]
        columns, rows = dims[0], dims[1]
        frames = dims[2] if len(dims) > 2 else 1
        pixel_format = image.GetPixelFormat()
        dtype = _GDCM_DTYPES.get(pixel_format.GetScalarTypeAsString())
        if dtype is None:
            raise RuntimeError(f"pixel format {pixel_format.GetScalarTypeAsString()} is not supported")
        samples = pixel_format.GetSamplesPerPixel()
        decoded = image.GetBuffer()  # python-gdcm hands the bytes over as str; None when its decoder failed
        if decoded is None:
            raise RuntimeError("its decoder could not decode the pixel data")
        buffer = decoded.encode("utf-8", "surrogateescape")
    finally:
        os.unlink(path)
    expected = frames * rows * columns * samples * np.dtype(dtype).itemsize
    if len(buffer) != expected:
        raise RuntimeError(f"decoded {len(buffer)} bytes where {expected} were expected")
    pixels = np.frombuffer(buffer, dtype=dtype)
    if samples > 1:
        planar = image.GetPlanarConfiguration() == 1
        shape = (frames, samples, rows, columns) if planar else (frames, rows, columns, samples)
        pixels = pixels.reshape(shape)
        if planar:
            pixels = np.moveaxis(pixels, 1, -1)
        if str(image.GetPhotometricInterpretation()).strip().upper().startswith("YBR"):
            from pydicom.pixels import convert_color_space

            pixels = convert_color_space(pixels, "YBR_FULL", "RGB")
    else:
        pixels = pixels.reshape(frames, rows, columns)
    return pixels[0] if frames == 1 else pixels
