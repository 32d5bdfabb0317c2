"""Reading an inbound HL7 v2 ``ORU^R01`` (a radiologist's report) and writing its acknowledgement.

Parsing is python-hl7's (``hl7.parse``, ``Message.extract_field``, which also undoes the escapes); this module says
what the node needs of a message (sender, control id, accession number, result status, report text) and why one
cannot be taken, as an :class:`Refusal` carrying the acknowledgement code (``AE``: an error the sender can correct
and send again; ``AR``: a message this receiver never takes) and the HL7 table 0357 error code. Pure: text in, data
out.
"""
from __future__ import annotations

import datetime as dt
import logging
import re
import secrets
from collections.abc import Sequence
from dataclasses import dataclass

import hl7
import hl7.containers
import hl7.util

# python-hl7 logs a field's text when an escape sequence is unknown: report text (possibly patient data) never goes
# to the logs, so its two loggers (named by file path) keep to errors
for _module in (hl7.util, hl7.containers):
    logging.getLogger(_module.__file__).setLevel(logging.ERROR)

ACCEPT, ERROR, REJECT = "AA", "AE", "AR"
TEXT_VALUE_TYPES = ("TX", "FT", "ST")
# HL7 table 0357 (message error condition codes)
SEGMENT_SEQUENCE_ERROR, REQUIRED_FIELD_MISSING, DATA_TYPE_ERROR = "100", "101", "102"
UNSUPPORTED_MESSAGE_TYPE, UNSUPPORTED_EVENT, UNSUPPORTED_VERSION = "200", "201", "203"
APPLICATION_INTERNAL_ERROR = "207"
_ERROR_NAMES = {"100": "Segment sequence error", "101": "Required field missing", "102": "Data type error",
                "204": "Unknown key identifier",
                "200": "Unsupported message type", "201": "Unsupported event code", "203": "Unsupported version id",
                "207": "Application internal error"}
_CHARSETS = {"": "utf-8", "ASCII": "ascii", "UNICODE UTF-8": "utf-8", "UNICODE": "utf-8", "8859/1": "latin-1",
             "8859/2": "iso8859-2", "8859/5": "iso8859-5", "8859/7": "iso8859-7", "8859/9": "iso8859-9",
             "8859/15": "iso8859-15"}


class Refusal(ValueError):
    """Why a message is not taken: ``ack`` AE or AR, ``code`` from HL7 table 0357, ``reason`` for the sender and the
    admin (never patient data)."""

    def __init__(self, ack: str, code: str, reason: str) -> None:
        super().__init__(reason)
        self.ack, self.code, self.reason = ack, code, reason


@dataclass(frozen=True)
class Header:
    """What the acknowledgement needs of the message header (empty strings where the message had none). The raw
    fields are kept escaped, to be copied into the ACK as they came."""

    sending_application_raw: str = ""
    sending_facility_raw: str = ""
    sending_application: str = ""  # MSH-3, first component, unescaped
    sending_facility: str = ""  # MSH-4, first component
    control_id: str = ""  # MSH-10
    message_type: str = ""  # MSH-9 code^event, e.g. ORU^R01
    processing_id: str = ""  # MSH-11
    version: str = ""  # MSH-12


@dataclass(frozen=True)
class Report:
    """A parsed ORU^R01: its header, the accession number, OBR-25 and the report text (OBX of text types)."""

    header: Header
    accession_number: str
    accession_field: str  # where it was found, e.g. OBR-3
    result_status: str
    text: str


def decode(payload: bytes) -> str:
    """The message as text, in the character set MSH-18 names (UTF-8 when it names none; a message that is not
    valid UTF-8 is read as ISO 8859-1, which every byte is). Line ends normalised to the segment separator CR."""
    first = payload.split(b"\r", 1)[0].split(b"\n", 1)[0]
    fields = first.split(b"|")
    declared = fields[17].decode("ascii", "replace").split("^")[0].strip().upper() if len(fields) > 17 else ""
    codec = _CHARSETS.get(declared)
    if codec is None:
        raise Refusal(ERROR, DATA_TYPE_ERROR, f"MSH-18 character set {declared!r} is not supported "
                                              f"(supported: {', '.join(c for c in _CHARSETS if c)})")
    try:
        text = payload.decode(codec)
    except UnicodeDecodeError:
        if declared:
            raise Refusal(ERROR, DATA_TYPE_ERROR, f"the message is not valid {declared} (MSH-18)") from None
        text = payload.decode("latin-1")
    return re.sub(r"\r\n|\n|\r", "\r", text).strip("\r\n ") + "\r"


def _get(message: hl7.Message, segment: str, field: int, repeat: int = 1, component: int = 1) -> str:
    try:
        return str(message.extract_field(segment, 1, field, repeat, component)).strip()
    except (KeyError, IndexError):
        return ""


def _raw(message: hl7.Message, field: int) -> str:
    try:
        return str(message.segment("MSH")(field))
    except (KeyError, IndexError):
        return ""


