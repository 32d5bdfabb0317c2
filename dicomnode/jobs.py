"""The job life cycle, in one place: every change of a job's state, and the study that mirrors its newest job.

A study gets job generation 1 with its first instance; a selected instance that arrives after the newest job has
left RECEIVING opens the next generation (:mod:`dicomnode.db.ingest`). A study's ``state`` (and ``state_reason``)
is always its newest job's (:func:`mirror_onto_study`)::

    RECEIVING --quiet period over, an instance selected (completion)--------------> QUEUED
    RECEIVING --quiet period over, nothing selected (completion)-------------------> SKIPPED
    RECEIVING --its MPPS COMPLETED and the listed instances stored (mpps)-----------> QUEUED
    RECEIVING --its MPPS DISCONTINUED without images (mpps)------------------------> SKIPPED
    QUEUED ----claim_job (one worker wins)------------------------------------------> PROCESSING
    PROCESSING --heartbeat() refreshes updated_at while the processor runs
    PROCESSING --processor failed---------------------------------------------------> FAILED
    PROCESSING --results stored, deliveries queued----------------------------------> RESULTS_READY
    PROCESSING --results stored, no destination takes them--------------------------> DELIVERED
    PROCESSING --its worker is gone (requeue_processing)----------------------------> QUEUED
    RESULTS_READY --settle_job: every delivery SENT---------------------------------> DELIVERED
    RESULTS_READY --settle_job: some delivery DEAD---------------------------------> FAILED
    DELIVERED --a destination reports an object not committed (commitment)----------> RESULTS_READY
    FAILED --retry_job, processing had failed---------------------------------------> QUEUED
    FAILED/DELIVERED --retry_job, dead deliveries back to PENDING-------------------> RESULTS_READY
    FAILED/DELIVERED --resend_job, one destination's rows back to PENDING (or new)--> RESULTS_READY

Claiming is one transaction: PostgreSQL picks a row with ``FOR UPDATE SKIP LOCKED``; on every database the state
change is a conditional ``UPDATE ... WHERE state='QUEUED'`` whose row count decides who won (SQLite serialises
writers with ``BEGIN IMMEDIATE``). A worker uses a result only while it still holds the job (:func:`held_job`).
"""
from __future__ import annotations

import contextlib
import datetime as dt
import logging
import os
import socket
import threading
from collections.abc import Collection, Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING

from sqlalchemy import select, update
from sqlalchemy.orm import Session, sessionmaker

from dicomnode import metrics
from dicomnode.audit import audit
from dicomnode.db.engine import rowcount
from dicomnode.db.models import Delivery, Job, Study, utcnow
from dicomnode.db.states import DeliveryState, JobState

if TYPE_CHECKING:
    from dicomnode.queueing import DeliveryQueue

LOG = logging.getLogger("dicomnode.jobs")
MAX_ERROR_CHARS = 4000
HEARTBEAT_SECONDS = 10.0  # a worker refreshes jobs.updated_at this often while it processes a job
STALE_SECONDS = 6 * HEARTBEAT_SECONDS  # a PROCESSING job without a heartbeat for this long has lost its worker
FINAL_STATES = (JobState.DELIVERED, JobState.FAILED, JobState.SKIPPED)


@dataclass(frozen=True)
class ClaimedJob:
    job_id: int
    study_id: int
    study_instance_uid: str
    generation: int


class JobLost(RuntimeError):
    """The job is no longer held by this worker (re-queued as stale meanwhile): its results must not be used."""


def default_worker_id(index: int = 0) -> str:
    return f"{socket.gethostname()}:{os.getpid()}:{index}"


def newest_job(session: Session, study_id: int, for_update: bool = False) -> Job | None:
    """The study's job of the highest generation (the one its state mirrors)."""
    stmt = select(Job).where(Job.study_id == study_id).order_by(Job.generation.desc()).limit(1)
    if for_update:
        stmt = stmt.with_for_update()
    return session.scalar(stmt)


