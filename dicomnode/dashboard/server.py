"""Serve the dashboard from inside the node process: uvicorn in a daemon thread on a socket bound up front (so a
port in use fails ``start()`` at once), access log off (paths and sessions stay out of the logs)."""
from __future__ import annotations

import logging
import socket
import threading
import time
from collections.abc import Callable
from typing import Any

from sqlalchemy.orm import Session, sessionmaker

from dicomnode.config import NodeConfig
from dicomnode.dashboard.auth import Authenticator

LOG = logging.getLogger("dicomnode.dashboard")


class DashboardServer:
    """``start()`` binds and serves ``config.dashboard.host:port`` (0: any free port, see ``url``); ``stop()``."""

    def __init__(self, config: NodeConfig, session_factory: sessionmaker[Session],
                 live: Callable[[], dict[str, Any]] | None = None, on_queued: Callable[[], None] | None = None,
                 environ: dict[str, str] | None = None) -> None:
        from dicomnode.dashboard.app import Dashboard

        self.config = config
        section = config.dashboard
        self.host = section.host
        self.requested_port = section.port
        # raises AuthSetupError before anything listens when the secret is missing
        self.dashboard = Dashboard(config, session_factory, Authenticator(section.auth, environ), live, on_queued)
        self._server: Any = None
        self._thread: threading.Thread | None = None
        self._socket: socket.socket | None = None

    @property
    def port(self) -> int:
        return int(self._socket.getsockname()[1]) if self._socket is not None else self.requested_port

    @property
    def url(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self.port}/"

    def start(self, timeout: float = 10.0) -> DashboardServer:
        import uvicorn

        family = socket.AF_INET6 if ":" in self.host else socket.AF_INET
        sock = socket.socket(family, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((self.host, self.requested_port))
        except OSError:
            sock.close()
            raise
        sock.listen(128)
        self._socket = sock
        config = uvicorn.Config(self.dashboard.app(), log_config=None, access_log=False, lifespan="off",
                                server_header=False, timeout_graceful_shutdown=5)
        self._server = uvicorn.Server(config)
        self._thread = threading.Thread(target=self._server.run, kwargs={"sockets": [sock]}, name="dashboard-http",
                                        daemon=True)
        self._thread.start()
        deadline = time.monotonic() + timeout
        while not self._server.started:
            if not self._thread.is_alive() or time.monotonic() > deadline:
                self.stop()
                raise RuntimeError("the dashboard HTTP server did not start")
            time.sleep(0.02)
        auth = self.dashboard.auth.type or "none (loopback only; patient names hidden)"
        LOG.info("dashboard serving on %s (auth: %s)", self.url, auth)
        return self

    def stop(self) -> None:
        if self._server is not None:
            self._server.should_exit = True
        if self._thread is not None:
            self._thread.join(timeout=10)
            self._thread = None
        if self._socket is not None:
            self._socket.close()
            self._socket = None
        self._server = None

    def __enter__(self) -> DashboardServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
