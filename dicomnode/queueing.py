"""What each destination is queued: one place decides it, for the worker (as results are stored) and for an
operator's re-send.

Each configured destination's :class:`~dicomnode.destinations.Sender` says what it takes: a result object just
stored (``object_payload``; the DICOM types) and/or payloads built from the whole stored result set
(``result_set_payloads``; message types). A payload that is a message is written durably into the job's results
folder before its row is committed, so what is queued is always on disk. A destination is never queued the same
payload twice (``payload_key``, unique per destination).
"""
from __future__ import annotations

import re
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import pydicom
from sqlalchemy import select
from sqlalchemy.orm import Session

from dicomnode.config import NodeConfig
from dicomnode.datadir import DataDir, write_durably
from dicomnode.db.models import Delivery, Job, Study, utcnow
from dicomnode.db.states import DeliveryState, JobState
from dicomnode.destinations import NodeIdentity, Payload, ResultSet, Sender, StoredObject, make_sender

RECORD_FILE = "record.json"
_UNSAFE = re.compile(r"[^A-Za-z0-9._-]+")


def senders(config: NodeConfig, association_timeout: float = 30.0) -> dict[str, Sender[Any]]:
    """destination name -> its sender."""
    node = NodeIdentity(config.node.ae_title, association_timeout, config.triage.as_rules())
    return {d.name: make_sender(d, node) for d in config.destinations}


def stored_object(kind: str, path: Path, dataset: pydicom.Dataset | None = None) -> StoredObject:
    """A stored result object, described from its dataset (read from ``path`` when not given)."""
    ds = dataset if dataset is not None else pydicom.dcmread(path, stop_before_pixels=True)
    return StoredObject(kind, str(ds.SOPClassUID), str(ds.SOPInstanceUID), str(ds.get("SeriesInstanceUID", "")),
                        path)


class DeliveryQueue:
    """Queues payloads for the configured destinations (rows in the caller's transaction)."""

    def __init__(self, config: NodeConfig, senders_by_name: dict[str, Sender[Any]] | None = None) -> None:
        self.config = config
        self.dirs = DataDir(config.storage.data_dir)
        self.senders = senders_by_name if senders_by_name is not None else senders(config)

    def object_stored(self, session: Session, job: Job, obj: StoredObject,
                      only: Iterable[str] | None = None) -> int:
        """Queue ``obj`` for each destination (of ``only``) that takes it; how many rows were added."""
        added = 0
        for name, sender in self._senders(only):
            payload = sender.object_payload(obj)
            if payload is not None:
                added += self._add(session, job, name, payload, obj.path.parent)
        return added

    def result_set_stored(self, session: Session, job: Job, result: ResultSet,
                          only: Iterable[str] | None = None) -> int:
        """Queue what each destination (of ``only``) builds from the whole result set; how many rows were added."""
        directory = self.dirs.results(result.study_instance_uid, job.id)
        added = 0
        for name, sender in self._senders(only):
            earlier = self._earlier_keys(session, job, name)
            for payload in sender.result_set_payloads(_with_earlier(result, earlier)):
                added += self._add(session, job, name, payload, directory)
        return added

    def _senders(self, only: Iterable[str] | None) -> list[tuple[str, Sender[Any]]]:
        wanted = set(only) if only is not None else None
        return [(name, s) for name, s in self.senders.items() if wanted is None or name in wanted]

    @staticmethod
    def _earlier_keys(session: Session, job: Job, destination: str) -> list[str]:
        """Payload keys queued for ``destination`` by earlier jobs (generations) of the job's study, oldest first."""
        return list(session.scalars(
            select(Delivery.payload_key).join(Job, Job.id == Delivery.job_id)
            .where(Job.study_id == job.study_id, Job.generation < job.generation, Delivery.destination == destination,
                   Delivery.media_type != "application/dicom")
            .order_by(Job.generation, Delivery.id)))

    def _add(self, session: Session, job: Job, destination: str, payload: Payload, directory: Path) -> int:
        exists = session.scalar(select(Delivery.id).where(Delivery.destination == destination,
                                                          Delivery.payload_key == payload.key))
        if exists is not None:  # already queued for this destination: never send twice
            return 0
        path = payload.path
        if path is None:  # a message: on disk before its row exists
            assert payload.data is not None
            path = directory / f"{payload.kind}-{_UNSAFE.sub('_', destination)}-{_UNSAFE.sub('_', payload.key)}"
            path = path.with_name(path.name + payload.suffix)
            write_durably(path, payload.data, self.config.storage.fsync)
        session.add(Delivery(
            job_id=job.id, destination=destination, object_kind=payload.kind, payload_key=payload.key,
            media_type=payload.media_type, sop_instance_uid=payload.sop_instance_uid,
            sop_class_uid=payload.sop_class_uid, path=self.dirs.relative(path), state=DeliveryState.PENDING.value,
            attempts=0, next_attempt_at=utcnow()))
        return 1

    # -- an operator's re-send ------------------------------------------------------------------------------
    def stored_result_set(self, session: Session, job: Job) -> ResultSet:
        """The job's result set as stored: the DICOM objects its delivery rows name, and any other object in its
        results folder (``<kind>-<SOPInstanceUID>.dcm``); the record beside them."""
        study_uid = session.scalar(select(Study.study_instance_uid).where(Study.id == job.study_id)) or ""
        directory = self.dirs.results(study_uid, job.id)
        objects: dict[str, StoredObject] = {}
        for row in session.scalars(select(Delivery).where(Delivery.job_id == job.id,
                                                          Delivery.sop_instance_uid.is_not(None)).order_by(Delivery.id)):
            assert row.sop_instance_uid is not None
            objects.setdefault(row.sop_instance_uid, StoredObject(
                row.object_kind, row.sop_class_uid or "", row.sop_instance_uid, "", self.dirs.absolute(row.path)))
        for path in sorted(directory.glob("*.dcm")):
            kind, _, uid = path.stem.partition("-")
            if uid not in objects:
                objects[uid] = stored_object(kind, path)
        record = directory / RECORD_FILE
        return ResultSet(job.id, study_uid, job.generation, list(objects.values()),
                         record.read_text(encoding="utf-8") if record.is_file() else None)

    def resend(self, session: Session, job: Job, destination: str) -> tuple[int, int]:
        """Re-send the job's results to ``destination``: its rows go back to PENDING (SENT ones too: a new copy is
        asked for; a PACS keeps one per SOP Instance UID), and what it takes but was never queued is queued now.
        Returns (rows reset, rows added); ValueError when the destination is not configured."""
        if destination not in self.senders:
            raise ValueError(f"destination {destination!r} is not configured")
        now = utcnow()
        mine = list(session.scalars(select(Delivery).where(Delivery.job_id == job.id,
                                                           Delivery.destination == destination)))
        for row in mine:
            row.state = DeliveryState.PENDING.value
            row.attempts = 0
            row.next_attempt_at = now
            row.last_error = None
            row.sent_at = None
        added = 0
        if job.state in (JobState.RESULTS_READY.value, JobState.DELIVERED.value, JobState.FAILED.value):
            result = self.stored_result_set(session, job)
            for obj in result.objects:
                added += self.object_stored(session, job, obj, only=[destination])
            added += self.result_set_stored(session, job, result, only=[destination])
        return len(mine), added


def _with_earlier(result: ResultSet, earlier: list[str]) -> ResultSet:
    return ResultSet(result.job_id, result.study_instance_uid, result.generation, result.objects, result.record_json,
                     earlier)
