"""Job worker: claim a QUEUED job (:mod:`dicomnode.jobs`), run the processor, write results durably, record
deliveries. A result is committed only if this worker still holds the job.

The processor yields each result object as soon as it is final (:mod:`dicomnode.processing`): the worker writes it
durably and commits its delivery rows at once, so delivery starts while the processor makes the others.
"""
from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from pathlib import Path

from pydicom import Dataset
from pydicom.uid import ExplicitVRLittleEndian
from sqlalchemy import func, select
from sqlalchemy.orm import Session, sessionmaker

from dicomnode import metrics
from dicomnode.audit import audit
from dicomnode.config import NodeConfig
from dicomnode.datadir import DataDir, remove_partial_files, write_durably
from dicomnode.db.models import Delivery, Instance, Job
from dicomnode.db.states import JobState
from dicomnode.destinations import ResultSet, StoredObject
from dicomnode.jobs import (
    STALE_SECONDS,
    ClaimedJob,
    JobLost,
    claim_job,
    default_worker_id,
    heartbeat,
    held_job,
    release_held_jobs,
    requeue_held_job,
    requeue_processing,
    set_job_state,
    settle_job,
)
from dicomnode.processing import Processor, ResultObject, ResultRecord, StudyInput
from dicomnode.queueing import RECORD_FILE, DeliveryQueue
from dicomnode.triage import record_triage
from dicomnode.uids import is_valid_uid
from inference.chat import EngineUnavailable
from sr_writer.validate import part10_bytes

LOG = logging.getLogger("dicomnode.worker")
ENGINE_BACKOFF_MAX = 60.0  # seconds a worker waits at most after the serving engine was unavailable


def study_input(session: Session, data_dir: Path, claimed: ClaimedJob) -> StudyInput:
    """The processor's input: selected instances of the study (every generation so far) and earlier results."""
    rows = session.scalars(
        select(Instance.path).where(Instance.study_id == claimed.study_id, Instance.selected.is_(True),
                                    Instance.generation <= claimed.generation)
        .order_by(Instance.received_at, Instance.id)
    )
    dirs = DataDir(data_dir)
    paths = [dirs.absolute(p) for p in rows]
    earlier = session.scalars(
        select(Job.id).where(Job.study_id == claimed.study_id, Job.generation < claimed.generation,
                             Job.state == JobState.DELIVERED.value).order_by(Job.generation)
    )
    predecessors: list[Path] = []
    for job_id in earlier:
        directory = dirs.results(claimed.study_instance_uid, job_id)
        if directory.is_dir():
            predecessors.extend(sorted(directory.glob("*.dcm")))
    return StudyInput(claimed.study_instance_uid, claimed.job_id, claimed.generation, paths, predecessors)


def dataset_bytes(dataset: Dataset) -> bytes:
    """A Part-10 file of ``dataset`` (Explicit VR Little Endian meta added when missing)."""
    if "TransferSyntaxUID" not in getattr(dataset, "file_meta", Dataset()):
        dataset.ensure_file_meta()
        dataset.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    return part10_bytes(dataset)


def write_result_object(directory: Path, obj: ResultObject, fsync: bool = True) -> Path:
    """Write one result object durably as ``<kind>-<SOPInstanceUID>.dcm``; returns its path.

    A file already there (an earlier run of this job wrote it, and may have sent it) is kept: result UIDs are the
    same on every run of a job (:func:`dicomnode.uids.result_uids`), and what was stored stays what is sent."""
    sop_uid = obj.sop_instance_uid
    if not is_valid_uid(sop_uid):
        raise ValueError(f"result object has invalid SOP Instance UID {sop_uid!r}")
    path = directory / f"{obj.kind}-{sop_uid}.dcm"
    if not path.is_file():
        write_durably(path, obj.data if obj.data is not None else dataset_bytes(obj.dataset), fsync)
    return path


