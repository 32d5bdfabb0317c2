"""Header hygiene at the boundary: what a result copies from its sources is checked against its VR and Type first.

Real modalities send headers that PACS store but that a new object may not carry (``75Y``, a 20-character StudyID,
an impossible birth date, ...). ``clean_sources`` returns checked copies of the source datasets (the sources are
never modified) and the list of what it did, by attribute keyword and never by value:

- a value whose repair is unambiguous is repaired (``75Y`` -> ``075Y``, ``2024-01-31`` -> ``20240131``, ``12:30``
  -> ``1230``, lower-case code strings, surrounding spaces, UTF-8 text without a character set, an enumerated value
  spelled out: ``MALE`` -> ``M``, ``LEFT`` -> ``L``, ``Y`` -> ``YES``);
- text keeps only what the strictest reading of PS3.5 allows: TAB (and, outside ST/LT/UT, CR, LF, FF, VT) becomes a
  space (the 2022 dciodvfy refuses a TAB in any text VR), other control characters are removed;
- an enumerated attribute (``sr_writer/data/enumerated_values.yaml``) outside its values, like any value invalid for
  its VR, is handled by its Type: a Type 2 attribute is emptied and a Type 3 (or 1C) attribute dropped; a sequence
  with an invalid value anywhere in its items is dropped whole; a missing Type 2 attribute is added empty (a missing
  PatientID, PatientName or StudyDate must not stop a result);
- a UID that the result must reference (study, series, instance, SOP class, and the Frame of Reference UID that
  the SR's image library names) is kept as the PACS holds it, even with leading-zero components or more than 64
  characters: a replaced StudyInstanceUID would file the result in another study, a replaced Frame of Reference UID
  would name a frame nobody has. ``invalid_reference_uids`` lists them so that validation accepts exactly those
  inherited values;
- a defect nothing can repair (no StudyInstanceUID; a SOP class with no IOD in the current standard, such as the
  retired Ultrasound Image Storage, whose patient and study modules highdicom cannot look up) raises
  ``UnrepairableHeader`` naming the attribute.

Checked: the root attributes of the Patient, Clinical Trial Subject, General Study, Patient Study and Clinical
Trial Study modules (what highdicom copies into the SR and SC), the equipment attributes highdicom copies into the
acquisition equipment item of Contributing Equipment, the references, Frame of Reference UID, Laterality and Body
Part Examined.
"""
from __future__ import annotations

import copy
import datetime as dt
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from functools import lru_cache
from importlib import resources
from typing import Any

import yaml
from highdicom._standard_utils import get_module_attribute_map, get_sop_class_iod_map
from pydicom.datadict import dictionary_VM, dictionary_VR, tag_for_keyword
from pydicom.dataelem import DataElement
from pydicom.dataset import Dataset

COPIED_MODULES = ("patient", "clinical-trial-subject", "general-study", "patient-study", "clinical-trial-study")
REFERENCED_UIDS = ("StudyInstanceUID", "SeriesInstanceUID", "SOPInstanceUID", "SOPClassUID", "FrameOfReferenceUID")
IDENTIFYING_UIDS = frozenset(REFERENCED_UIDS) - {"SOPClassUID"}  # values that name the sources, never our objects
# Beyond the copied modules: the references, what the pages copy (Laterality; Body Part Examined), and what highdicom
# copies into the SR's and pages' acquisition equipment item (ContributingEquipment.for_image_acquisition; an
# attribute dropped here is left out of that item, which is optional).
EXTRA_TYPES = {"SeriesInstanceUID": "1", "SOPInstanceUID": "1", "SOPClassUID": "1", "FrameOfReferenceUID": "1",
               "BodyPartExamined": "3", "Laterality": "2C",
               **dict.fromkeys(("Manufacturer", "ManufacturerModelName", "SoftwareVersions", "DeviceSerialNumber",
                                "InstitutionName", "InstitutionalDepartmentName", "InstitutionAddress", "StationName",
                                "AcquisitionDateTime", "AcquisitionDate", "AcquisitionTime"), "3")}
