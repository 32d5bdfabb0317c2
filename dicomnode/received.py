"""What the node makes of one received instance before it stores it: the header check and the C-STORE statuses.

Only header tags are parsed (the pixel data is never loaded). Statuses returned (reason always logged and audited):

======  =====================================================================================
0x0000  stored (also for a duplicate SOP Instance UID already stored: idempotent, file kept)
0xA700  out of resources: spool or database write failed, or free disk below node.min_free_disk_mb
0xC000  cannot understand: not parseable as DICOM, or truncated (pixel data shorter than declared)
0xC001  cannot understand: Study, Series or SOP Instance UID missing
0xC002  cannot understand: a UID does not follow the UID grammar (e.g. ``../x``); never used as a path
0xC003  cannot understand: SOP Instance/Class UID of the dataset differs from the C-STORE request
======  =====================================================================================
"""
from __future__ import annotations

from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

from pydicom import dcmread
from pydicom.dataelem import RawDataElement
from pydicom.errors import InvalidDicomError
from pydicom.tag import BaseTag, Tag

from dicomnode.uids import clean_uid

STATUS_SUCCESS = 0x0000
STATUS_OUT_OF_RESOURCES = 0xA700
STATUS_UNREADABLE = 0xC000
STATUS_MISSING_UID = 0xC001
STATUS_INVALID_UID = 0xC002
STATUS_UID_MISMATCH = 0xC003

PIXEL_TAGS = (0x7FE00010, 0x7FE00008, 0x7FE00009)  # PixelData, FloatPixelData, DoubleFloatPixelData
HEADER_TAGS: list[BaseTag] = [Tag(t) for t in (
    "SpecificCharacterSet", "SOPClassUID", "SOPInstanceUID", "StudyInstanceUID", "SeriesInstanceUID", "Modality",
    "BodyPartExamined", "ViewPosition", "PatientID", "AccessionNumber", "Rows", "Columns", "BitsAllocated",
    "SamplesPerPixel", "NumberOfFrames", *PIXEL_TAGS,
)]
UNDEFINED_LENGTH = 0xFFFFFFFF


class Rejected(Exception):
    """A C-STORE answered with a failure status; ``reason`` is logged."""

    def __init__(self, status: int, reason: str):
        super().__init__(reason)
        self.status = status
        self.reason = reason


@dataclass(frozen=True)
class InstanceHeader:
    """What an instance's header says about it: shared by the header check and the database record
    (:class:`dicomnode.db.ingest.InstanceRecord`)."""

    study_uid: str
    series_uid: str
    sop_uid: str
    sop_class_uid: str
    transfer_syntax_uid: str | None
    modality: str | None
    body_part: str | None
    view_position: str | None
    patient_id: str | None
    accession_number: str | None


@dataclass(frozen=True)
class ParsedHeader(InstanceHeader):
    """The header check's result (``modality`` and ``body_part`` are "" when absent)."""

    modality: str
    body_part: str
    has_pixel_data: bool

    def header_fields(self) -> dict[str, Any]:
        """The :class:`InstanceHeader` fields, absent values as None."""
        values = {f.name: getattr(self, f.name) for f in fields(InstanceHeader)}
        values.update(modality=self.modality or None, body_part=self.body_part or None)
        return values


def _text_or_none(ds: Any, keyword: str) -> str | None:
    """A header value as stripped text; None when absent or blank."""
    value = ds.get(keyword)
    if value is None:
        return None
    return str(value).strip() or None


