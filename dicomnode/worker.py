"""Job worker: claim a QUEUED job atomically, run the processor, write results durably, record deliveries.

Claiming is one transaction: PostgreSQL picks a row with ``FOR UPDATE SKIP LOCKED``; on every database the state
change is a conditional ``UPDATE ... WHERE state='QUEUED'`` whose row count decides who won (SQLite serialises
writers with ``BEGIN IMMEDIATE``). A result is committed only if this worker still holds the job.

A processor may publish each result object as soon as it is final (``StudyInput.publish``): it is written durably
and its delivery rows are committed at once, so delivery starts while the processor makes the others.
"""
from __future__ import annotations

import contextlib
import logging
import os
import socket
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

from pydicom import Dataset
from pydicom.uid import ExplicitVRLittleEndian
from sqlalchemy import select, update
from sqlalchemy.orm import Session, sessionmaker

from dicomnode import metrics
from dicomnode.audit import audit
from dicomnode.completion import HEARTBEAT_SECONDS, STALE_SECONDS, requeue_processing
from dicomnode.config import NodeConfig
from dicomnode.db.ingest import newest_job
from dicomnode.db.models import Delivery, Instance, Job, Study, utcnow
from dicomnode.db.states import DeliveryState, JobState
from dicomnode.processing import ProcessingResult, Processor, ResultObject, StudyInput
from dicomnode.spool import fsync_dir
from dicomnode.uids import is_valid_uid
from inference.chat import EngineUnavailable
from sr_writer.validate import part10_bytes

LOG = logging.getLogger("dicomnode.worker")
RESULTS_DIR = "results"
MAX_ERROR_CHARS = 4000


@dataclass(frozen=True)
class ClaimedJob:
    job_id: int
    study_id: int
    study_instance_uid: str
    generation: int


ENGINE_BACKOFF_MAX = 60.0  # seconds a worker waits at most after the serving engine was unavailable


def default_worker_id(index: int = 0) -> str:
    return f"{socket.gethostname()}:{os.getpid()}:{index}"


def set_job_state(session: Session, job: Job, state: JobState, error: str | None = None) -> None:
    """Move ``job`` to ``state`` and mirror it onto its study when it is the study's newest job."""
    now = utcnow()
    job.state = state.value
    job.error = error[:MAX_ERROR_CHARS] if error else None
    job.updated_at = now
    job.finished_at = now if state in (JobState.DELIVERED, JobState.FAILED, JobState.SKIPPED) else None
    if state is JobState.DELIVERED and job.queued_at is not None:
        metrics.study_seconds.observe(max(0.0, (now - job.queued_at).total_seconds()))
    newest = newest_job(session, job.study_id)
    if newest is not None and newest.id == job.id:
        session.execute(
            update(Study).where(Study.id == job.study_id)
            .values(state=state.value, state_reason=job.error if state is JobState.FAILED else None)
        )


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
            won = session.execute(
                update(Job).where(Job.id == job_id, Job.state == JobState.QUEUED.value)
                .values(state=JobState.PROCESSING.value, claimed_by=worker_id, claimed_at=now, updated_at=now,
                        attempts=Job.attempts + 1, error=None)
                .execution_options(synchronize_session=False)
            ).rowcount
            if won != 1:
                continue
            job = session.get(Job, job_id, populate_existing=True)
            assert job is not None
            study = session.get(Study, job.study_id)
            assert study is not None
            if study.generation == job.generation:
                study.state = JobState.PROCESSING.value
            audit(session, "job.processing", study_instance_uid=study.study_instance_uid, job_id=job.id,
                  generation=job.generation, worker=worker_id, attempt=job.attempts)
            return ClaimedJob(job.id, study.id, study.study_instance_uid, job.generation)
    return None