REQUIRED_EMPTY = ("PatientName", "PatientID", "PatientBirthDate", "PatientSex", "StudyDate", "StudyTime",
                  "ReferringPhysicianName", "StudyID", "AccessionNumber")
MAX_LENGTH = {"AE": 16, "AS": 4, "CS": 16, "DA": 8, "DS": 16, "DT": 26, "IS": 12, "LO": 64, "LT": 10240, "SH": 16,
              "ST": 1024, "TM": 14, "UI": 64, "UC": 1 << 30, "UT": 1 << 30}
TEXT_VRS = ("AE", "CS", "SH", "LO", "PN", "ST", "LT", "UT", "UC")
MULTILINE_VRS = ("ST", "LT", "UT")
# PS3.5 6.1.3 (strictest reading): ST, LT and UT may hold CR, LF and FF; no text VR may hold TAB or another control
# character. ESC (\x1b) stays: it starts ISO 2022 code extensions.
_SPACE_LIKE = re.compile(r"[\t\x0b]")
_SPACE_LIKE_ONE_LINE = re.compile(r"[\t-\r]")
_CONTROL = re.compile(r"[\x00-\x08\x0e-\x1a\x1c-\x1f\x7f-\x9f]")
_UID = re.compile(r"^(0|[1-9][0-9]*)(\.(0|[1-9][0-9]*))*$")
_AS = re.compile(r"^[0-9]{3}[DWMY]$")
_AS_SHORT = re.compile(r"^([0-9]{1,2})\s*([DWMYdwmy])$")
_TM = re.compile(r"^([01][0-9]|2[0-3])([0-5][0-9]([0-5][0-9](\.[0-9]{1,6})?)?)?$")
_TM_COLONS = re.compile(r"^([0-9]{2}):([0-9]{2})(?::([0-9]{2}(\.[0-9]{1,6})?))?$")
_DA_SEPARATED = re.compile(r"^([0-9]{4})[-./]([0-9]{2})[-./]([0-9]{2})$")
_DS = re.compile(r"^[+-]?([0-9]+\.?[0-9]*|\.[0-9]+)([eE][+-]?[0-9]+)?$")
_IS = re.compile(r"^[+-]?[0-9]+$")
_CS = re.compile(r"^[A-Z0-9 _]*$")


class UnrepairableHeader(ValueError):
    """A source header defect that no repair can make good; the message names the attribute (never its value)."""


@dataclass(frozen=True)
class Repair:
    """One thing done to a copied attribute: keyword, action (repaired, emptied, dropped, added empty, kept) and
    why. Holds no value: it goes to INFO logs and the record's provenance."""

    keyword: str
    action: str
    reason: str

    def __str__(self) -> str:
        return f"{self.keyword}: {self.action} ({self.reason})"


@lru_cache(maxsize=1)
def attribute_types() -> dict[str, str]:
    """Keyword -> Type (1, 1C, 2, 2C, 3) of every attribute a result copies from its source."""
    types: dict[str, str] = {}
    modules = get_module_attribute_map()
    for module in COPIED_MODULES:
        for item in modules[module]:
            if not item["path"]:
                types.setdefault(str(item["keyword"]), str(item["type"]))
    types.update(EXTRA_TYPES)
    return types


def valid_uid(value: str) -> bool:
    return len(value) <= 64 and bool(_UID.match(value))


def _valid_date(text: str) -> bool:
    try:
        dt.datetime.strptime(text, "%Y%m%d")
    except ValueError:
        return False
    return len(text) == 8


# A check returns (new value or None when unchanged, why it was changed) or raises _Bad with the reason.
class _Bad(Exception):
    pass


