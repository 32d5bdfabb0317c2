"""MPPS-triggered study completion: the node as Modality Performed Procedure Step SCP (``study.completion: mpps``
or ``mpps_or_quiet``).

A modality (or the RIS/PACS forwarding its MPPS) sends N-CREATE (IN PROGRESS) and then N-SET COMPLETED or
DISCONTINUED with the Performed Series Sequence listing the images it made. A COMPLETED step queues the study's
job as soon as every listed instance is stored (:meth:`MppsService.check`, run on the N-SET, after each stored
instance and every ``poll_seconds``). A DISCONTINUED step that lists no image skips the study with the reason; one
that lists images is treated as COMPLETED. With ``mpps_or_quiet`` the quiet timer still completes a study whose
step never comes.

Statuses (PS3.4 F.7.2 / 10.1): N-CREATE of a SOP Instance UID already created 0x0111 (Duplicate SOP Instance);
N-CREATE without status IN PROGRESS 0x0106 (Invalid attribute value); N-SET of an unknown SOP Instance UID
0x0112 (No such object instance); N-SET of a step already COMPLETED or DISCONTINUED 0x0110 (Processing failure,
"may no longer be updated"); N-SET to a status other than IN PROGRESS/COMPLETED/DISCONTINUED 0x0106.
"""
from __future__ import annotations

import datetime as dt
import logging
import threading
from collections.abc import Callable
from typing import Any

from pydicom import Dataset
from pydicom.uid import generate_uid
from sqlalchemy import func, select
from sqlalchemy.orm import Session, sessionmaker

from dicomnode.audit import audit
from dicomnode.background import BackgroundLoop
from dicomnode.completion import complete_study
from dicomnode.db.models import Instance, Job, PerformedProcedureStep, Study, utcnow
from dicomnode.db.states import JobState
from dicomnode.jobs import newest_job, set_job_state
from dicomnode.logs import log_event

LOG = logging.getLogger("dicomnode.mpps")
MPPS_SOP_CLASS = "1.2.840.10008.3.1.2.3.3"
IN_PROGRESS, COMPLETED, DISCONTINUED = "IN PROGRESS", "COMPLETED", "DISCONTINUED"
FINAL = (COMPLETED, DISCONTINUED)
SUCCESS = 0x0000
INVALID_ATTRIBUTE_VALUE = 0x0106
PROCESSING_FAILURE = 0x0110
DUPLICATE_SOP_INSTANCE = 0x0111
NO_SUCH_OBJECT_INSTANCE = 0x0112
NO_SUCH_SOP_CLASS = 0x0118


def _status_of(ds: Dataset | None) -> str | None:
    value = ds.get("PerformedProcedureStepStatus") if ds is not None else None
    return str(value).strip().upper() if value else None


def _study_uid(ds: Dataset) -> str | None:
    for item in ds.get("ScheduledStepAttributesSequence") or []:
        if item.get("StudyInstanceUID"):
            return str(item.StudyInstanceUID).strip()
    return None


def listed_instances(ds: Dataset) -> list[str]:
    """SOP Instance UIDs in the Performed Series Sequence (images and non-image objects)."""
    uids: list[str] = []
    for series in ds.get("PerformedSeriesSequence") or []:
        for key in ("ReferencedImageSequence", "ReferencedNonImageCompositeSOPInstanceSequence"):
            for item in series.get(key) or []:
                if item.get("ReferencedSOPInstanceUID"):
                    uids.append(str(item.ReferencedSOPInstanceUID).strip())
    return uids


def _discontinuation_reason(ds: Dataset) -> str:
    for item in ds.get("PerformedProcedureStepDiscontinuationReasonCodeSequence") or []:
        meaning = item.get("CodeMeaning") or item.get("CodeValue")
        if meaning:
            return str(meaning)
    return "no reason given"


def _error(status: int, comment: str) -> tuple[int, None]:
    LOG.info("MPPS refused", extra={"fields": {"status": f"0x{status:04X}", "reason": comment}})
    return status, None