def mirror_onto_study(session: Session, job: Job) -> None:
    """Copy ``job``'s state (and, when FAILED or SKIPPED, its error as the reason) onto its study, if ``job`` is the
    study's newest job; an older generation's change leaves the study alone."""
    newest = newest_job(session, job.study_id)
    if newest is None or newest.id != job.id:
        return
    reason = job.error if job.state in (JobState.FAILED.value, JobState.SKIPPED.value) else None
    session.execute(update(Study).where(Study.id == job.study_id).values(state=job.state, state_reason=reason))


def set_job_state(session: Session, job: Job, state: JobState, error: str | None = None,
                  now: dt.datetime | None = None) -> None:
    """Move ``job`` to ``state`` and mirror it onto its study when it is the study's newest job."""
    now = now or utcnow()
    job.state = state.value
    job.error = error[:MAX_ERROR_CHARS] if error else None
    job.updated_at = now
    job.finished_at = now if state in FINAL_STATES else None
    if state is JobState.DELIVERED and job.queued_at is not None:
        metrics.study_seconds.observe(max(0.0, (now - job.queued_at).total_seconds()))
    mirror_onto_study(session, job)


def claim_job(session_factory: sessionmaker[Session], worker_id: str) -> ClaimedJob | None:
    """Atomically move the oldest QUEUED job to PROCESSING for ``worker_id``; None when there is none."""
    with session_factory.begin() as session:
        for _ in range(5):
            job_id = session.scalar(
                select(Job.id).where(Job.state == JobState.QUEUED.value)
                .order_by(Job.queued_at, Job.id).limit(1).with_for_update(skip_locked=True)
            )
            if job_id is None:
                return None
            now = utcnow()
            won = rowcount(session.execute(
                update(Job).where(Job.id == job_id, Job.state == JobState.QUEUED.value)
                .values(state=JobState.PROCESSING.value, claimed_by=worker_id, claimed_at=now, updated_at=now,
                        attempts=Job.attempts + 1, error=None)
                .execution_options(synchronize_session=False)
            ))
            if won != 1:
                continue
            job = session.get(Job, job_id, populate_existing=True)
            assert job is not None
            mirror_onto_study(session, job)
            study_uid = session.scalar(select(Study.study_instance_uid).where(Study.id == job.study_id))
            assert study_uid is not None
            audit(session, "job.processing", study_instance_uid=study_uid, job_id=job.id,
                  generation=job.generation, worker=worker_id, attempt=job.attempts)
            return ClaimedJob(job.id, job.study_id, study_uid, job.generation)
    return None


def held_job(session: Session, claimed: ClaimedJob, worker_id: str) -> Job | None:
    """The claimed job, locked, if ``worker_id`` still holds it in PROCESSING; else None (logged)."""
    job = session.scalar(select(Job).where(Job.id == claimed.job_id).with_for_update())
    if job is None or job.state != JobState.PROCESSING.value or job.claimed_by != worker_id:
        LOG.warning("job no longer held; result discarded", extra={"fields": {"job_id": claimed.job_id}})
        return None
    return job


@contextlib.contextmanager
def heartbeat(session_factory: sessionmaker[Session], claimed: ClaimedJob, worker_id: str) -> Iterator[None]:
    """Refresh the job's ``updated_at`` every HEARTBEAT_SECONDS while the body runs, so other processes see that
    its worker is alive (:func:`worker_is_gone`)."""
    done = threading.Event()

    def beat() -> None:
        while not done.wait(HEARTBEAT_SECONDS):
            try:
                with session_factory.begin() as session:
                    session.execute(update(Job).where(
                        Job.id == claimed.job_id, Job.claimed_by == worker_id,
                        Job.state == JobState.PROCESSING.value).values(updated_at=utcnow()))
            except Exception:  # a missed beat is retried; the job goes on
                LOG.warning("heartbeat failed", extra={"fields": {"job_id": claimed.job_id}})

    thread = threading.Thread(target=beat, name=f"heartbeat-{claimed.job_id}", daemon=True)
    thread.start()
    try:
        yield
    finally:
        done.set()
        thread.join()


