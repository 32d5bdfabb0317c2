"""One background loop: a daemon thread that runs a pass, waits (or is woken), and runs the next, until stopped.
A failing pass is logged and the loop goes on. Used by Storage Commitment, MPPS completion and retention. And a
server's ``serve_forever`` in a daemon thread (the status HTTP server, the OHIF proxy)."""
from __future__ import annotations

import logging
import socketserver
import threading
from collections.abc import Callable
from typing import Generic, Self, TypeVar

S = TypeVar("S", bound=socketserver.BaseServer)


class ServerHost(Generic[S]):
    """Runs one server's ``serve_forever`` in a daemon thread (``_serve``); ``stop()`` shuts it down, closes its
    socket and joins the thread; a context manager around ``start``."""

    _server: S | None = None
    _thread: threading.Thread | None = None

    def start(self) -> Self:
        raise NotImplementedError

    def _serve(self, server: S, name: str) -> None:
        self._server = server
        self._thread = threading.Thread(target=server.serve_forever, name=name, daemon=True)
        self._thread.start()

    def stop(self) -> None:
        server, self._server = self._server, None
        if server is not None:
            server.shutdown()
            server.server_close()
        if self._thread is not None:
            self._thread.join(10)
            self._thread = None

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


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