def _check_text(vr: str, text: str, utf8_guess: bool) -> tuple[str, list[str]]:
    notes: list[str] = []
    if utf8_guess and any(ord(c) > 127 for c in text):  # before the control characters: C1 bytes are UTF-8 here
        try:
            redecoded = text.encode("latin-1").decode("utf-8")
        except (UnicodeEncodeError, UnicodeDecodeError):
            redecoded = text
        if redecoded != text:
            text = redecoded
            notes.append("UTF-8 text without Specific Character Set re-decoded")
    spaces = _SPACE_LIKE if vr in MULTILINE_VRS else _SPACE_LIKE_ONE_LINE
    if spaces.search(text):
        text = spaces.sub(" ", text)
        notes.append("tabs or line breaks replaced by spaces")
    if _CONTROL.search(text):
        text = _CONTROL.sub("", text)
        notes.append("control characters removed")
    if vr not in MULTILINE_VRS and text != text.strip():
        text = text.strip()
        notes.append("surrounding spaces removed")
    return text, notes


@lru_cache(maxsize=1)
def enumerated_values() -> dict[str, tuple[frozenset[str], dict[str, str]]]:
    """Keyword -> (its enumerated values, spellings repaired to a value), from ``data/enumerated_values.yaml``."""
    text = resources.files("sr_writer.data").joinpath("enumerated_values.yaml").read_text(encoding="utf-8")
    table: dict[str, tuple[frozenset[str], dict[str, str]]] = {}
    for keyword, entry in yaml.safe_load(text).items():
        values, spelled = entry["values"], entry.get("spelled", {})
        strings = [*values, *spelled, *spelled.values()]
        if tag_for_keyword(keyword) is None or not all(isinstance(v, str) for v in strings):
            raise ValueError(f"enumerated_values.yaml: {keyword}: unknown keyword or an unquoted value")
        if not set(spelled.values()) <= set(values):
            raise ValueError(f"enumerated_values.yaml: {keyword}: a spelling repairs to a value not in its list")
        table[keyword] = (frozenset(values), dict(spelled))
    return table


def _check_enumerated(keyword: str, text: str) -> tuple[str, list[str]]:
    """An enumerated value as given, or repaired from a known spelling; raises _Bad for anything else."""
    values, spelled = enumerated_values()[keyword]
    key = text.strip().upper()
    if text in values:
        return text, []
    if key in values or key in spelled:
        return spelled.get(key, key), ["enumerated value spelled differently"]
    raise _Bad(f"not one of its enumerated values ({', '.join(sorted(values))})")


def _check_value(vr: str, text: str, utf8_guess: bool) -> tuple[str, list[str]]:
    """One value as a string: (possibly repaired value, notes); raises _Bad when it cannot be repaired."""
    notes: list[str] = []
    if vr in TEXT_VRS:
        text, notes = _check_text(vr, text, utf8_guess)
    else:
        stripped = text.strip()
        if stripped != text:
            text, notes = stripped, ["surrounding spaces removed"]
    if not text:
        return text, notes
    if vr == "PN":
        for group in text.split("="):
            if len(group) > 64:
                raise _Bad("a name component group longer than 64 characters")
            if group.count("^") > 4:
                raise _Bad("more than 5 name components")
        return text, notes
    if vr == "CS":
        if text.upper() != text and _CS.match(text.upper()):
            text = text.upper()
            notes.append("upper-cased")
        if not _CS.match(text):
            raise _Bad("characters not allowed in a code string")
    elif vr == "AS":
        if not _AS.match(text):
            short = _AS_SHORT.match(text)
            if not short:
                raise _Bad("not an age string (nnnD/W/M/Y)")
            text = f"{int(short.group(1)):03d}{short.group(2).upper()}"
            notes.append("age zero-padded to nnnX")
    elif vr == "DA":
        if not _valid_date(text):
            separated = _DA_SEPARATED.match(text)
            candidate = "".join(separated.groups()) if separated else ""
            if not _valid_date(candidate):
                raise _Bad("not a possible date")
            text = candidate
            notes.append("date separators removed")
    elif vr == "TM":
        if not _TM.match(text):
            colons = _TM_COLONS.match(text)
            candidate = "".join(g for g in colons.groups()[:3] if g) if colons else ""
            if not _TM.match(candidate):
                raise _Bad("not a possible time")
            text = candidate
            notes.append("time separators removed")
    elif vr == "DS":
        if not _DS.match(text):
            raise _Bad("not a decimal string")
    elif vr == "IS":
        if not _IS.match(text) or not -(2**31) <= int(text) < 2**31:
            raise _Bad("not an integer string")
    elif vr == "UI":
        if not valid_uid(text):
            raise _Bad("not a valid UID (leading zeros, characters or more than 64 characters)")
    if len(text) > MAX_LENGTH.get(vr, 1 << 30):
        raise _Bad(f"longer than the {MAX_LENGTH[vr]} characters {vr} allows")
    return text, notes


