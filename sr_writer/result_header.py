"""What messages about a result set (HL7 ORU, FHIR) say about the study, read from the stored SR's header: the
patient and study attributes the SR copied from the sources after header hygiene (``sr_writer.hygiene``), and the
UIDs of the result objects. Data in, data out: the caller reads the SR file."""
from __future__ import annotations

import datetime as dt
import hashlib
from base64 import b32encode
from collections.abc import Sequence
from dataclasses import dataclass, field

from pydicom.dataset import Dataset


@dataclass(frozen=True)
class ObjectRef:
    """A stored result object, by its UIDs."""

    kind: str  # sr, sc, ...
    sop_class_uid: str
    sop_instance_uid: str
    series_instance_uid: str


@dataclass(frozen=True)
class StudyHeader:
    study_instance_uid: str
    patient_id: str = ""
    issuer_of_patient_id: str = ""
    patient_name: str = ""  # DICOM PN, alphabetic group: Family^Given^Middle^Prefix^Suffix
    birth_date: str = ""  # DA
    sex: str = ""  # M, F, O or ""
    accession_number: str = ""
    study_date: str = ""  # DA
    study_time: str = ""  # TM
    timezone_offset: str = ""  # Timezone Offset From UTC (+HHMM / -HHMM) of the dates and times, when given
    study_description: str = ""
    procedure_code: tuple[str, str, str] | None = None  # (value, meaning, scheme) of the Procedure Code Sequence
    sr: ObjectRef | None = None
    pages: tuple[ObjectRef, ...] = field(default_factory=tuple)

    @property
    def procedure_text(self) -> str:
        return (self.procedure_code[1] if self.procedure_code else "") or self.study_description or "Chest X-ray"


def _text(ds: Dataset, keyword: str) -> str:
    value = ds.get(keyword)
    return "" if value is None else str(value).strip()


def study_header(sr: Dataset, objects: Sequence[ObjectRef] = ()) -> StudyHeader:
    """The header of ``sr`` (the stored SR of a result set) and the result objects' UIDs."""
    code = None
    procedure = sr.get("ProcedureCodeSequence")
    if procedure:
        item = procedure[0]
        code = (str(item.get("CodeValue", "")), str(item.get("CodeMeaning", "")),
                str(item.get("CodingSchemeDesignator", "")))
    refs = list(objects)
    sr_ref = next((o for o in refs if o.kind == "sr"), None) or ObjectRef(
        "sr", _text(sr, "SOPClassUID"), _text(sr, "SOPInstanceUID"), _text(sr, "SeriesInstanceUID"))
    return StudyHeader(
        study_instance_uid=_text(sr, "StudyInstanceUID"),
        patient_id=_text(sr, "PatientID"),
        issuer_of_patient_id=_text(sr, "IssuerOfPatientID"),
        patient_name=_text(sr, "PatientName").split("=")[0],
        birth_date=_text(sr, "PatientBirthDate"),
        sex=_text(sr, "PatientSex").upper(),
        accession_number=_text(sr, "AccessionNumber"),
        study_date=_text(sr, "StudyDate"),
        study_time=_text(sr, "StudyTime"),
        timezone_offset=_text(sr, "TimezoneOffsetFromUTC"),
        study_description=_text(sr, "StudyDescription"),
        procedure_code=code,
        sr=sr_ref,
        pages=tuple(o for o in refs if o.kind == "sc"),
    )


def message_id(prefix: str, study_instance_uid: str, generation: int, length: int = 20) -> str:
    """A message's id, the same for the same study generation (what a destination is never queued twice): the
    ``prefix`` and a hash, ``length`` characters (HL7 MSH-10 holds 20)."""
    digest = hashlib.sha256(f"{study_instance_uid}\n{generation}".encode()).digest()
    return (prefix + b32encode(digest).decode().rstrip("="))[:length]


def dicom_datetime(date: str, time: str) -> str:
    """DICOM DA + TM as ``YYYYMMDDHHMMSS[.ffff]`` (what HL7 DTM takes); "" without a date."""
    if len(date) != 8 or not date.isdigit():
        return ""
    whole, _, fraction = time.partition(".")
    whole = "".join(ch for ch in whole if ch.isdigit())[:6]
    fraction = "".join(ch for ch in fraction if ch.isdigit())[:4]
    return date + whole + (f".{fraction}" if fraction and len(whole) == 6 else "")


def iso_datetime(date: str, time: str, offset: str = "") -> str:
    """DICOM DA + TM as FHIR dateTime: with the time only when the time zone is known (``offset`` +HHMM; FHIR
    wants a zone with every time), else the day alone; "" without a date."""
    value = dicom_datetime(date, time)
    if not value:
        return ""
    day = f"{value[:4]}-{value[4:6]}-{value[6:8]}"
    clock = value[8:14]
    zone = offset if len(offset) == 5 and offset[0] in "+-" and offset[1:].isdigit() else ""
    if len(clock) < 6 or not zone:
        return day
    return f"{day}T{clock[:2]}:{clock[2:4]}:{clock[4:6]}{zone[:3]}:{zone[3:]}"


def utc_stamp(moment: dt.datetime) -> str:
    """``YYYYMMDDHHMMSS+0000`` (HL7 DTM with zone)."""
    return moment.astimezone(dt.UTC).strftime("%Y%m%d%H%M%S+0000")
