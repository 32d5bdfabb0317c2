"""What an admin can change from the dashboard. Each action reuses the node's own state changes (the ones the CLI
and the loops use) and leaves an audit row naming the dashboard user."""
from __future__ import annotations

from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from dicomnode.audit import audit
from dicomnode.config import NodeConfig
from dicomnode.datadir import DataDir
from dicomnode.db.models import Study, utcnow
from dicomnode.db.states import JobState

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
    """Send the results of job ``job_id`` to ``destination`` again (:func:`dicomnode.jobs.resend_job`): what that
    destination takes."""
    from dicomnode.jobs import resend_job
    from dicomnode.queueing import DeliveryQueue

    if destination not in {d.name for d in config.destinations}:
        raise ActionError(f"destination {destination!r} is not configured")
    try:
        done = resend_job(session_factory, job_id, destination, DeliveryQueue(config))
    except ValueError as exc:
        raise ActionError(str(exc)) from None
    with session_factory.begin() as session:
        audit(session, "dashboard.resend", job_id=job_id, destination=destination, user=user, result=done)
    return done


def data_dir_of(config: NodeConfig) -> DataDir:
    return DataDir(config.storage.data_dir)