class MppsService:
    """N-CREATE/N-SET handlers and the check that completes studies; ``start()``/``stop()`` run the periodic check."""

    def __init__(self, session_factory: sessionmaker[Session], on_complete: Callable[[], None] | None = None,
                 poll_seconds: float = 1.0) -> None:
        self.session_factory = session_factory
        self.on_complete = on_complete
        self.poll_seconds = poll_seconds
        self._loop = BackgroundLoop("mpps", self.check, poll_seconds, LOG)
        self._lock = threading.Lock()

    # -- DIMSE handlers ------------------------------------------------------------------------------------------
    def handlers(self) -> list[tuple[Any, Callable[..., Any]]]:
        from pynetdicom import evt

        return [(evt.EVT_N_CREATE, self.handle_create), (evt.EVT_N_SET, self.handle_set)]

    def handle_create(self, event: Any) -> tuple[int, Dataset | None]:
        request = event.request
        if str(request.AffectedSOPClassUID) != MPPS_SOP_CLASS:
            return NO_SUCH_SOP_CLASS, None
        ds = event.attribute_list
        uid = str(request.AffectedSOPInstanceUID or "").strip() or generate_uid()
        status = _status_of(ds)
        if status != IN_PROGRESS:
            return _error(INVALID_ATTRIBUTE_VALUE, f"N-CREATE status must be IN PROGRESS, not {status}")
        calling = str(event.assoc.requestor.ae_title).strip()
        now = utcnow()
        with self.session_factory.begin() as session:
            if session.scalar(select(PerformedProcedureStep.id).where(PerformedProcedureStep.sop_instance_uid == uid)):
                return _error(DUPLICATE_SOP_INSTANCE, "MPPS SOP Instance UID already created")
            session.add(PerformedProcedureStep(
                sop_instance_uid=uid, status=IN_PROGRESS, study_instance_uid=_study_uid(ds),
                instance_uids=listed_instances(ds), calling_aet=calling, created_at=now, updated_at=now))
            audit(session, "mpps.created", calling_aet=calling, study_instance_uid=_study_uid(ds), mpps=uid)
        reply = Dataset()
        reply.AffectedSOPInstanceUID = uid  # pynetdicom answers the request's own UID; kept for a generated one
        reply.PerformedProcedureStepStatus = IN_PROGRESS
        return SUCCESS, reply

    def handle_set(self, event: Any) -> tuple[int, Dataset | None]:
        request = event.request
        if str(request.RequestedSOPClassUID) != MPPS_SOP_CLASS:
            return NO_SUCH_SOP_CLASS, None
        uid = str(request.RequestedSOPInstanceUID or "").strip()
        changes = event.modification_list
        new_status = _status_of(changes)
        if new_status is not None and new_status not in (IN_PROGRESS, *FINAL):
            return _error(INVALID_ATTRIBUTE_VALUE, f"unknown Performed Procedure Step Status {new_status}")
        calling = str(event.assoc.requestor.ae_title).strip()
        with self.session_factory.begin() as session:
            step = session.scalar(select(PerformedProcedureStep).where(PerformedProcedureStep.sop_instance_uid == uid)
                                  .with_for_update())
            if step is None:
                return _error(NO_SUCH_OBJECT_INSTANCE, "no MPPS with this SOP Instance UID was created")
            if step.status in FINAL:
                return _error(PROCESSING_FAILURE, "Performed Procedure Step Object may no longer be updated")
            if "PerformedSeriesSequence" in changes:
                step.instance_uids = listed_instances(changes)
            if new_status is not None:
                step.status = new_status
            if new_status == DISCONTINUED:
                step.reason = _discontinuation_reason(changes)
            step.updated_at = utcnow()
            audit(session, "mpps.updated", calling_aet=calling, study_instance_uid=step.study_instance_uid, mpps=uid,
                  status=step.status, instances=len(step.instance_uids or []), reason=step.reason)
        if new_status in FINAL:
            self.check()
        reply = Dataset()
        reply.PerformedProcedureStepStatus = new_status or IN_PROGRESS
        return SUCCESS, reply

    # -- completion --------------------------------------------------------------------------------------------
    def check(self) -> int:
        """Act on every final step not acted on yet whose study is ready; returns how many studies changed."""
        acted = 0
        with self._lock:  # the periodic check, an N-SET and a stored instance may ask at once
            with self.session_factory() as session:
                waiting = list(session.scalars(select(PerformedProcedureStep.id).where(
                    PerformedProcedureStep.status.in_(FINAL), PerformedProcedureStep.acted_at.is_(None))))
            for step_id in waiting:
                with self.session_factory.begin() as session:
                    acted += self._act(session, step_id, utcnow())
        if acted and self.on_complete is not None:
            self.on_complete()
        return acted

    def _act(self, session: Session, step_id: int, now: dt.datetime) -> int:
        step = session.get(PerformedProcedureStep, step_id, with_for_update=True)
        if step is None or step.acted_at is not None or not step.study_instance_uid:
            return 0
        listed = list(step.instance_uids or [])
        study = session.scalar(select(Study).where(Study.study_instance_uid == step.study_instance_uid))
        if step.status == DISCONTINUED and not listed:
            step.acted_at = now
            return self._skip(session, step, study, now)
        if study is None:
            return 0  # the listed instances have not started to arrive
        present = session.scalar(select(func.count(Instance.id)).where(
            Instance.study_id == study.id, Instance.sop_instance_uid.in_(listed))) or 0
        if present < len(set(listed)):
            return 0
        step.acted_at = now
        job = newest_job(session, study.id)
        if job is None or job.state != JobState.RECEIVING.value:
            return 0  # already completed (the quiet timer came first)
        complete_study(session, study.id, 0.0, now)
        log_event(LOG, logging.INFO, "study completed by MPPS", study_instance_uid=study.study_instance_uid,
                  mpps=step.sop_instance_uid, instances=len(listed))
        return 1

    def _skip(self, session: Session, step: PerformedProcedureStep, study: Study | None, now: dt.datetime) -> int:
        reason = f"procedure step discontinued with no images (MPPS): {step.reason or 'no reason given'}"
        if study is None:
            study = Study(study_instance_uid=step.study_instance_uid, state=JobState.RECEIVING.value,
                          first_received_at=now, last_received_at=now, instance_count=0, selected_count=0,
                          generation=1)
            session.add(study)
            session.flush()
            job: Job | None = Job(study_id=study.id, generation=1, state=JobState.RECEIVING.value, attempts=0,
                                  created_at=now, updated_at=now)
            session.add(job)
            session.flush()
        else:
            job = newest_job(session, study.id, for_update=True)
            if job is None or job.state != JobState.RECEIVING.value or study.selected_count > 0:
                return 0  # images of it did arrive: the quiet timer (or a later step) completes it
        assert job is not None
        set_job_state(session, job, JobState.SKIPPED, reason, now=now)
        audit(session, "job.skipped", study_instance_uid=study.study_instance_uid, job_id=job.id,
              generation=job.generation, reason=reason, mpps=step.sop_instance_uid)
        return 1

    # -- background ----------------------------------------------------------------------------------------------
    def poke(self) -> None:
        """An instance was stored: check soon (in the background thread)."""
        self._loop.wake()

    def start(self) -> None:
        self._loop.start()

    def stop(self, timeout: float | None = None) -> None:
        self._loop.stop(timeout)