def study_input(session: Session, data_dir: Path, claimed: ClaimedJob) -> StudyInput:
    """The processor's input: selected instances of the study (every generation so far) and earlier results."""
    rows = session.scalars(
        select(Instance.path).where(Instance.study_id == claimed.study_id, Instance.selected.is_(True),
                                    Instance.generation <= claimed.generation)
        .order_by(Instance.received_at, Instance.id)
    )
    paths = [data_dir / p for p in rows]
    earlier = session.scalars(
        select(Job.id).where(Job.study_id == claimed.study_id, Job.generation < claimed.generation,
                             Job.state == JobState.DELIVERED.value).order_by(Job.generation)
    )
    predecessors: list[Path] = []
    for job_id in earlier:
        directory = results_dir(data_dir, claimed.study_instance_uid, job_id)
        if directory.is_dir():
            predecessors.extend(sorted(directory.glob("*.dcm")))
    return StudyInput(claimed.study_instance_uid, claimed.job_id, claimed.generation, paths, predecessors)


def results_dir(data_dir: Path, study_uid: str, job_id: int) -> Path:
    if not is_valid_uid(study_uid):
        raise ValueError(f"invalid study UID {study_uid!r}")
    return data_dir / RESULTS_DIR / study_uid / str(job_id)


def write_durably(path: Path, data: bytes, fsync: bool = True) -> None:
    """Write ``data`` to a temp file, fsync it, rename it to ``path`` and fsync the directory."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex}.part")
    with open(tmp, "wb") as handle:
        handle.write(data)
        handle.flush()
        if fsync:
            os.fsync(handle.fileno())
    os.replace(tmp, path)
    if fsync:
        fsync_dir(path.parent)


def dataset_bytes(dataset: Dataset) -> bytes:
    """A Part-10 file of ``dataset`` (Explicit VR Little Endian meta added when missing)."""
    if "TransferSyntaxUID" not in getattr(dataset, "file_meta", Dataset()):
        dataset.ensure_file_meta()
        dataset.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    return part10_bytes(dataset)


def write_result_object(directory: Path, obj: ResultObject, fsync: bool = True) -> Path:
    """Write one result object durably as ``<kind>-<SOPInstanceUID>.dcm``; returns its path.

    A file already there (an earlier run of this job wrote it, and may have sent it) is kept: result UIDs are the
    same on every run of a job (:func:`dicomnode.uids.result_uids`), and what was published stays what is sent."""
    sop_uid = str(obj.dataset.SOPInstanceUID)
    if not is_valid_uid(sop_uid):
        raise ValueError(f"result object has invalid SOP Instance UID {sop_uid!r}")
    path = directory / f"{obj.kind}-{sop_uid}.dcm"
    if not path.is_file():
        write_durably(path, obj.data if obj.data is not None else dataset_bytes(obj.dataset), fsync)
    return path


def remove_partial_files(directory: Path) -> int:
    """Delete the temp files (``.*.part``) an interrupted :func:`write_durably` left in ``directory``."""
    removed = 0
    for leftover in directory.glob(".*.part") if directory.is_dir() else ():
        leftover.unlink(missing_ok=True)
        removed += 1
    return removed


def write_results(directory: Path, result: ProcessingResult, fsync: bool = True) -> list[tuple[ResultObject, Path]]:
    """Write every result object (``<kind>-<SOPInstanceUID>.dcm``) and the record (``record.json``)."""
    written = [(obj, write_result_object(directory, obj, fsync)) for obj in result.objects]
    if result.record_json is not None:
        write_durably(directory / "record.json", result.record_json.encode("utf-8"), fsync)
    return written


class JobLost(RuntimeError):
    """The job is no longer held by this worker (re-queued as stale meanwhile): its results must not be used."""


def settle_job(session: Session, job: Job, study_uid: str | None) -> bool:
    """A RESULTS_READY job with no PENDING delivery becomes DELIVERED (all SENT) or FAILED (some DEAD).

    Returns False (and changes nothing) while a delivery is still pending."""
    pending = session.scalar(select(Delivery.id).where(
        Delivery.job_id == job.id, Delivery.state == DeliveryState.PENDING.value).limit(1))
    if pending is not None:
        return False
    dead = session.execute(
        select(Delivery.destination, Delivery.sop_instance_uid, Delivery.last_error)
        .where(Delivery.job_id == job.id, Delivery.state == DeliveryState.DEAD.value).order_by(Delivery.id)
    ).all()
    if dead:
        detail = "; ".join(f"{d.destination} {d.sop_instance_uid}: {d.last_error}" for d in dead)
        set_job_state(session, job, JobState.FAILED, f"delivery dead-lettered: {detail}")
        audit(session, "job.failed", level=logging.WARNING, study_instance_uid=study_uid, job_id=job.id,
              dead_deliveries=len(dead))
    else:
        set_job_state(session, job, JobState.DELIVERED)
        audit(session, "job.delivered", study_instance_uid=study_uid, job_id=job.id)
    return True


class Worker:
    """Runs jobs with ``processor``: ``run_once()`` for one job, ``start()``/``stop()`` for background threads."""

    def __init__(self, config: NodeConfig, session_factory: sessionmaker[Session], processor: Processor,
                 worker_id: str | None = None, on_results: Callable[[], None] | None = None) -> None:
        self.config = config
        self.session_factory = session_factory
        self.processor = processor
        self.data_dir = Path(config.storage.data_dir).resolve()
        self.worker_id = worker_id or default_worker_id()
        self.on_results = on_results  # called when deliveries were recorded: wakes an in-process deliverer
        self._stop = threading.Event()
        self._wake = threading.Event()
        self._threads: list[threading.Thread] = []

    # -- one job ---------------------------------------------------------------------------------------------
    def run_once(self, worker_id: str | None = None) -> bool:
        """Claim and run one job; False when the queue was empty."""
        worker_id = worker_id or self.worker_id
        claimed = claim_job(self.session_factory, worker_id)
        if claimed is None:
            return False
        self._run(claimed, worker_id)
        return True

    def _run(self, claimed: ClaimedJob, worker_id: str) -> None:
        directory = results_dir(self.data_dir, claimed.study_instance_uid, claimed.job_id)
        published: dict[str, tuple[ResultObject, Path]] = {}  # SOP Instance UID -> object stored and queued early
        remove_partial_files(directory)  # an earlier run of this job that crashed mid-write (the job is ours now)
        try:
            with self.session_factory() as session:
                study = study_input(session, self.data_dir, claimed)
            missing = [p.name for p in study.instance_paths if not p.exists()]
            if not study.instance_paths or missing:
                raise FileNotFoundError(f"instance files missing from the spool: {missing or 'none selected'}")
            study.publish = lambda obj: self._publish(claimed, worker_id, directory, obj, published)
            with self._heartbeat(claimed, worker_id):
                result = self.processor.process(study)
            if metrics.engine_state() is not None:
                metrics.set_engine_state(True, "up")
                self._engine_backoff = 0.0
            rest = ProcessingResult([o for o in result.objects if str(o.dataset.SOPInstanceUID) not in published],
                                    result.record_json)
            written = [*published.values(), *write_results(directory, rest, self.config.storage.fsync)]
        except JobLost:
            return  # another worker has the job now; what was published before stays queued
        except EngineUnavailable as exc:  # the serving engine is down: retry later, the study is not at fault
            self._requeue_engine_down(claimed, worker_id, f"serving engine unavailable: {exc}")
            return
        except Exception as exc:  # noqa: BLE001 - any processor failure fails the job, never the worker
            LOG.exception("job failed", extra={"fields": {"job_id": claimed.job_id}})
            error = f"{type(exc).__name__}: {exc}"
            if published:
                error += (f" ({len(published)} result object(s) finished before the failure stay queued for "
                          f"delivery: {', '.join(f'{o.kind} {uid}' for uid, (o, _) in published.items())})")
            self._finish_failed(claimed, worker_id, error)
            return
        record = directory / "record.json" if result.record_json is not None else None
        self._finish_ok(claimed, worker_id, written, record)

    def _publish(self, claimed: ClaimedJob, worker_id: str, directory: Path, obj: ResultObject,
                 published: dict[str, tuple[ResultObject, Path]]) -> None:
        """Store one finished result object durably and queue it for its destinations now (``StudyInput.publish``),
        so it is sent while the processor makes the others. ``JobLost`` when the job was taken from us."""
        path = write_result_object(directory, obj, self.config.storage.fsync)
        with self.session_factory.begin() as session:
            job = self._held_job(session, claimed, worker_id)
            if job is None:
                raise JobLost(f"job {claimed.job_id} is no longer held by {worker_id}")
            created = self._add_deliveries(session, job, [(obj, path)])
        published[str(obj.dataset.SOPInstanceUID)] = (obj, path)
        if created and self.on_results is not None:
            self.on_results()

    @contextlib.contextmanager
    def _heartbeat(self, claimed: ClaimedJob, worker_id: str) -> Iterator[None]:
        """Refresh the job's ``updated_at`` while it is processed, so other processes see this worker is alive."""
        done = threading.Event()

        def beat() -> None:
            while not done.wait(HEARTBEAT_SECONDS):
                try:
                    with self.session_factory.begin() as session:
                        session.execute(update(Job).where(
                            Job.id == claimed.job_id, Job.claimed_by == worker_id,
                            Job.state == JobState.PROCESSING.value).values(updated_at=utcnow()))
                except Exception:  # noqa: BLE001 - a missed beat is retried; the job goes on
                    LOG.warning("heartbeat failed", extra={"fields": {"job_id": claimed.job_id}})

        thread = threading.Thread(target=beat, name=f"heartbeat-{claimed.job_id}", daemon=True)
        thread.start()
        try:
            yield
        finally:
            done.set()
            thread.join()

    def _held_job(self, session: Session, claimed: ClaimedJob, worker_id: str) -> Job | None:
        job = session.scalar(select(Job).where(Job.id == claimed.job_id).with_for_update())
        if job is None or job.state != JobState.PROCESSING.value or job.claimed_by != worker_id:
            LOG.warning("job no longer held; result discarded", extra={"fields": {"job_id": claimed.job_id}})
            return None
        return job

    def _requeue_engine_down(self, claimed: ClaimedJob, worker_id: str, error: str) -> None:
        """Back to QUEUED (not FAILED); this worker waits (doubling, at most ENGINE_BACKOFF_MAX s) before its next
        claim."""
        metrics.set_engine_state(False, error[:300])
        self._engine_backoff = min(ENGINE_BACKOFF_MAX, max(1.0, 2 * getattr(self, "_engine_backoff", 0.0)))
        LOG.warning("serving engine unavailable; job re-queued", extra={"fields": {
            "job_id": claimed.job_id, "retry_in_s": self._engine_backoff}})
        with self.session_factory.begin() as session:
            job = self._held_job(session, claimed, worker_id)
            if job is None:
                return
            set_job_state(session, job, JobState.QUEUED, error)
            job.claimed_by = None
            audit(session, "job.requeued", level=logging.WARNING, study_instance_uid=claimed.study_instance_uid,
                  job_id=job.id, error=error[:500])

    def _finish_failed(self, claimed: ClaimedJob, worker_id: str, error: str) -> None:
        with self.session_factory.begin() as session:
            job = self._held_job(session, claimed, worker_id)
            if job is None:
                return
            set_job_state(session, job, JobState.FAILED, error)
            audit(session, "job.failed", level=logging.WARNING, study_instance_uid=claimed.study_instance_uid,
                  job_id=job.id, error=error[:500])

    def _finish_ok(self, claimed: ClaimedJob, worker_id: str, written: list[tuple[ResultObject, Path]],
                   record: Path | None) -> None:
        with self.session_factory.begin() as session:
            job = self._held_job(session, claimed, worker_id)
            if job is None:
                return
            job.record_path = str(record.relative_to(self.data_dir)) if record else None
            created = self._add_deliveries(session, job, written)
            queued = created or session.scalar(select(Delivery.id).where(Delivery.job_id == job.id).limit(1))
            state = JobState.RESULTS_READY if queued else JobState.DELIVERED
            set_job_state(session, job, state)
            audit(session, f"job.{state.value.lower()}", study_instance_uid=claimed.study_instance_uid,
                  job_id=job.id, objects=len(written), deliveries=created)
            if queued:  # published objects may all be sent already
                settle_job(session, job, claimed.study_instance_uid)
        if created and self.on_results is not None:
            self.on_results()

    def _add_deliveries(self, session: Session, job: Job, written: list[tuple[ResultObject, Path]]) -> int:
        """A PENDING delivery row per written object and destination that takes its kind (never a second one for
        the same destination and SOP Instance UID); returns how many were added."""
        now = utcnow()
        created = 0
        for destination in self.config.destinations:
            for obj, path in written:
                if obj.kind not in destination.objects:
                    continue
                sop_uid = str(obj.dataset.SOPInstanceUID)
                exists = session.scalar(select(Delivery.id).where(
                    Delivery.destination == destination.name, Delivery.sop_instance_uid == sop_uid))
                if exists is not None:  # already recorded for this destination: never send twice
                    continue
                session.add(Delivery(
                    job_id=job.id, destination=destination.name, object_kind=obj.kind,
                    sop_instance_uid=sop_uid, sop_class_uid=str(obj.dataset.SOPClassUID),
                    path=str(path.relative_to(self.data_dir)), state=DeliveryState.PENDING.value,
                    attempts=0, next_attempt_at=now,
                ))
                created += 1
        return created

    # -- background threads ----------------------------------------------------------------------------------
    def start(self) -> None:
        """Start ``processing.workers`` threads polling the queue every ``processing.poll_seconds``."""
        self._stop.clear()
        for index in range(self.config.processing.workers):
            worker_id = self.worker_id if index == 0 else f"{self.worker_id}.{index}"
            thread = threading.Thread(target=self._loop, args=(worker_id,), name=f"worker-{index}", daemon=True)
            thread.start()
            self._threads.append(thread)

    def _loop(self, worker_id: str) -> None:
        next_sweep = time.monotonic() + STALE_SECONDS / 2
        while not self._stop.is_set():
            try:
                busy = self.run_once(worker_id)
                if worker_id == self.worker_id and time.monotonic() >= next_sweep:
                    next_sweep = time.monotonic() + STALE_SECONDS / 2
                    requeued = requeue_processing(self.session_factory)  # jobs of workers that died meanwhile
                    if requeued:
                        LOG.warning("re-queued jobs of a lost worker", extra={"fields": {"jobs": requeued}})
            except Exception:  # noqa: BLE001 - database hiccup: log and poll again
                LOG.exception("worker pass failed")
                busy = False
            backoff = getattr(self, "_engine_backoff", 0.0)
            if backoff and busy:
                self._stop.wait(backoff)  # the engine was down: wait before claiming again
            elif not busy:
                self._wake.wait(self.config.processing.poll_seconds)
                self._wake.clear()

    def wake(self) -> None:
        """A job was queued in this process: look now instead of at the next poll."""
        self._wake.set()

    def stop(self, timeout: float | None = None) -> None:
        """Stop polling; the job in flight finishes first."""
        self._stop.set()
        self._wake.set()
        for thread in self._threads:
            thread.join(timeout)
        self._threads = [t for t in self._threads if t.is_alive()]
        close = getattr(self.processor, "close", None)
        if callable(close) and not self._threads:  # a processor's own resources (e.g. a page process)
            close()


def requeue_stale_jobs(session_factory: sessionmaker[Session]) -> list[int]:
    """Crash recovery at start-up: jobs left in PROCESSING go back to QUEUED (see dicomnode.completion)."""
    return requeue_processing(session_factory)


def retry_job(session_factory: sessionmaker[Session], job_id: int) -> str:
    """Operator retry. A FAILED job with dead-lettered deliveries gets those rows back to PENDING (rows already
    SENT stay SENT and are never re-sent); a FAILED job whose processing failed is re-queued for processing: the
    new run makes the same result set (same UIDs), keeps the objects published before the failure and queues only
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
        if job.state == JobState.FAILED.value:  # processing failed (objects it published stay as they are)
            job.queued_at = now
            job.claimed_by = job.claimed_at = None
            set_job_state(session, job, JobState.QUEUED)
            audit(session, "job.retry", study_instance_uid=study_uid, job_id=job.id, requeued=True)
            return "re-queued for processing"
        if job.state in (JobState.DELIVERED.value, JobState.SKIPPED.value):
            return f"{job.state}: nothing to retry"
        raise ValueError(f"job {job_id} is {job.state}; only FAILED jobs can be retried")