def parse_header(path: Path, request_sop_uid: str | None, request_sop_class: str | None) -> ParsedHeader:
    """Read only the tags the node needs from a received Part-10 file; raise :class:`Rejected` when invalid."""
    size = path.stat().st_size
    try:
        ds = dcmread(path, defer_size=1024, specific_tags=HEADER_TAGS)
        raw_uids = {k: ds.get(k) for k in ("StudyInstanceUID", "SeriesInstanceUID", "SOPInstanceUID", "SOPClassUID")}
        meta_ts = ds.file_meta.get("TransferSyntaxUID") if hasattr(ds, "file_meta") else None
    except (InvalidDicomError, EOFError, ValueError, KeyError, TypeError, OSError, NotImplementedError) as exc:
        raise Rejected(STATUS_UNREADABLE, f"unreadable dataset: {type(exc).__name__}: {exc}") from None
    missing = [k for k, v in raw_uids.items() if v is None or str(v).strip("\x00 ") == ""]
    if len(missing) == len(raw_uids):
        raise Rejected(STATUS_UNREADABLE, "not a DICOM dataset: no SOP, Study or Series UID found")
    if missing:
        raise Rejected(STATUS_MISSING_UID, f"missing {', '.join(missing)}")
    uids = {k: clean_uid(v) for k, v in raw_uids.items()}
    bad = [k for k, v in uids.items() if v is None]
    if bad:
        raise Rejected(STATUS_INVALID_UID, f"invalid UID in {', '.join(bad)}")
    if request_sop_uid and clean_uid(request_sop_uid) != uids["SOPInstanceUID"]:
        raise Rejected(STATUS_UID_MISMATCH, "SOP Instance UID differs from the C-STORE request")
    if request_sop_class and clean_uid(request_sop_class) != uids["SOPClassUID"]:
        raise Rejected(STATUS_UID_MISMATCH, "SOP Class UID differs from the C-STORE request")
    has_pixels = False
    for tag in PIXEL_TAGS:
        if tag not in ds:
            continue
        has_pixels = True
        raw = ds.get_item(tag, keep_deferred=True)
        if isinstance(raw, RawDataElement) and raw.length != UNDEFINED_LENGTH:
            deflated = str(meta_ts) == "1.2.840.10008.1.2.1.99"  # value_tell is in the inflated stream
            if not deflated and raw.value_tell + raw.length > size:
                raise Rejected(STATUS_UNREADABLE, "truncated: pixel data shorter than its declared length")
            expected = _expected_native_length(ds)
            if tag == 0x7FE00010 and expected and raw.length < expected:
                raise Rejected(STATUS_UNREADABLE, f"truncated: pixel data {raw.length} bytes, expected {expected}")
    try:
        modality = _text_or_none(ds, "Modality") or ""
        body_part = _text_or_none(ds, "BodyPartExamined") or ""
        return ParsedHeader(
            study_uid=uids["StudyInstanceUID"], series_uid=uids["SeriesInstanceUID"],  # type: ignore[arg-type]
            sop_uid=uids["SOPInstanceUID"], sop_class_uid=uids["SOPClassUID"],  # type: ignore[arg-type]
            transfer_syntax_uid=clean_uid(meta_ts), modality=modality.upper(), body_part=body_part.upper(),
            view_position=(_text_or_none(ds, "ViewPosition") or None), patient_id=_text_or_none(ds, "PatientID"),
            accession_number=_text_or_none(ds, "AccessionNumber"), has_pixel_data=has_pixels,
        )
    except Exception as exc:  # undecodable text values
        raise Rejected(STATUS_UNREADABLE, f"unreadable attribute: {type(exc).__name__}") from None


def _expected_native_length(ds: Any) -> int | None:
    """Bytes of native (uncompressed) pixel data the header implies, or None when compressed/unknown."""
    ts = ds.file_meta.get("TransferSyntaxUID") if hasattr(ds, "file_meta") else None
    if ts is None or getattr(ts, "is_compressed", True):
        return None
    try:
        frames = int(ds.get("NumberOfFrames") or 1)
        bits = int(ds.BitsAllocated)
        n = int(ds.Rows) * int(ds.Columns) * int(ds.get("SamplesPerPixel") or 1) * frames
    except (AttributeError, TypeError, ValueError):
        return None
    return (n * bits + 7) // 8
