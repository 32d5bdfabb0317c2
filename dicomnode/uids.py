"""DICOM UID grammar check, applied before a UID is used as a path component."""
from __future__ import annotations

import re

# Digits and dots, no empty component. PS3.5 also forbids leading zeros in a component, but modalities send such
# UIDs and PACS (Orthanc) store them: a study is not refused for that (issue 11); its results keep the UID.
UID_RE = re.compile(r"^[0-9]+(\.[0-9]+)*$")
MAX_UID_LENGTH = 64


def is_valid_uid(value: object) -> bool:
    """True when ``value`` is digits and dots (PS3.5 9.1, leading zeros tolerated), at most 64 characters."""
    return isinstance(value, str) and 0 < len(value) <= MAX_UID_LENGTH and bool(UID_RE.match(value))


def clean_uid(value: object) -> str | None:
    """The UID with DICOM padding (trailing NUL/space) removed, or None when it is not a valid UID."""
    if value is None:
        return None
    text = str(value).rstrip("\x00 ")
    return text if is_valid_uid(text) else None