def settle_job(session: Session, job: Job, study_uid: str | None) -> bool:
    """A RESULTS_READY job with no PENDING delivery becomes DELIVERED (all SENT) or FAILED (some DEAD).

    Returns False (and changes nothing) while a delivery is still pending."""
    pending = session.scalar(select(Delivery.id).where(
        Delivery.job_id == job.id, Delivery.state == DeliveryState.PENDING.value).limit(1))
    if pending is not None:
        return False
    dead = session.execute(
        select(Delivery.destination, Delivery.object_kind, Delivery.payload_key, Delivery.last_error)
        .where(Delivery.job_id == job.id, Delivery.state == DeliveryState.DEAD.value).order_by(Delivery.id)
    ).all()
    if dead:
        detail = "; ".join(f"{d.destination} {d.object_kind} {d.payload_key}: {d.last_error}" for d in dead)
        set_job_state(session, job, JobState.FAILED, f"delivery dead-lettered: {detail}")
        audit(session, "job.failed", level=logging.WARNING, study_instance_uid=study_uid, job_id=job.id,
              dead_deliveries=len(dead))
    else:
        set_job_state(session, job, JobState.DELIVERED)
        audit(session, "job.delivered", study_instance_uid=study_uid, job_id=job.id)
    return True


def worker_is_gone(claimed_by: str | None, heartbeat: dt.datetime | None, now: dt.datetime,
                   stale_seconds: float = STALE_SECONDS) -> bool:
    """Whether the worker that claimed a job is gone: its process on this host has exited, its id is not one of
    ours (``host:pid:index``), or its heartbeat is older than ``stale_seconds`` (crashed on another host)."""
    if heartbeat is None or (now - heartbeat).total_seconds() > stale_seconds:
        return True
    host, _, rest = (claimed_by or "").partition(":")
    pid_text = rest.partition(":")[0]
    if not pid_text.isdigit():
        return True
    if host != socket.gethostname():
        return False  # another host's live worker: only its heartbeat can tell
    try:
        os.kill(int(pid_text), 0)
    except ProcessLookupError:
        return True
    except PermissionError:
        return False
    return False


def requeue_processing(session_factory: sessionmaker[Session], stale_seconds: float = STALE_SECONDS) -> list[int]:
    """Put jobs whose worker is gone (crashed process, lost heartbeat) back to QUEUED; return their ids.

    Runs at start-up (crash recovery) and periodically in a worker. Jobs held by live workers (this host: the process
    exists; other hosts: a fresh heartbeat) are left alone, so several worker processes may share one database and
    start or stop independently.
    """
    now = utcnow()
    with session_factory.begin() as session:
        rows = session.execute(
            select(Job.id, Job.claimed_by, Job.updated_at).where(Job.state == JobState.PROCESSING.value)
        ).all()
        ids = [job_id for job_id, claimed_by, beat in rows if worker_is_gone(claimed_by, beat, now, stale_seconds)]
        _requeue(session, ids, now, "its worker is gone (crashed or no heartbeat)")
    return ids


def release_held_jobs(session_factory: sessionmaker[Session], worker_ids: Collection[str], reason: str) -> list[int]:
    """Put the PROCESSING jobs held by ``worker_ids`` back to QUEUED (a worker stopping before its job finished:
    another worker, or this one after a restart, runs it again; its result UIDs stay the same). Their ids."""
    now = utcnow()
    with session_factory.begin() as session:
        ids = list(session.scalars(select(Job.id).where(Job.state == JobState.PROCESSING.value,
                                                        Job.claimed_by.in_(list(worker_ids)))))
        _requeue(session, ids, now, reason)
    return ids


def _requeue(session: Session, ids: list[int], now: dt.datetime, reason: str) -> None:
    if not ids:
        return
    session.execute(
        update(Job).where(Job.id.in_(ids), Job.state == JobState.PROCESSING.value)
        .values(state=JobState.QUEUED.value, claimed_by=None, claimed_at=None, queued_at=now, updated_at=now)
        .execution_options(synchronize_session=False)
    )
    for job_id in ids:
        job = session.get(Job, job_id, populate_existing=True)
        if job is not None:
            mirror_onto_study(session, job)
        audit(session, "job.requeued", job_id=job_id, reason=reason)


