"""HL7 v2 encoding: the delimiters, escaping every value, segments, and reading a segment back (an ACK).

Every value that comes from a source or the model goes through :func:`escape`: the five delimiters become the
standard escape sequences (``|`` ``\\F\\``, ``^`` ``\\S\\``, ``&`` ``\\T\\``, ``~`` ``\\R\\``, ``\\`` ``\\E\\``), and
every control character (CR and LF included) becomes a hexadecimal escape ``\\Xhh\\``, so no value can end a
field, a component or a segment, or an MLLP frame (0x0B, 0x1C). Text is sent as UTF-8 (MSH-18 ``UNICODE UTF-8``,
HL7 table 0211): non-ASCII letters travel as they are.
"""
from __future__ import annotations

import re
from collections.abc import Sequence

FIELD = "|"
COMPONENT = "^"
REPETITION = "~"
ESCAPE = "\\"
SUBCOMPONENT = "&"
ENCODING_CHARACTERS = COMPONENT + REPETITION + ESCAPE + SUBCOMPONENT
SEGMENT_END = "\r"
CHARSET = "UNICODE UTF-8"  # MSH-18 (HL7 table 0211)
ENCODING = "utf-8"  # what CHARSET means on the wire

_ESCAPES = {ESCAPE: "\\E\\", FIELD: "\\F\\", COMPONENT: "\\S\\", SUBCOMPONENT: "\\T\\", REPETITION: "\\R\\"}
_UNESCAPES = {"E": ESCAPE, "F": FIELD, "S": COMPONENT, "T": SUBCOMPONENT, "R": REPETITION}
_ESCAPE_SEQUENCE = re.compile(r"\\(E|F|S|T|R|X(?:[0-9A-Fa-f]{2})+|\.br)\\")

# a field: text, or components (each text, or subcomponents)
Component = str | Sequence[str]
Field = str | Sequence[Component]


def escape(text: str) -> str:
    """``text`` safe inside any field, component or subcomponent."""
    out = []
    for ch in text:
        if ch in _ESCAPES:
            out.append(_ESCAPES[ch])
        elif ord(ch) < 0x20 or ord(ch) == 0x7F:
            out.append(f"\\X{ord(ch):02X}\\")
        else:
            out.append(ch)
    return "".join(out)


def unescape(text: str) -> str:
    """The value behind ``text`` (the inverse of :func:`escape`; ``\\.br\\`` is a line break)."""
    def one(match: re.Match[str]) -> str:
        code = match.group(1)
        if code in _UNESCAPES:
            return _UNESCAPES[code]
        if code == ".br":
            return "\n"
        data = bytes.fromhex(code[1:])
        return data.decode(ENCODING, errors="replace")
    return _ESCAPE_SEQUENCE.sub(one, text)


def _component(value: Component) -> str:
    if isinstance(value, str):
        return escape(value)
    return SUBCOMPONENT.join(escape(part) for part in value).rstrip(SUBCOMPONENT)


def field(value: Field) -> str:
    """One field: text, or a sequence of components (each text or a sequence of subcomponents); trailing empty
    components dropped."""
    if isinstance(value, str):
        return escape(value)
    return COMPONENT.join(_component(part) for part in value).rstrip(COMPONENT)


def segment(name: str, *fields: Field) -> str:
    """``NAME|field 1|field 2...`` (trailing empty fields dropped). Not for MSH (see :func:`msh`)."""
    return FIELD.join([name, *(field(value) for value in fields)]).rstrip(FIELD)


def numbered(name: str, fields: dict[int, Field]) -> str:
    """A segment from ``{field number: value}`` (the fields not named are empty). Not for MSH."""
    last = max(fields, default=0)
    return segment(name, *(fields.get(number, "") for number in range(1, last + 1)))


def msh(*fields: Field) -> str:
    """The MSH segment from MSH-3 on (MSH-1 is the field separator, MSH-2 the encoding characters)."""
    return FIELD.join(["MSH", ENCODING_CHARACTERS, *(field(value) for value in fields)]).rstrip(FIELD)


def message(segments: Sequence[str]) -> str:
    return SEGMENT_END.join(segments) + SEGMENT_END


def encode(text: str) -> bytes:
    """The message as it goes on the wire (MSH-18's charset)."""
    return text.encode(ENCODING)


def segments(text: str) -> list[list[str]]:
    """A received message split into segments and fields (raw: still escaped). CR, LF or CRLF end a segment."""
    rows = [line for line in re.split(r"\r\n|\r|\n", text) if line.strip()]
    return [line.split(FIELD) for line in rows]


def component(raw_field: str, index: int) -> str:
    """Component ``index`` (1-based) of a raw field, unescaped."""
    parts = raw_field.split(COMPONENT)
    return unescape(parts[index - 1]) if 0 < index <= len(parts) else ""
