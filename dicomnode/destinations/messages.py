"""What the message destination types (``hl7``, ``fhir``) share at the I/O edge: reading a stored result set's
record and SR header, which message of the study an amendment replaces, and their sender's one payload a result
set."""
from __future__ import annotations

import logging
from abc import ABC, abstractmethod
from dataclasses import dataclass
from pathlib import Path

import pydicom
from pydantic import ValidationError

from dicomnode.destinations.base import D, Payload, ResultSet, Sender
from inference.record import ReasoningRecord
from inference.triage import Triage, TriageRule, assess_record
from sr_writer.result_header import ObjectRef, StudyHeader, study_header

LOG = logging.getLogger("dicomnode.destinations")


@dataclass(frozen=True)
class StoredResult:
    """A result set as a message is built from it."""

    record: ReasoningRecord
    header: StudyHeader
    triage: Triage


def stored_result(result: ResultSet, destination: str, rules: tuple[TriageRule, ...]) -> StoredResult | None:
    """The record, the stored SR's header and the triage of ``result``; None (logged) when it has no reasoning
    record or no SR (a processor that makes neither: the config requires ``sr`` for a message destination)."""
    sr = result.first("sr")
    problem = None
    record = None
    if result.record_json is None:
        problem = "the result set has no reasoning record"
    elif sr is None:
        problem = "the result set has no SR"
    else:
        try:
            record = ReasoningRecord.from_json(result.record_json)
        except ValidationError as exc:
            problem = f"its record is not a reasoning record ({exc.error_count()} problems)"
    if problem or record is None or sr is None:
        LOG.warning("no message built", extra={"fields": {"destination": destination, "job_id": result.job_id,
                                                          "reason": problem}})
        return None
    dataset = pydicom.dcmread(sr.path, stop_before_pixels=True)
    refs = [ObjectRef(o.kind, o.sop_class_uid, o.sop_instance_uid, o.series_instance_uid or _series_of(o.path))
            for o in result.objects]
    return StoredResult(record, study_header(dataset, refs), assess_record(record, rules))


class MessageSender(Sender[D], ABC):
    """A sender of one message a result set, built from its :class:`StoredResult` (none without one)."""

    def result_set_payloads(self, result: ResultSet) -> list[Payload]:
        stored = stored_result(result, self.destination.name, self.node.triage_rules)
        return [] if stored is None else [self.message_payload(result, stored)]

    @abstractmethod
    def message_payload(self, result: ResultSet, stored: StoredResult) -> Payload:
        """The message of ``result``, as it is queued."""


def _series_of(path: Path) -> str:
    """The Series Instance UID in a stored object's header (a re-send knows objects by their delivery rows)."""
    try:
        return str(pydicom.dcmread(path, stop_before_pixels=True, specific_tags=["SeriesInstanceUID"])
                   .get("SeriesInstanceUID", ""))
    except (OSError, pydicom.errors.InvalidDicomError):
        return ""


def replaced_key(result: ResultSet) -> str | None:
    """The payload key of the newest message this destination was queued for an earlier result set of the study
    (what an amendment replaces), or None."""
    return result.earlier_keys[-1] if result.earlier_keys else None