class Worker:
    """Runs jobs with ``processor``: ``run_once()`` for one job, ``start()``/``stop()`` for background threads."""

    def __init__(self, config: NodeConfig, session_factory: sessionmaker[Session], processor: Processor,
                 worker_id: str | None = None, on_results: Callable[[], None] | None = None) -> None:
        self.config = config
        self.session_factory = session_factory
        self.processor = processor
        self.dirs = DataDir(config.storage.data_dir)
        self.data_dir = self.dirs.root
        self.worker_id = worker_id or default_worker_id()
        self.on_results = on_results  # called when deliveries were recorded: wakes an in-process deliverer
        self.queue = DeliveryQueue(config)
        self._stop = threading.Event()
        self._wake = threading.Event()
        self._threads: list[threading.Thread] = []
        self._worker_ids: list[str] = []  # of the threads started

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
        directory = self.dirs.results(claimed.study_instance_uid, claimed.job_id)
        stored: dict[str, StoredObject] = {}  # SOP Instance UID -> object stored and queued
        record: Path | None = None
        record_json: str | None = None
        remove_partial_files(directory)  # an earlier run of this job that crashed mid-write (the job is ours now)
        try:
            with self.session_factory() as session:
                study = study_input(session, self.data_dir, claimed)
            missing = [p.name for p in study.instance_paths if not p.exists()]
            if not study.instance_paths or missing:
                raise FileNotFoundError(f"instance files missing from the spool: {missing or 'none selected'}")
            with heartbeat(self.session_factory, claimed, worker_id):
                for output in self.processor.process(study):
                    if isinstance(output, ResultRecord):
                        record, record_json = directory / RECORD_FILE, output.json
                        write_durably(record, output.json.encode("utf-8"), self.config.storage.fsync)
                    else:
                        self._store(claimed, worker_id, directory, output, stored)
            if metrics.engine_state() is not None:  # the serving engine answered the whole study
                metrics.set_engine_state(True, "up")
                self._engine_backoff = 0.0
        except JobLost:
            return  # another worker has the job now; what was stored before stays queued
        except EngineUnavailable as exc:  # the serving engine is down: retry later, the study is not at fault
            self._requeue_engine_down(claimed, worker_id, f"serving engine unavailable: {exc}")
            return
        except Exception as exc:  # any processor failure fails the job, never the worker
            LOG.exception("job failed", extra={"fields": {"job_id": claimed.job_id}})
            error = f"{type(exc).__name__}: {exc}"
            if stored:
                error += (f" ({len(stored)} result object(s) finished before the failure stay queued for "
                          f"delivery: {', '.join(f'{o.kind} {uid}' for uid, o in stored.items())})")
            self._finish_failed(claimed, worker_id, error)
            return
        result = ResultSet(claimed.job_id, claimed.study_instance_uid, claimed.generation, list(stored.values()),
                           record_json)
        self._finish_ok(claimed, worker_id, result, record)

    def _store(self, claimed: ClaimedJob, worker_id: str, directory: Path, obj: ResultObject,
               stored: dict[str, StoredObject]) -> None:
        """Store one finished result object durably and queue it for its destinations now, so it is sent while the
        processor makes the others. ``JobLost`` when the job was taken from us. An object yielded twice is stored
        and queued once."""
        sop_uid = obj.sop_instance_uid
        if sop_uid in stored:
            return
        path = write_result_object(directory, obj, self.config.storage.fsync)
        kept = StoredObject(obj.kind, obj.sop_class_uid, sop_uid, obj.series_instance_uid, path)
        with self.session_factory.begin() as session:
            job = held_job(session, claimed, worker_id)
            if job is None:
                raise JobLost(f"job {claimed.job_id} is no longer held by {worker_id}")
            created = self.queue.object_stored(session, job, kept)
        stored[sop_uid] = kept
        if created and self.on_results is not None:
            self.on_results()

    def _requeue_engine_down(self, claimed: ClaimedJob, worker_id: str, error: str) -> None:
        """Back to QUEUED (not FAILED); this worker waits (doubling, at most ENGINE_BACKOFF_MAX s) before its next
        claim."""
        metrics.set_engine_state(False, error[:300])
        self._engine_backoff = min(ENGINE_BACKOFF_MAX, max(1.0, 2 * getattr(self, "_engine_backoff", 0.0)))
        LOG.warning("serving engine unavailable; job re-queued", extra={"fields": {
            "job_id": claimed.job_id, "retry_in_s": self._engine_backoff}})
        requeue_held_job(self.session_factory, claimed, worker_id, error)

    def _finish_failed(self, claimed: ClaimedJob, worker_id: str, error: str) -> None:
        with self.session_factory.begin() as session:
            job = held_job(session, claimed, worker_id)
            if job is None:
                return
            set_job_state(session, job, JobState.FAILED, error)
            audit(session, "job.failed", level=logging.WARNING, study_instance_uid=claimed.study_instance_uid,
                  job_id=job.id, error=error[:500])

    def _finish_ok(self, claimed: ClaimedJob, worker_id: str, result: ResultSet, record: Path | None) -> None:
        """Every object was stored and queued as it came (``_store``); now what destinations build from the whole
        set (messages) is queued, and the job waits for its deliveries."""
        with self.session_factory.begin() as session:
            job = held_job(session, claimed, worker_id)
            if job is None:
                return
            job.record_path = self.dirs.relative(record) if record else None
            record_triage(session, job, result.record_json, self.config.triage.as_rules(),
                          claimed.study_instance_uid)
            messages = self.queue.result_set_stored(session, job, result)
            deliveries = session.scalar(select(func.count(Delivery.id)).where(Delivery.job_id == job.id)) or 0
            state = JobState.RESULTS_READY if deliveries else JobState.DELIVERED
            set_job_state(session, job, state)
            audit(session, f"job.{state.value.lower()}", study_instance_uid=claimed.study_instance_uid,
                  job_id=job.id, objects=len(result.objects), deliveries=deliveries)
            if deliveries:  # they may all be sent already
                settle_job(session, job, claimed.study_instance_uid)
        if messages and self.on_results is not None:
            self.on_results()

    # -- background threads ----------------------------------------------------------------------------------
    def start(self) -> None:
        """Start ``processing.workers`` threads polling the queue every ``processing.poll_seconds``."""
        self._stop.clear()
        for index in range(self.config.processing.workers):
            worker_id = self.worker_id if index == 0 else f"{self.worker_id}.{index}"
            self._worker_ids.append(worker_id)
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
            except Exception:  # database hiccup: log and poll again
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
        """Stop polling; the job in flight may finish within ``timeout`` s (None: however long it takes). A job still
        running then is put back to QUEUED and left to its (daemon) thread, which can no longer store anything for it:
        the node stops in bounded time and the job runs again later, with the same result UIDs."""
        self._stop.set()
        self._wake.set()
        deadline = None if timeout is None else time.monotonic() + timeout
        for thread in self._threads:
            thread.join(None if deadline is None else max(0.0, deadline - time.monotonic()))
        self._threads = [t for t in self._threads if t.is_alive()]
        if self._threads:
            ids = release_held_jobs(self.session_factory, self._worker_ids,
                                    "the node stopped before the job finished")
            LOG.warning("stopped with a job in progress; re-queued", extra={"fields": {"jobs": ids}})
        close = getattr(self.processor, "close", None)
        if callable(close) and not self._threads:  # a processor's own resources (e.g. a page process)
            close()
