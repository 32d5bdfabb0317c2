"""Retention: remove every file of a finished study once ``storage.retention_days`` have passed.

Every file: the received instances (spool), the results (SR, pages, ``record.json`` under ``results/<study>``) and
any prior-study copy left in ``priors/<job>`` (normally removed when its job ends; a crash can leave one).

A study qualifies only when its newest job is DELIVERED (every result acknowledged by every destination) or
SKIPPED (nothing to deliver), and that job finished more than ``retention_days`` ago, and every delivery of it to
a destination with ``storage_commitment`` is COMMITTED. Studies still receiving,
queued, processing, waiting for delivery or FAILED keep their files. Rows stay (the audit trail and the instance
list, marked not selected with skip_reason "file removed by retention" so that a study re-opened by a late instance
is processed from the files still there); one ``retention.purged`` audit event per study records what was removed.
"""
from __future__ import annotations

import datetime as dt
import logging
import threading
from dataclasses import dataclass
from pathlib import Path

from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from dicomnode.audit import audit
from dicomnode.commitment import commitment_destinations, uncommitted_deliveries
from dicomnode.config import NodeConfig
from dicomnode.datadir import SPOOL_DIR, DataDir
from dicomnode.db.models import Instance, Job, Study, utcnow
from dicomnode.db.states import JobState
from dicomnode.uids import is_valid_uid

LOG = logging.getLogger("dicomnode.retention")
PURGEABLE = (JobState.DELIVERED.value, JobState.SKIPPED.value)
SPOOL_PREFIX = f"{SPOOL_DIR}/"
PURGED_REASON = "file removed by retention"


@dataclass
class RetentionReport:
    studies: int = 0
    files: int = 0
    bytes: int = 0


def expired_studies(session: Session, cutoff: dt.datetime) -> list[tuple[int, str]]:
    """(id, Study Instance UID) of studies whose newest job is DELIVERED/SKIPPED and finished before ``cutoff``."""
    rows = session.execute(
        select(Study.id, Study.study_instance_uid)
        .join(Job, (Job.study_id == Study.id) & (Job.generation == Study.generation))
        .where(Job.state.in_(PURGEABLE), Job.finished_at.is_not(None), Job.finished_at < cutoff)
        .order_by(Study.id)
    ).all()
    return [(r.id, r.study_instance_uid) for r in rows]


def _unlink(path: Path) -> int | None:
    """Delete one file; its size, or None when it was already gone."""
    try:
        size = path.lstat().st_size
        path.unlink()
    except FileNotFoundError:
        return None
    return size


def _remove_tree(directory: Path) -> tuple[int, int]:
    """Delete every file under ``directory`` and the directory itself; (files, bytes) removed."""
    if not directory.is_dir():
        return 0, 0
    files = removed_bytes = 0
    for path in sorted(directory.rglob("*"), reverse=True):  # children before their directories
        if path.is_dir() and not path.is_symlink():
            path.rmdir()
        elif (size := _unlink(path)) is not None:
            files += 1
            removed_bytes += size
    directory.rmdir()
    return files, removed_bytes


def _remove_empty_dirs(directory: Path, stop: Path) -> None:
    while directory != stop and stop in directory.parents:
        try:
            directory.rmdir()
        except OSError:
            return
        directory = directory.parent


def purge_expired(config: NodeConfig, session_factory: sessionmaker[Session],
                  now: dt.datetime | None = None) -> RetentionReport:
    """Delete the spool, result and prior-cache files of expired studies; return what was removed."""
    now = now or utcnow()
    cutoff = now - dt.timedelta(days=config.storage.retention_days)
    dirs = DataDir(config.storage.data_dir)
    spool_root = dirs.spool
    report = RetentionReport()
    committing = commitment_destinations(config)
    with session_factory() as session:
        candidates = expired_studies(session, cutoff)
    for study_id, study_uid in candidates:
        with session_factory.begin() as session:
            # re-check under the transaction: a late instance may have opened a new generation meanwhile
            if (study_id, study_uid) not in expired_studies(session, cutoff):
                continue
            if uncommitted_deliveries(session, study_id, committing):  # the destination's copy is not safe yet
                continue
            files = removed_bytes = 0
            for instance in session.scalars(select(Instance).where(Instance.study_id == study_id)):
                relative = instance.path
                if not relative.startswith(SPOOL_PREFIX):
                    continue
                if instance.selected:  # a re-opened study's next job must not expect this file
                    instance.selected = False
                    instance.skip_reason = PURGED_REASON
                path = dirs.absolute(relative).resolve()
                if spool_root not in path.parents:
                    continue
                size = _unlink(path)
                if size is None:
                    continue
                files += 1
                removed_bytes += size
                _remove_empty_dirs(path.parent, spool_root)
            job_ids = session.scalars(select(Job.id).where(Job.study_id == study_id)).all()
            trees = [dirs.priors(job_id) for job_id in job_ids]
            if is_valid_uid(study_uid):  # never join an odd UID into a path that gets deleted
                trees.append(dirs.study_results(study_uid))
            for tree in trees:
                tree_files, tree_bytes = _remove_tree(tree)
                files += tree_files
                removed_bytes += tree_bytes
            if files:
                audit(session, "retention.purged", study_instance_uid=study_uid, files=files,
                      bytes=removed_bytes, retention_days=config.storage.retention_days)
                report.studies += 1
                report.files += files
                report.bytes += removed_bytes
    return report


class Retention:
    """Runs :func:`purge_expired` every ``interval_seconds`` in a background thread."""

    def __init__(self, config: NodeConfig, session_factory: sessionmaker[Session],
                 interval_seconds: float = 3600.0) -> None:
        self.config = config
        self.session_factory = session_factory
        self.interval_seconds = interval_seconds
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def run_once(self) -> RetentionReport:
        return purge_expired(self.config, self.session_factory)

    def start(self) -> None:
        self._stop.clear()
        self._thread = threading.Thread(target=self._loop, name="retention", daemon=True)
        self._thread.start()

    def _loop(self) -> None:
        while not self._stop.is_set():
            try:
                self.run_once()
            except Exception:  # try again next interval
                LOG.exception("retention pass failed")
            self._stop.wait(self.interval_seconds)

    def stop(self, timeout: float | None = None) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout)
            self._thread = None
