"""Database side of receiving one instance: study/job bookkeeping in the caller's transaction.

First instance of a study creates the study and job generation 1 (RECEIVING). A later *selected* instance for a
study whose newest job is past RECEIVING opens a new generation (new RECEIVING job, predecessor = previous job).
A late instance that is not selected is recorded under the current generation and re-opens nothing: it cannot
change the result.
"""
from __future__ import annotations

import datetime as dt
from dataclasses import dataclass, replace
from typing import Any

from sqlalchemy import Connection, CursorResult, Integer, bindparam, insert, select, update
from sqlalchemy.orm import Session

from dicomnode.db.models import Instance, Job, Study
from dicomnode.db.states import JobState
from dicomnode.received import InstanceHeader


@dataclass(frozen=True)
class InstanceRecord(InstanceHeader):
    """What the listener learned about one stored instance: its header, and where and how it was stored."""

    path: str
    size_bytes: int
    skip_reason: str | None
    calling_aet: str | None


# InstanceRecord field -> the column it is stored in (the study's patient_id/accession_number have the same lengths)
_RECORD_COLUMNS = {
    "study_uid": Study.__table__.c.study_instance_uid, "series_uid": Instance.__table__.c.series_instance_uid,
    "sop_uid": Instance.__table__.c.sop_instance_uid, "sop_class_uid": Instance.__table__.c.sop_class_uid,
    "transfer_syntax_uid": Instance.__table__.c.transfer_syntax_uid, "modality": Instance.__table__.c.modality,
    "body_part": Instance.__table__.c.body_part, "view_position": Instance.__table__.c.view_position,
    "patient_id": Study.__table__.c.patient_id, "accession_number": Study.__table__.c.accession_number,
    "calling_aet": Instance.__table__.c.calling_aet,
}


def fit_to_columns(rec: InstanceRecord) -> tuple[InstanceRecord, dict[str, int]]:
    """``rec`` with every text value cut to its column's length (SQLite would store more, PostgreSQL refuses).

    Returns the fitted record and ``{field: original length}`` of what was cut: names and lengths only, never the
    values (they may be patient data).
    """
    cut: dict[str, int] = {}
    changes: dict[str, Any] = {}
    for name, column in _RECORD_COLUMNS.items():
        value = getattr(rec, name)
        limit = getattr(column.type, "length", None)
        if isinstance(value, str) and limit and len(value) > limit:
            cut[name] = len(value)
            changes[name] = value[:limit].rstrip() or value[:limit]
    return (replace(rec, **changes) if changes else rec), cut


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


def instance_exists(session: Session, sop_uid: str) -> bool:
    """Cheap duplicate check (no ORM object)."""
    return session.connection().execute(_INSTANCE_EXISTS, {"uid": sop_uid}).first() is not None


_studies, _jobs, _instances = (model.metadata.tables[model.__tablename__] for model in (Study, Job, Instance))
# Statements built once: this runs inside the acknowledgement latency of every received instance.
_FIND_STUDY = (
    select(_studies.c.id, _studies.c.accession_number, _studies.c.last_received_at)
    .where(_studies.c.study_instance_uid == bindparam("uid")).with_for_update()
)
_NEWEST_JOB = (
    select(_jobs.c.id, _jobs.c.generation, _jobs.c.state).where(_jobs.c.study_id == bindparam("sid"))
    .order_by(_jobs.c.generation.desc()).limit(1).with_for_update()
)
_INSTANCE_EXISTS = select(_instances.c.id).where(_instances.c.sop_instance_uid == bindparam("uid"))
_STUDY_GENERATION = select(_studies.c.generation).where(_studies.c.id == bindparam("sid"))
_INSERT_STUDY = insert(_studies)
_INSERT_JOB = insert(_jobs)
_INSERT_INSTANCE = insert(_instances)
_COUNTS = {"instance_count": _studies.c.instance_count + 1,
           "selected_count": _studies.c.selected_count + bindparam("sel", type_=Integer)}
_UPDATE_COUNTS = update(_studies).where(_studies.c.id == bindparam("sid")).values(**_COUNTS)
_UPDATE_RECEIVING = update(_studies).where(_studies.c.id == bindparam("sid")).values(
    **_COUNTS, state=JobState.RECEIVING.value, state_reason=None,
    last_received_at=bindparam("now", type_=_studies.c.last_received_at.type),
)


def record_instance(session: Session, rec: InstanceRecord, now: dt.datetime) -> IngestOutcome:
    """Insert the instance row and update study/job state. Raises IntegrityError on a concurrent duplicate."""
    conn = session.connection()
    selected = rec.skip_reason is None
    study = conn.execute(_FIND_STUDY, {"uid": rec.study_uid}).first()
    new_study = study is None
    reopened = False
    if study is None:
        study_id = _new_id(conn.execute(_INSERT_STUDY, {
            "study_instance_uid": rec.study_uid, "state": JobState.RECEIVING.value, "patient_id": rec.patient_id,
            "accession_number": rec.accession_number, "first_received_at": now, "last_received_at": now,
            "instance_count": 1, "selected_count": int(selected), "generation": 1,
        }))
        job_id = _insert_job(conn, study_id, 1, now, None)
        generation, receiving, last = 1, True, now
    else:
        study_id = study.id
        job = conn.execute(_NEWEST_JOB, {"sid": study_id}).first()
        if job is None:  # defensive: a study without job
            generation = int(conn.execute(_STUDY_GENERATION, {"sid": study_id}).scalar() or 1)
            job_id, state = _insert_job(conn, study_id, generation, now, None), JobState.RECEIVING.value
        elif job.state != JobState.RECEIVING.value and selected:
            generation = job.generation + 1
            job_id, state = _insert_job(conn, study_id, generation, now, job.id), JobState.RECEIVING.value
            conn.execute(update(_studies).where(_studies.c.id == study_id).values(generation=generation))
            reopened = True
        else:
            job_id, generation, state = job.id, job.generation, job.state
        receiving = state == JobState.RECEIVING.value
        last = now if receiving else study.last_received_at
        params = {"sid": study_id, "sel": int(selected), "now": now}
        conn.execute(_UPDATE_RECEIVING if receiving else _UPDATE_COUNTS, params)
        if rec.accession_number and not study.accession_number:
            conn.execute(update(_studies).where(_studies.c.id == study_id)
                         .values(accession_number=rec.accession_number))
    conn.execute(_INSERT_INSTANCE, {
        "study_id": study_id, "sop_instance_uid": rec.sop_uid, "sop_class_uid": rec.sop_class_uid,
        "series_instance_uid": rec.series_uid, "transfer_syntax_uid": rec.transfer_syntax_uid,
        "modality": rec.modality, "body_part": rec.body_part, "view_position": rec.view_position,
        "path": rec.path, "size_bytes": rec.size_bytes, "selected": selected, "skip_reason": rec.skip_reason,
        "calling_aet": rec.calling_aet, "received_at": now, "generation": generation,
    })
    return IngestOutcome(study_id, job_id, generation, new_study, reopened, receiving, last)


def _insert_job(conn: Connection, study_id: int, generation: int, now: dt.datetime, predecessor: int | None) -> int:
    return _new_id(conn.execute(_INSERT_JOB, {
        "study_id": study_id, "generation": generation, "state": JobState.RECEIVING.value, "attempts": 0,
        "created_at": now, "updated_at": now, "predecessor_job_id": predecessor,
    }))


def _new_id(result: CursorResult[Any]) -> int:
    """The primary key an INSERT made."""
    key = result.inserted_primary_key
    if key is None:
        raise RuntimeError("the database returned no primary key for the new row")
    return int(key[0])