def requeue_held_job(session_factory: sessionmaker[Session], claimed: ClaimedJob, worker_id: str,
                     error: str) -> bool:
    """Put a job ``worker_id`` holds back to QUEUED (not FAILED), ``error`` saying why: its processing cannot run
    now (the serving engine is unavailable) and is retried later. It keeps its place in the queue. False when the
    worker no longer holds it."""
    with session_factory.begin() as session:
        job = held_job(session, claimed, worker_id)
        if job is None:
            return False
        set_job_state(session, job, JobState.QUEUED, error)
        job.claimed_by = None
        job.claimed_at = None
        audit(session, "job.requeued", level=logging.WARNING, study_instance_uid=claimed.study_instance_uid,
              job_id=job.id, error=error[:500])
    return True


def retry_job(session_factory: sessionmaker[Session], job_id: int) -> str:
    """Operator retry. A FAILED job with dead-lettered deliveries gets those rows back to PENDING (rows already
    SENT stay SENT and are never re-sent); a FAILED job whose processing failed is re-queued for processing: the
    new run makes the same result set (same UIDs), keeps the objects stored before the failure and queues only
    those that were never queued, so a delivered SR is not sent again and no second SR is made.
    Returns what was done; ValueError for an unknown job or one that is still in progress."""
    now = utcnow()
    with session_factory.begin() as session:
        job = session.scalar(select(Job).where(Job.id == job_id).with_for_update())
        if job is None:
            raise ValueError(f"job {job_id} does not exist")
        study_uid = session.scalar(select(Study.study_instance_uid).where(Study.id == job.study_id))
        dead = list(session.scalars(select(Delivery).where(
            Delivery.job_id == job.id, Delivery.state == DeliveryState.DEAD.value)))
        if dead:
            for row in dead:
                row.state = DeliveryState.PENDING.value
                row.attempts = 0
                row.next_attempt_at = now
            if job.state in (JobState.FAILED.value, JobState.DELIVERED.value):
                set_job_state(session, job, JobState.RESULTS_READY)
            audit(session, "job.retry", study_instance_uid=study_uid, job_id=job.id, deliveries_reset=len(dead))
            return f"{len(dead)} dead-lettered deliveries back to PENDING"
        if job.state == JobState.FAILED.value:  # processing failed (objects stored before it stay as they are)
            job.queued_at = now
            job.claimed_by = job.claimed_at = None
            set_job_state(session, job, JobState.QUEUED)
            audit(session, "job.retry", study_instance_uid=study_uid, job_id=job.id, requeued=True)
            return "re-queued for processing"
        if job.state in (JobState.DELIVERED.value, JobState.SKIPPED.value):
            return f"{job.state}: nothing to retry"
        raise ValueError(f"job {job_id} is {job.state}; only FAILED jobs can be retried")


def resend_job(session_factory: sessionmaker[Session], job_id: int, destination: str,
               queue: DeliveryQueue) -> str:
    """Operator re-send of a job's results to ``destination`` (:meth:`DeliveryQueue.resend`: its rows back to
    PENDING, SENT ones too; what it takes but was never queued, queued now). Returns what was done; ValueError when
    the job does not exist, has no results yet, or has nothing ``destination`` takes."""
    with session_factory.begin() as session:
        job = session.scalar(select(Job).where(Job.id == job_id).with_for_update())
        if job is None:
            raise ValueError(f"job {job_id} does not exist")
        if job.state not in (JobState.RESULTS_READY.value, JobState.DELIVERED.value, JobState.FAILED.value):
            raise ValueError(f"job {job_id} is {job.state}: it has no results to send")
        reset, added = queue.resend(session, job, destination)
        if not reset and not added:
            raise ValueError(f"job {job_id} has no result that {destination} takes")
        if job.state != JobState.RESULTS_READY.value:
            set_job_state(session, job, JobState.RESULTS_READY)
        study_uid = session.scalar(select(Study.study_instance_uid).where(Study.id == job.study_id))
        audit(session, "job.resend", study_instance_uid=study_uid, job_id=job.id, destination=destination,
              deliveries_reset=reset, deliveries_added=added)
    return f"{reset + added} objects queued for {destination}"
