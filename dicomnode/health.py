"""Health checks and the status HTTP server (``/metrics`` for Prometheus, ``/healthz`` as JSON).

``disk_free_ok`` is also what the listener asks before it accepts an association. The server is the stdlib
``ThreadingHTTPServer`` in a daemon thread; it only reads (metrics registry, the check callables).
"""
from __future__ import annotations

import json
import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

from prometheus_client import CONTENT_TYPE_LATEST

from dicomnode import metrics
from dicomnode.background import ServerHost
from dicomnode.datadir import disk_free_ok

log = logging.getLogger(__name__)

def database_check(engine: Any) -> Callable[[], None]:
    """A check that runs ``SELECT 1`` on a SQLAlchemy engine (raises when the database is unreachable)."""
    from sqlalchemy import text

    def check() -> None:
        with engine.connect() as conn:
            conn.execute(text("SELECT 1"))

    return check


def delivery_check(session_factory: Any) -> Callable[[], dict[str, Check]]:
    """Soft checks of result delivery, read from the database: ``dead_letters`` (deliveries given up, DEAD) and
    ``destination:NAME`` (the newest attempted delivery to NAME failed and waits for a retry: it is down)."""
    from sqlalchemy import func, select

    from dicomnode.db.models import Delivery
    from dicomnode.db.states import DeliveryState

    def check() -> dict[str, Check]:
        out: dict[str, Check] = {}
        with session_factory() as session:
            dead = session.scalar(select(func.count()).where(Delivery.state == DeliveryState.DEAD.value)) or 0
            newest = (select(Delivery.destination, func.max(Delivery.id).label("id")).where(Delivery.attempts > 0)
                      .group_by(Delivery.destination).subquery())
            rows = session.execute(select(Delivery.destination, Delivery.state, Delivery.last_error)
                                   .join(newest, Delivery.id == newest.c.id)).all()
        out["dead_letters"] = (Check(False, f"{dead} deliveries dead-lettered (see cxr-node status; cxr-node retry)")
                               if dead else Check(True, "none"))
        for destination, state, error in rows:
            down = state == DeliveryState.PENDING.value and error
            out[f"destination:{destination}"] = (
                Check(False, f"down: last attempt failed: {str(error).splitlines()[0][:200]}") if down
                else Check(True, "last attempt succeeded" if state == DeliveryState.SENT.value else str(state).lower()))
        return out

    return check


@dataclass
class Check:
    ok: bool
    detail: str

    def as_dict(self) -> dict[str, Any]:
        return {"ok": self.ok, "detail": self.detail}


@dataclass
class HealthChecks:
    """What ``/healthz`` looks at.

    ``database``: raises (or returns False) when the database is unusable; None = not checked.
    ``model_required``: False for a listener-only process (no model there); else the model must be loaded
    (``model_loaded`` callable, default: :func:`dicomnode.metrics.is_model_loaded`).
    """

    data_dir: Path
    min_free_mb: float = 1024
    database: Callable[[], object] | None = None
    model_required: bool = True
    model_loaded: Callable[[], bool] = field(default=metrics.is_model_loaded)
    # soft checks: a failing one makes the status "degraded" (HTTP 200), not "unhealthy" (HTTP 503)
    soft: Callable[[], dict[str, Check]] | None = None

    def run_soft(self) -> dict[str, Check]:
        if self.soft is None:
            return {}
        try:
            return self.soft()
        except Exception as exc:  # a broken soft check degrades, it does not fail the node
            return {"deliveries": Check(False, f"cannot read delivery state: {type(exc).__name__}")}

    def run(self) -> dict[str, Check]:
        checks: dict[str, Check] = {}
        if self.database is not None:
            try:
                result = self.database()
                checks["database"] = (
                    Check(False, "database check returned False") if result is False else Check(True, "reachable")
                )
            except Exception as exc:  # any driver error means unhealthy
                checks["database"] = Check(False, f"{type(exc).__name__}: {str(exc).splitlines()[0][:300]}")
        checks["disk"] = Check(*disk_free_ok(self.data_dir, self.min_free_mb))
        if self.model_required:
            loaded = bool(self.model_loaded())
            checks["model"] = Check(loaded, "loaded" if loaded else "not loaded")
            engine = metrics.engine_state()
            if engine is not None:
                checks["engine"] = Check(engine[0], engine[1])
        return checks

    def report(self) -> tuple[bool, dict[str, Any]]:
        """``(healthy, json_body)``; status ``ok``, ``degraded`` (a soft check failed) or ``unhealthy``."""
        checks = self.run()
        healthy = all(c.ok for c in checks.values())
        soft = self.run_soft() if healthy else {}
        status = "unhealthy" if not healthy else ("degraded" if not all(c.ok for c in soft.values()) else "ok")
        body = {"status": status, "checks": {k: c.as_dict() for k, c in {**checks, **soft}.items()}}
        return healthy, body


class _Handler(BaseHTTPRequestHandler):
    server: _Server
    protocol_version = "HTTP/1.1"

    def do_GET(self) -> None:  # stdlib name
        path = self.path.split("?", 1)[0]
        if path == "/metrics":
            self._send(HTTPStatus.OK, metrics.exposition(), CONTENT_TYPE_LATEST)
        elif path in ("/healthz", "/health"):
            healthy, body = self.server.checks.report()
            status = HTTPStatus.OK if healthy else HTTPStatus.SERVICE_UNAVAILABLE
            self._send(status, json.dumps(body, indent=1).encode(), "application/json")
        else:
            self._send(HTTPStatus.NOT_FOUND, b"not found: try /metrics or /healthz\n", "text/plain")

    def _send(self, status: HTTPStatus, body: bytes, content_type: str) -> None:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: Any) -> None:  # stdlib signature
        log.debug("status http: " + format, *args)


class _Server(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, address: tuple[str, int], checks: HealthChecks) -> None:
        self.checks = checks
        super().__init__(address, _Handler)


class StatusServer(ServerHost[_Server]):
    """``/metrics`` and ``/healthz`` on ``host:port`` (port 0 = any free port; see ``.port``); a context manager."""

    def __init__(self, checks: HealthChecks, host: str = "127.0.0.1", port: int = 9108) -> None:
        self.checks = checks
        self.host = host
        self.requested_port = port

    @property
    def port(self) -> int:
        if self._server is None:
            return self.requested_port
        return int(self._server.server_address[1])

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    def start(self) -> StatusServer:
        if self._server is None:
            self._serve(_Server((self.host, self.requested_port), self.checks), "status-http")
            log.info("status http: serving /metrics and /healthz on %s", self.url)
        return self



def server_from_config(
    config: Any, database: Callable[[], object] | None = None, model_required: bool = True,
    soft: Callable[[], dict[str, Check]] | None = None,
) -> StatusServer | None:
    """A (not yet started) ``StatusServer`` for a ``NodeConfig``; None when ``metrics.enabled`` is false."""
    if not config.metrics.enabled:
        return None
    checks = HealthChecks(
        data_dir=Path(config.storage.data_dir),
        min_free_mb=float(config.node.min_free_disk_mb),
        database=database,
        model_required=model_required,
        soft=soft,
    )
    return StatusServer(checks, host=config.metrics.host, port=config.metrics.port)
