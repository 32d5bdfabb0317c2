"""What an admin can change from the dashboard. Each action reuses the node's own state changes (the ones the CLI
and the loops use) and leaves an audit row naming the dashboard user."""
from __future__ import annotations

from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from dicomnode.audit import audit
from dicomnode.config import NodeConfig
from dicomnode.datadir import DataDir
from dicomnode.db.models import Delivery, Job, Study, utcnow
from dicomnode.db.states import DeliveryState, JobState

Factory = sessionmaker[Session]


class ActionError(ValueError):
    """The action does not apply (unknown job, wrong state); the message says why."""


def retry(session_factory: Factory, job_id: int, user: str) -> str:
    """``cxr-node retry``: dead-lettered deliveries back to PENDING, or a FAILED job re-queued."""
    from dicomnode.jobs import retry_job

    try:
        done = retry_job(session_factory, job_id)
    except (LookupError, ValueError) as exc:
        raise ActionError(str(exc)) from None
    with session_factory.begin() as session:
        audit(session, "dashboard.retry", job_id=job_id, user=user, result=done)
    return done


def force_complete(session_factory: Factory, study_uid: str, user: str) -> str:
    """Close a study that is still RECEIVING now, as its quiet period ending would (queued, or skipped with the
    reason when nothing in it is selected)."""
    from dicomnode.completion import complete_study

    now = utcnow()
    with session_factory.begin() as session:
        study = session.scalar(select(Study).where(Study.study_instance_uid == study_uid))
        if study is None:
            raise ActionError(f"study {study_uid} is not known to this node")
        if study.state != JobState.RECEIVING.value:
            raise ActionError(f"study is {study.state}, not RECEIVING: nothing to complete")
        complete_study(session, study.id, quiet_seconds=0, now=now)
        state = session.scalar(select(Study.state).where(Study.id == study.id))
        audit(session, "dashboard.force_complete", study_instance_uid=study_uid, user=user, state=state)
    return f"completed: {state}"


def resend(session_factory: Factory, config: NodeConfig, job_id: int, destination: str, user: str) -> str:
    """Send the results of job ``job_id`` to ``destination`` again: its rows there go back to PENDING (SENT ones
    too: the admin asks for a new copy, the PACS keeps one per SOP Instance UID); a destination that never had
    them gets new rows for the object kinds it takes."""
    from dicomnode.jobs import set_job_state

    target = next((d for d in config.destinations if d.name == destination), None)
    if target is None:
        raise ActionError(f"destination {destination!r} is not configured")
    now = utcnow()
    with session_factory.begin() as session:
        job = session.scalar(select(Job).where(Job.id == job_id).with_for_update())
        if job is None:
            raise ActionError(f"job {job_id} does not exist")
        if job.state not in (JobState.RESULTS_READY.value, JobState.DELIVERED.value, JobState.FAILED.value):
            raise ActionError(f"job {job_id} is {job.state}: it has no results to send")
        rows = list(session.scalars(select(Delivery).where(Delivery.job_id == job_id)))
        if not rows:
            raise ActionError(f"job {job_id} has no result objects")
        mine = [r for r in rows if r.destination == destination]
        for row in mine:
            row.state = DeliveryState.PENDING.value
            row.attempts = 0
            row.next_attempt_at = now
            row.last_error = None
            row.sent_at = None
        known = {r.sop_instance_uid for r in mine}
        added = 0
        for row in rows:  # objects queued for other destinations only
            if row.sop_instance_uid in known or row.object_kind not in target.objects:
                continue
            known.add(row.sop_instance_uid)
            session.add(Delivery(job_id=job_id, destination=destination, object_kind=row.object_kind,
                                 sop_instance_uid=row.sop_instance_uid, sop_class_uid=row.sop_class_uid,
                                 path=row.path, state=DeliveryState.PENDING.value, attempts=0, next_attempt_at=now))
            added += 1
        if not mine and not added:
            raise ActionError(f"destination {destination} takes none of this job's objects")
        if job.state != JobState.RESULTS_READY.value:
            set_job_state(session, job, JobState.RESULTS_READY)
        study_uid = session.scalar(select(Study.study_instance_uid).where(Study.id == job.study_id))
        audit(session, "dashboard.resend", study_instance_uid=study_uid, job_id=job_id, destination=destination,
              user=user, reset=len(mine), added=added)
    return f"{len(mine) + added} objects queued for {destination}"


def data_dir_of(config: NodeConfig) -> DataDir:
    return DataDir(config.storage.data_dir)
