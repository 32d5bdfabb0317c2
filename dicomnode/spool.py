"""Durable spool: data_dir/spool/<StudyUID>/<SeriesUID>/<SOPInstanceUID>.dcm (layout: :mod:`dicomnode.datadir`).

A received file is fsynced, atomically renamed into place and its directory fsynced before the caller commits the
database row; only then may the instance be acknowledged. Files are never deleted here (retention does that).
"""
from __future__ import annotations

import fcntl
import os
import shutil
import uuid
from pathlib import Path

from dicomnode.datadir import DataDir, fsync_dir, fsync_file


class SpoolError(OSError):
    """The instance could not be stored durably."""


class Spool:
    """The on-disk instance store under ``data_dir``."""

    def __init__(self, data_dir: Path, fsync: bool = True):
        self.dirs = DataDir(data_dir)
        self.data_dir = self.dirs.root
        self.root = self.dirs.spool
        self.tmp = self.dirs.spool_tmp
        self.fsync = fsync
        self._known_dirs: set[Path] = set()
        self._lock_fd: int | None = None

    def prepare(self) -> None:
        """Create the spool and temp directories."""
        self.tmp.mkdir(parents=True, exist_ok=True)

    def clean_temp(self) -> int | None:
        """Start-up: take the spool's temp lock and delete what an earlier process left in the temp directory
        (partial transfers of a node that was killed); returns how many files, or None when another live process
        holds the lock (it receives into this spool: its temp files are in use). The lock is kept until
        :meth:`release_temp`, or until this process ends."""
        self.prepare()
        if self._lock_fd is None:
            fd = os.open(self.dirs.spool_lock, os.O_RDWR | os.O_CREAT, 0o600)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                os.close(fd)
                return None
            self._lock_fd = fd
        removed = 0
        for entry in self.tmp.iterdir():
            if entry.is_file():
                entry.unlink(missing_ok=True)
                removed += 1
        return removed

    def release_temp(self) -> None:
        if self._lock_fd is not None:
            os.close(self._lock_fd)
            self._lock_fd = None

    def relative_path(self, study_uid: str, series_uid: str, sop_uid: str) -> str:
        """The spool path of an instance relative to data_dir; every UID must pass the UID grammar."""
        return self.dirs.instance_relative(study_uid, series_uid, sop_uid)

    def absolute(self, relative: str) -> Path:
        return self.dirs.absolute(relative)

    def new_temp_path(self) -> Path:
        return self.tmp / f"{uuid.uuid4().hex}.part"

    def store_file(self, source: Path, relative: str) -> int:
        """Durably move (or copy, across file systems) ``source`` to ``relative``; return its size in bytes."""
        target = self.absolute(relative)
        try:
            new_dirs = self._ensure_dir(target.parent)
            src = Path(source)
            if not _same_device(src, self.tmp):
                staged = self.new_temp_path()
                with open(src, "rb") as fin, open(staged, "wb") as fout:
                    shutil.copyfileobj(fin, fout, 4 << 20)
                    if self.fsync:
                        fout.flush()
                        os.fsync(fout.fileno())
                src = staged
            elif self.fsync:
                fsync_file(src)
            size = src.stat().st_size
            os.replace(src, target)
            if self.fsync:
                # the rename, then every directory entry created above, bottom-up (one journal commit covers most)
                fsync_dir(target.parent)
                for directory in reversed(new_dirs):
                    fsync_dir(directory.parent)
            return size
        except OSError as exc:
            raise SpoolError(exc.errno, f"spool write failed: {exc.strerror or exc}") from exc

    def _ensure_dir(self, directory: Path) -> list[Path]:
        """Create ``directory`` (and parents); return the directories created, outermost first.

        Their entries are made durable by :meth:`store_file` after the rename, before the caller commits.
        """
        if directory in self._known_dirs:
            if directory.is_dir():
                return []
            self._known_dirs.discard(directory)
        missing = []
        d = directory
        while not d.exists():
            missing.append(d)
            d = d.parent
        directory.mkdir(parents=True, exist_ok=True)
        if len(self._known_dirs) > 10_000:
            self._known_dirs.clear()
        self._known_dirs.add(directory)
        return list(reversed(missing))


def _same_device(a: Path, b: Path) -> bool:
    try:
        return a.stat().st_dev == b.stat().st_dev
    except OSError:
        return False