def _as_strings(element: DataElement) -> list[str]:
    value = element.value
    values = list(value) if isinstance(value, (list, tuple)) or type(value).__name__ == "MultiValue" else [value]
    out = []
    for item in values:
        if item is None:
            out.append("")
        elif isinstance(getattr(item, "original_string", None), str):  # DS/IS as written (PN's is bytes)
            out.append(item.original_string)
        else:
            out.append(str(item))
    return out


def _check_element(element: DataElement, utf8_guess: bool) -> tuple[Any, list[str]] | None:
    """None when the element is fine; (new value, notes) when repaired; raises _Bad otherwise."""
    vr = element.VR
    enumerated = element.keyword in enumerated_values()
    if vr == "SQ":
        for item in element.value:
            for child in item:
                if child.VR == "SQ" or child.value not in (None, "", b""):
                    if _check_element(child, utf8_guess) is not None:
                        raise _Bad("a sequence item holds a value not valid for its VR or enumerated values")
        return None
    if element.value in (None, "", b""):
        return None
    if vr in ("US", "SS", "UL", "SL", "SV", "UV") and enumerated:  # binary: checked, never rewritten
        for text in _as_strings(element):
            if _check_enumerated(element.keyword, text)[1]:
                raise _Bad("not one of its enumerated values")
        return None
    if vr in ("OB", "OW", "OF", "OD", "OL", "OV", "UN", "US", "SS", "UL", "SL", "FL", "FD", "AT", "SV", "UV"):
        return None
    strings = _as_strings(element)
    vm = dictionary_VM(element.tag) if element.tag.is_private is False else "1-n"
    if vm == "1" and len(strings) > 1:
        raise _Bad("several values where one is allowed")
    checked, notes = [], []
    for text in strings:
        new, why = _check_value(vr, text, utf8_guess)
        if enumerated and new:
            new, spelled = _check_enumerated(element.keyword, new)
            why = why + spelled
        checked.append(new)
        notes += why
    if not notes:
        return None
    return (checked[0] if len(checked) == 1 else checked), sorted(set(notes))


def _replace(ds: Dataset, tag: int, vr: str, value: Any) -> None:
    del ds[tag]
    ds[tag] = DataElement(tag, vr, value)


