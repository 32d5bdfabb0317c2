"""A peer's process: started with its log, waited on until it answers, stopped (SIGTERM, then SIGKILL)."""
from __future__ import annotations

import os
import signal
import subprocess
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Self


def wait_until_ready(process: subprocess.Popen[bytes], ready: Callable[[], bool], timeout: float,
                     interval: float = 0.1) -> int | None:
    """Poll ``ready()`` until it is true (None), or the process exits (its exit code); TimeoutError after
    ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            return process.returncode
        if ready():
            return None
        time.sleep(interval)
    raise TimeoutError(f"not ready within {timeout:.0f} s")


class LoggedProcess:
    """A peer's process with its output appended to ``log_path``: started and waited on until it answers, its log
    tail read for error messages, stopped (SIGTERM, then SIGKILL; the whole process group when ``group``, for a
    peer with child processes). The log file stays open in the child only."""

    def __init__(self, log_path: Path, group: bool = False) -> None:
        self.log_path = log_path
        self.group = group
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def running(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def start(self, command: Sequence[str], ready: Callable[[], bool], timeout: float, *, interval: float = 0.1,
              cwd: Path | None = None, env: Mapping[str, str] | None = None) -> int | None:
        """Start ``command`` in a new session and wait until ``ready()`` (None), or until it exits (its exit code).
        TimeoutError after ``timeout`` seconds, once the process is stopped."""
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        with open(self.log_path, "ab") as log:
            self.process = subprocess.Popen(list(command), stdout=log, stderr=subprocess.STDOUT, cwd=cwd,
                                            env=dict(env) if env is not None else None, start_new_session=True)
        try:
            exited = wait_until_ready(self.process, ready, timeout, interval)
        except TimeoutError:
            self.stop()
            raise
        if exited is not None:
            self.process = None
        return exited

    def launch(self, command: Sequence[str], ready: Callable[[], bool], timeout: float, *, name: str,
               not_ready: str, error: type[Exception] = RuntimeError, interval: float = 0.1,
               cwd: Path | None = None, env: Mapping[str, str] | None = None) -> None:
        """``start`` that raises ``error`` when the process is not ready in time (``"{name} {not_ready} within
        ... s"``) or exits first (``"{name} exited with ..."``), its log tail in the message."""
        try:
            exited = self.start(command, ready, timeout, interval=interval, cwd=cwd, env=env)
        except TimeoutError:
            raise error(f"{name} {not_ready} within {timeout:.0f} s: {self.tail()}") from None
        if exited is not None:
            raise error(f"{name} exited with {exited}: {self.tail()}")

    def stop(self, timeout: float = 30.0) -> None:
        """Stop the process if it still runs (SIGTERM, then SIGKILL after ``timeout``)."""
        process, self.process = self.process, None
        if process is None or process.poll() is not None:
            return
        self._signal(process, signal.SIGTERM)
        try:
            process.wait(timeout)
        except subprocess.TimeoutExpired:
            self._signal(process, signal.SIGKILL)
            process.wait(timeout)

    def kill(self) -> None:
        """SIGKILL at once (a crash, for tests); the log stays."""
        process, self.process = self.process, None
        if process is not None and process.poll() is None:
            self._signal(process, signal.SIGKILL)
            process.wait(30)

    def _signal(self, process: subprocess.Popen[bytes], signum: int) -> None:
        try:
            if self.group:
                os.killpg(process.pid, signum)
            else:
                process.send_signal(signum)
        except ProcessLookupError:  # gone already
            pass

    def tail(self, chars: int = 2000) -> str:
        """The end of the log (for error messages); "" when there is none."""
        try:
            return self.log_path.read_text(errors="replace")[-chars:]
        except OSError:
            return ""


class ProcessPeer:
    """A peer run as one ``LoggedProcess`` (``_process``): its log, stop and kill, and a context manager around
    ``start``."""

    _process: LoggedProcess

    @property
    def log_path(self) -> Path:
        return self._process.log_path

    @property
    def running(self) -> bool:
        return self._process.running

    def start(self, timeout: float = 60.0) -> Self:
        raise NotImplementedError

    def stop(self, timeout: float = 30.0) -> None:
        """Stop the process (SIGTERM, then SIGKILL after ``timeout``)."""
        self._process.stop(timeout)

    def kill(self) -> None:
        """SIGKILL at once: a crash (the log stays)."""
        self._process.kill()

    def log_text(self) -> str:
        """Its log so far (what it refused and why)."""
        return self._process.tail(1_000_000)

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
