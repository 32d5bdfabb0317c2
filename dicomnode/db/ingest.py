"""Database side of receiving one instance: study/job bookkeeping in the caller's transaction.

First instance of a study creates the study and job generation 1 (RECEIVING). A later *selected* instance for a
study whose newest job is past RECEIVING opens a new generation (new RECEIVING job, predecessor = previous job).
A late instance that is not selected is recorded under the current generation and re-opens nothing: it cannot
change the result.
"""
from __future__ import annotations

import datetime as dt
from dataclasses import dataclass

from sqlalchemy import select
from sqlalchemy.orm import Session

from dicomnode.db.models import Instance, Job, Study
from dicomnode.db.states import JobState


@dataclass(frozen=True)
class InstanceRecord:
    """What the listener learned about one stored instance."""

    study_uid: str
    series_uid: str
    sop_uid: str
    sop_class_uid: str
    transfer_syntax_uid: str | None
    modality: str | None
    body_part: str | None
    view_position: str | None
    patient_id: str | None
    accession_number: str | None
    path: str
    size_bytes: int
    skip_reason: str | None
    calling_aet: str | None


@dataclass(frozen=True)
class IngestOutcome:
    study_id: int
    job_id: int
    generation: int
    new_study: bool
    reopened: bool
    receiving: bool  # newest job still RECEIVING: (re-)arm its completion deadline
    last_received_at: dt.datetime


def find_instance(session: Session, sop_uid: str) -> Instance | None:
    return session.scalar(select(Instance).where(Instance.sop_instance_uid == sop_uid))


def newest_job(session: Session, study_id: int, for_update: bool = False) -> Job | None:
    stmt = select(Job).where(Job.study_id == study_id).order_by(Job.generation.desc()).limit(1)
    if for_update:
        stmt = stmt.with_for_update()
    return session.scalar(stmt)


def record_instance(session: Session, rec: InstanceRecord, now: dt.datetime) -> IngestOutcome:
    """Insert the instance row and update study/job state. Raises IntegrityError on a concurrent duplicate."""
    selected = rec.skip_reason is None
    study = session.scalar(
        select(Study).where(Study.study_instance_uid == rec.study_uid).with_for_update()
    )
    new_study = study is None
    reopened = False
    if study is None:
        study = Study(
            study_instance_uid=rec.study_uid, state=JobState.RECEIVING.value, patient_id=rec.patient_id,
            accession_number=rec.accession_number, first_received_at=now, last_received_at=now,
            instance_count=0, selected_count=0, generation=1,
        )
        session.add(study)
        session.flush()
        job = Job(study_id=study.id, generation=1, state=JobState.RECEIVING.value, attempts=0,
                  created_at=now, updated_at=now)
        session.add(job)
        session.flush()
    else:
        job = newest_job(session, study.id, for_update=True)
        if job is None:  # defensive: a study without job
            job = Job(study_id=study.id, generation=study.generation, state=JobState.RECEIVING.value,
                      attempts=0, created_at=now, updated_at=now)
            session.add(job)
            session.flush()
        elif job.state != JobState.RECEIVING.value and selected:
            study.generation = job.generation + 1
            job = Job(study_id=study.id, generation=study.generation, state=JobState.RECEIVING.value,
                      attempts=0, created_at=now, updated_at=now, predecessor_job_id=job.id)
            session.add(job)
            session.flush()
            reopened = True
        if job.state == JobState.RECEIVING.value:
            study.state = JobState.RECEIVING.value
            study.state_reason = None
            study.last_received_at = now
        if rec.accession_number and not study.accession_number:
            study.accession_number = rec.accession_number
    study.instance_count += 1
    if selected:
        study.selected_count += 1
    session.add(
        Instance(
            study_id=study.id, sop_instance_uid=rec.sop_uid, sop_class_uid=rec.sop_class_uid,
            series_instance_uid=rec.series_uid, transfer_syntax_uid=rec.transfer_syntax_uid,
            modality=rec.modality, body_part=rec.body_part, view_position=rec.view_position, path=rec.path,
            size_bytes=rec.size_bytes, selected=selected, skip_reason=rec.skip_reason,
            calling_aet=rec.calling_aet, received_at=now, generation=job.generation,
        )
    )
    session.flush()
    receiving = job.state == JobState.RECEIVING.value
    return IngestOutcome(study.id, job.id, job.generation, new_study, reopened, receiving, study.last_received_at)