def clean_source(source: Dataset) -> tuple[Dataset, list[Repair]]:
    """A checked copy of ``source`` (which is left untouched) and the repairs made (see the module docstring)."""
    ds = copy.copy(source)  # a new element dict: deleting or replacing an element here leaves the source alone
    ds._dict = dict(source._dict)
    repairs: list[Repair] = []
    types = attribute_types()
    charset = source.get("SpecificCharacterSet")
    utf8_guess = not charset or str(charset) in ("ISO_IR 6", "")
    if "StudyInstanceUID" not in ds or not str(ds.StudyInstanceUID or "").strip():
        raise UnrepairableHeader("StudyInstanceUID is missing: the result cannot be filed in its study")
    sop_class = str(ds.get("SOPClassUID", "") or "").strip()
    if sop_class not in get_sop_class_iod_map():  # highdicom copies patient and study by the source's IOD
        name = getattr(ds.get("SOPClassUID"), "name", "") or "unknown"
        raise UnrepairableHeader(f"SOPClassUID {sop_class or '(missing)'} ({name}) has no IOD in the standard this "
                                 "node knows (a retired or private class): no result can copy its patient and study")
    for keyword, kind in types.items():
        tag = tag_for_keyword(keyword)
        if tag is None or tag not in ds:
            continue
        try:
            element = ds[tag]  # a raw element is converted here: a value pydicom cannot read raises
        except Exception:  # any conversion failure is a defect of this attribute
            repairs.append(_unrepaired(ds, tag, dictionary_VR(tag), keyword, kind, "value not readable for its VR"))
            continue
        try:
            checked = _check_element(element, utf8_guess)
        except _Bad as bad:
            repairs.append(_unrepaired(ds, tag, element.VR, keyword, kind, str(bad)))
            continue
        if checked is not None:
            _replace(ds, tag, element.VR, checked[0])
            repairs.append(Repair(keyword, "repaired", ", ".join(checked[1])))
    identity = str(ds.get("PatientIdentityRemoved", "") or "").upper()
    if identity == "YES" and not ds.get("DeidentificationMethod") and not ds.get("DeidentificationMethodCodeSequence"):
        del ds.PatientIdentityRemoved
        repairs.append(Repair("PatientIdentityRemoved", "dropped", "YES without DeidentificationMethod (type 1C)"))
    for keyword in REQUIRED_EMPTY:
        if keyword not in ds:
            setattr(ds, keyword, "")
            repairs.append(Repair(keyword, "added empty", "type 2 attribute missing"))
    return ds, repairs


def _unrepaired(ds: Dataset, tag: int, vr: str, keyword: str, kind: str, reason: str) -> Repair:
    if keyword in REFERENCED_UIDS:
        return Repair(keyword, "kept", f"{reason}; must match what the PACS holds, validator finding accepted")
    if kind.startswith("2"):
        _replace(ds, tag, vr, [] if vr == "SQ" else "")
        return Repair(keyword, "emptied", f"{reason}; type {kind}")
    if kind.startswith("3") or kind == "1C":
        del ds[tag]
        return Repair(keyword, "dropped", f"{reason}; type {kind}")
    raise UnrepairableHeader(f"{keyword} in the source header: {reason}; it cannot be repaired or left out")


def clean_sources(*groups: Sequence[Dataset]) -> tuple[list[list[Dataset]], list[Repair]]:
    """``clean_source`` for every dataset of every group (current, prior); repairs listed once each."""
    cleaned: list[list[Dataset]] = []
    repairs: dict[Repair, None] = {}
    for group in groups:
        out = []
        for ds in group:
            copy_, done = clean_source(ds)
            out.append(copy_)
            repairs.update(dict.fromkeys(done))
        cleaned.append(out)
    return cleaned, list(repairs)


def invalid_reference_uids(datasets: Iterable[Dataset]) -> frozenset[str]:
    """Inherited UIDs whose validator findings are accepted: every study, series, instance and Frame of Reference
    UID of the sources (the results must reference them as the PACS holds them; a well-formed UID can still be
    reported, e.g. dciodvfy's "Illegal root for UID uses non-existent ISO arc" for "1.9.999..." in pydicom's test
    data, and those values identify the sources only), and a malformed SOP Class UID (a valid one is also ours)."""
    found = set()
    for ds in datasets:
        for keyword in REFERENCED_UIDS:
            value = str(ds.get(keyword, "") or "")
            if value and (keyword in IDENTIFYING_UIDS or not valid_uid(value)):
                found.add(value)
    return frozenset(found)


def describe(repairs: Iterable[Repair]) -> list[str]:
    """The repairs as lines for logs and provenance (keywords and actions, no values)."""
    return [str(r) for r in repairs]


__all__ = ["Repair", "UnrepairableHeader", "clean_source", "clean_sources", "describe", "invalid_reference_uids"]