def parse_header(text: str) -> tuple[hl7.Message | None, Header]:
    """python-hl7's message and the header, or (None, an empty header) when ``text`` is no HL7 v2 message."""
    if not text.startswith("MSH") or len(text) < 8:
        return None, Header()
    try:
        message = hl7.parse(text)
        message.segment("MSH")
    except (hl7.ParseException, IndexError, KeyError, ValueError):
        return None, Header()
    code, event = _get(message, "MSH", 9, 1, 1), _get(message, "MSH", 9, 1, 2)
    header = Header(
        sending_application_raw=_raw(message, 3), sending_facility_raw=_raw(message, 4),
        sending_application=_get(message, "MSH", 3), sending_facility=_get(message, "MSH", 4),
        control_id=_get(message, "MSH", 10), message_type=f"{code}^{event}" if event else code,
        processing_id=_get(message, "MSH", 11), version=_get(message, "MSH", 12))
    return message, header


def report_text(message: hl7.Message) -> str:
    """The text of every OBX of a text value type (TX, FT, ST), one line per repetition, in message order."""
    lines: list[str] = []
    repetition = message.separators[2] if len(message.separators) > 2 else "~"
    for segment in message.segments("OBX") if _has(message, "OBX") else []:
        try:
            value_type = str(segment(2)).strip().upper()
            value = str(segment(5))
        except IndexError:
            continue
        if value_type not in TEXT_VALUE_TYPES:
            continue
        for piece in value.split(repetition):
            lines.append(str(message.unescape(piece)).replace("\r", "\n"))
    return "\n".join(lines).strip()


def _has(message: hl7.Message, segment: str) -> bool:
    try:
        message.segment(segment)
    except KeyError:
        return False
    return True


def parse_report(text: str, accession_fields: Sequence[str]) -> Report:
    """The report in ``text``; :class:`Refusal` naming what is wrong otherwise."""
    message, header = parse_header(text)
    if message is None:
        first = text[:3] if text[:3].isalnum() else "?"
        raise Refusal(ERROR, SEGMENT_SEQUENCE_ERROR, f"not an HL7 v2 message (its first segment is {first!r}, not "
                                                     f"a readable MSH)")
    check_header(header)
    if not _has(message, "OBR"):
        raise Refusal(ERROR, SEGMENT_SEQUENCE_ERROR, "the ORU^R01 has no OBR segment")
    accession, where = "", ""
    for name in accession_fields:
        segment, number = name.split("-")
        accession = _get(message, segment, int(number)) if _has(message, segment) else ""
        if accession:
            where = name
            break
    if not accession:
        raise Refusal(ERROR, REQUIRED_FIELD_MISSING, f"no accession number (looked in {', '.join(accession_fields)})")
    if len(accession) > 64:
        raise Refusal(ERROR, DATA_TYPE_ERROR, f"the accession number in {where} is longer than 64 characters")
    body = report_text(message)
    if not body:
        raise Refusal(ERROR, REQUIRED_FIELD_MISSING, "no report text (no OBX of value type TX, FT or ST)")
    return Report(header, accession, where, _get(message, "OBR", 25).upper(), body)


def check_header(header: Header) -> None:
    """Refusal when the header says this is no message this receiver takes (type, event, version, control id)."""
    if not header.control_id:
        raise Refusal(ERROR, REQUIRED_FIELD_MISSING, "MSH-10 (message control id) is empty")
    code, _, event = header.message_type.partition("^")
    if code != "ORU":
        raise Refusal(REJECT, UNSUPPORTED_MESSAGE_TYPE, f"message type {header.message_type or '(empty)'} is not "
                                                        f"taken here (only ORU^R01, a report)")
    if event != "R01":
        raise Refusal(REJECT, UNSUPPORTED_EVENT, f"event {event or '(empty)'} is not taken here (only ORU^R01)")
    if header.version and not header.version.startswith("2."):
        raise Refusal(REJECT, UNSUPPORTED_VERSION, f"HL7 version {header.version} is not taken (only 2.x)")


def escape(text: str) -> str:
    """``text`` as an HL7 field value with the default delimiters (``|^~\\&`` escaped, line ends as spaces)."""
    out = text.replace("\\", "\\E\\").replace("|", "\\F\\").replace("^", "\\S\\").replace("~", "\\R\\")
    return re.sub(r"[\r\n\x0b\x1c]+", " ", out.replace("&", "\\T\\"))


def acknowledgement(header: Header, code: str, text: str, *, application: str, facility: str,
                    error_code: str | None = None, severity: str = "E", now: dt.datetime | None = None) -> str:
    """An original-mode ``ACK^R01`` for a message with ``header`` (HL7 2.5.1 section 2.9.2): MSH, MSA with ``code``
    and ``text``, and an ERR (``error_code`` from table 0357, ``severity`` E or W) when one is given."""
    now = now or dt.datetime.now(dt.UTC)
    event = header.message_type.partition("^")[2] or "R01"
    msh = "|".join(["MSH", "^~\\&", escape(application), escape(facility), header.sending_application_raw,
                    header.sending_facility_raw, now.strftime("%Y%m%d%H%M%S"), "", f"ACK^{escape(event)}^ACK",
                    f"CXR{now:%Y%m%d%H%M%S}{secrets.token_hex(4).upper()}", escape(header.processing_id or "P"),
                    escape(header.version or "2.5.1")])
    segments = [msh, f"MSA|{code}|{escape(header.control_id)}|{escape(text[:80])}"]
    if error_code is not None:
        name = _ERROR_NAMES.get(error_code, "")
        segments.append(f"ERR|||{error_code}^{escape(name)}^HL70357|{severity}||||{escape(text)}")
    return "\r".join(segments) + "\r"
