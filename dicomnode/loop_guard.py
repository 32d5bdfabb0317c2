"""Routing-loop guard: the node never reasons on objects it wrote itself, nor on any SR, SC, KO or PR.

A PACS that forwards "everything new in a chest study" to the node would otherwise send the node its own results
(same Study Instance UID) and start another generation of the study. Selection applies these checks before the
configured modalities and body parts, so no configuration can turn them off; the instance is still stored and
acknowledged, and its skip reason names the check.
"""
from __future__ import annotations

from sqlalchemy import bindparam, select
from sqlalchemy.orm import Session

from dicomnode.db.models import Delivery

SR_PREFIX = "1.2.840.10008.5.1.4.1.1.88."  # every Structured Report class, Key Object Selection (88.59) included
KEY_OBJECT_SELECTION = "1.2.840.10008.5.1.4.1.1.88.59"
SECONDARY_CAPTURE = frozenset({
    "1.2.840.10008.5.1.4.1.1.7", "1.2.840.10008.5.1.4.1.1.7.1", "1.2.840.10008.5.1.4.1.1.7.2",
    "1.2.840.10008.5.1.4.1.1.7.3", "1.2.840.10008.5.1.4.1.1.7.4",
})
PRESENTATION_STATE_PREFIX = "1.2.840.10008.5.1.4.1.1.11."
#: Modalities of derived objects, refused whatever their SOP class says
DERIVED_MODALITIES = {"SR": "structured report", "KO": "key object selection", "PR": "presentation state"}

_WRITTEN = select(Delivery.id).where(Delivery.sop_instance_uid == bindparam("uid")).limit(1)


def derived_object_kind(sop_class_uid: str, modality: str) -> str | None:
    """``"structured report"``, ``"secondary capture"``, ... when the object is one the node must never reason on
    (a derived object, never an acquisition); None for anything else."""
    sop_class = sop_class_uid.strip()
    if sop_class == KEY_OBJECT_SELECTION:
        return "key object selection"
    if sop_class.startswith(SR_PREFIX):
        return "structured report"
    if sop_class in SECONDARY_CAPTURE:
        return "secondary capture"
    if sop_class.startswith(PRESENTATION_STATE_PREFIX):
        return "presentation state"
    return DERIVED_MODALITIES.get(modality.strip().upper())


def written_by_node(session: Session, sop_instance_uid: str) -> bool:
    """True when this node made the object (it is one of its result objects, queued for delivery at some time)."""
    return session.connection().execute(_WRITTEN, {"uid": sop_instance_uid}).first() is not None


def loop_skip_reason(sop_class_uid: str, modality: str, own_object: bool) -> str | None:
    """The selection reason for an object that would make a routing loop, or None."""
    if own_object:
        return "written by this node (its own result): never reasoned on"
    kind = derived_object_kind(sop_class_uid, modality)
    if kind is not None:
        return f"{kind} (derived object): never reasoned on"
    return None
