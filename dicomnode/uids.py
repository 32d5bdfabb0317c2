"""DICOM UID grammar check, applied before a UID is used as a path component; the UIDs of a study's results."""
from __future__ import annotations

import re
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from sr_writer.kinds import ResultUids

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


def result_uids(study_uid: str, generation: int, node_ae_title: str) -> ResultUids:
    """The UIDs of the result set of ``study_uid``'s ``generation`` made by this node: the same every time the
    job runs (a re-run after a crash, an operator retry), so the PACS gets the same SOP Instances again and keeps
    one of each; a new generation (a late instance) gets new ones."""
    from sr_writer.kinds import ResultUids  # here: the receive path imports this module and needs no page maker

    return ResultUids(seed=f"cxr-node-result|{node_ae_title.strip()}|{study_uid}|{generation}")
