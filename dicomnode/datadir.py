"""The data directory (``storage.data_dir``), in one place: the name of every folder and file in it, and the durable
write that puts a file there.

::

    <data_dir>/
      spool/<StudyUID>/<SeriesUID>/<SOPInstanceUID>.dcm   received instances (dicomnode.spool)
      spool/.tmp/                                          transfers still arriving (pynetdicom temp files)
      spool/.tmp.lock                                      flock of the process that receives into the spool
      results/<StudyUID>/<job id>/<kind>-<SOPInstanceUID>.dcm, record.json   result objects (dicomnode.worker)
      priors/<job id>/                                     a retrieved prior, held only while its job runs
      cxr-node.sqlite (+ -wal, -shm)                       the database, unless storage.database_url names one

Paths stored in the database are relative to ``data_dir`` (:meth:`DataDir.relative`). Every UID joined into a
path has passed the UID grammar first. Retention (dicomnode.retention) deletes what expires.
"""
from __future__ import annotations

import os
import shutil
import uuid
from dataclasses import dataclass
from pathlib import Path

from dicomnode.uids import is_valid_uid

SPOOL_DIR = "spool"
TMP_DIR = ".tmp"
TMP_LOCK = ".tmp.lock"
RESULTS_DIR = "results"
PRIORS_DIR = "priors"
SQLITE_FILE = "cxr-node.sqlite"
PARTIAL_GLOB = ".*.part"  # what an interrupted write_durably leaves


def _checked(uid: str, what: str = "UID") -> str:
    if not is_valid_uid(uid):
        raise ValueError(f"invalid {what} {uid!r}")
    return uid


@dataclass(frozen=True)
class DataDir:
    """Names every folder and file of the node's data directory."""

    root: Path

    def __init__(self, root: Path | str) -> None:
        object.__setattr__(self, "root", Path(root).resolve())

    # -- spool -------------------------------------------------------------------------------------------------
    @property
    def spool(self) -> Path:
        return self.root / SPOOL_DIR

    @property
    def spool_tmp(self) -> Path:
        return self.spool / TMP_DIR

    @property
    def spool_lock(self) -> Path:
        return self.spool / TMP_LOCK

    def instance_relative(self, study_uid: str, series_uid: str, sop_uid: str) -> str:
        """An instance's spool path relative to the data directory; every UID must pass the UID grammar."""
        for uid in (study_uid, series_uid, sop_uid):
            _checked(uid)
        return f"{SPOOL_DIR}/{study_uid}/{series_uid}/{sop_uid}.dcm"

    # -- results and priors ------------------------------------------------------------------------------------
    def study_results(self, study_uid: str) -> Path:
        return self.root / RESULTS_DIR / _checked(study_uid, "study UID")

    def results(self, study_uid: str, job_id: int) -> Path:
        """The folder of one job's result objects and record."""
        return self.study_results(study_uid) / str(job_id)

    def priors(self, job_id: int) -> Path:
        """Where a job's retrieved prior is held while the job runs."""
        return self.root / PRIORS_DIR / str(job_id)

    # -- database ----------------------------------------------------------------------------------------------
    @property
    def sqlite(self) -> Path:
        return self.root / SQLITE_FILE

    # -- relative paths (as stored in the database) ------------------------------------------------------------
    def absolute(self, relative: str) -> Path:
        return self.root / relative

    def relative(self, path: Path) -> str:
        return str(path.relative_to(self.root))


def fsync_dir(directory: Path) -> None:
    """Make a rename in ``directory`` durable."""
    fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def fsync_file(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_durably(path: Path, data: bytes, fsync: bool = True) -> None:
    """Write ``data`` to a temp file beside ``path``, fsync it, rename it to ``path`` and fsync the directory."""
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


def remove_partial_files(directory: Path) -> int:
    """Delete the temp files (``.*.part``) an interrupted :func:`write_durably` left in ``directory``."""
    removed = 0
    for leftover in directory.glob(PARTIAL_GLOB) if directory.is_dir() else ():
        leftover.unlink(missing_ok=True)
        removed += 1
    return removed


# -- free space ---------------------------------------------------------------------------------------------------
MB = 1024 * 1024


def _existing_ancestor(path: Path) -> Path:
    path = path.absolute()
    while not path.exists() and path != path.parent:
        path = path.parent
    return path


def free_disk_mb(data_dir: str | Path) -> float:
    """Free space (MiB, for unprivileged users) on the file system holding ``data_dir`` (or its nearest parent)."""
    return shutil.disk_usage(_existing_ancestor(Path(data_dir))).free / MB


def disk_free_ok(data_dir: str | Path, min_free_mb: float) -> tuple[bool, str]:
    """``(True, detail)`` when at least ``min_free_mb`` MiB are free for ``data_dir``, else ``(False, reason)``."""
    try:
        free = free_disk_mb(data_dir)
    except OSError as exc:
        return False, f"cannot read free disk space of {data_dir}: {exc.strerror or exc}"
    if free < min_free_mb:
        return False, f"low disk: {free:.0f} MiB free in {data_dir}, floor is {min_free_mb:.0f} MiB"
    return True, f"{free:.0f} MiB free in {data_dir} (floor {min_free_mb:.0f} MiB)"
