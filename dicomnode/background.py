"""One background loop: a daemon thread that runs a pass, waits (or is woken), and runs the next, until stopped.
A failing pass is logged and the loop goes on. Used by Storage Commitment, MPPS completion and retention."""
from __future__ import annotations

import logging
import threading
from collections.abc import Callable


class BackgroundLoop:
    """Runs ``step()`` every ``interval`` seconds (sooner after ``wake()``) in a thread named ``name``."""

    def __init__(self, name: str, step: Callable[[], object], interval: float, log: logging.Logger) -> None:
        self.name = name
        self.step = step
        self.interval = interval
        self.log = log
        self._stop = threading.Event()
        self._wake = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        self._stop.clear()
        self._thread = threading.Thread(target=self._loop, name=self.name, daemon=True)
        self._thread.start()

    def _loop(self) -> None:
        while not self._stop.is_set():
            try:
                self.step()
            except Exception:
                self.log.exception("%s pass failed", self.name)
            self._wake.wait(self.interval)
            self._wake.clear()

    def wake(self) -> None:
        """Run the next pass now."""
        self._wake.set()

    def stop(self, timeout: float | None = None) -> None:
        """Stop after the pass in flight (waits at most ``timeout`` s for it)."""
        self._stop.set()
        self._wake.set()
        if self._thread is not None:
            self._thread.join(timeout)
            self._thread = None
