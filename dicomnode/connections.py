"""Incoming connections that no client can stall.

pynetdicom accepts connections in one thread and, with TLS, does the handshake there, without a timeout: one idle
TCP client silences a TLS-only node. Its acceptor also blocks in ``recv`` until a whole PDU has arrived, so a client
that dribbles one byte every few seconds holds an association (and a ``max_associations`` slot) for ever, and
SIGTERM waits for it.

Here each accepted socket is handed to its own thread at once (:class:`GuardedServer`). That thread does the TLS
handshake with a deadline (:class:`GuardedHandler`) and then starts pynetdicom's association. A
:class:`ConnectionGuard` knows every connection and its phase, and a watchdog thread shuts down the socket of any
connection that has not negotiated an association within ``negotiation_seconds`` of its TCP connect (TLS handshake
included), or whose established association has been idle past the network timeout. Shutting the socket down wakes a
``recv`` blocked in another thread, so pynetdicom's own state machine ends the association. ``close_all`` does the
same for everything at shutdown, which bounds SIGTERM.
"""
from __future__ import annotations

import logging
import select
import socket
import ssl
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

from pynetdicom import evt
from pynetdicom.transport import RequestHandler, ThreadedAssociationServer

from dicomnode import metrics
from dicomnode.handshake import handshake_failure
from dicomnode.logs import log_event

LOG = logging.getLogger("dicomnode.connections")

TLS_RECORD_HANDSHAKE = 0x16  # first byte of a TLS ClientHello record
PDU_ASSOCIATE_RQ = 0x01  # first byte of a plain DICOM A-ASSOCIATE-RQ


@dataclass(eq=False)
class Connection:
    """One accepted TCP connection, from connect to close."""

    peer: str
    opened: float
    sock: socket.socket
    phase: str = "tls"  # tls -> negotiating -> established
    assoc: Any = None
    closed_reason: str | None = None
    counted: bool = field(default=False)
    busy: int = 0  # C-STORE/C-ECHO handlers running: the peer is waiting for us, not idle


TlsFailure = Callable[[str, str], None]  # (peer, reason)


class ConnectionGuard:
    """Registry of live connections plus a watchdog that ends the ones that stall (see the module docstring)."""

    def __init__(
        self,
        *,
        negotiation_seconds: float,
        tls_handshake_seconds: float,
        network_timeout_seconds: float,
        max_pending: int = 64,
        on_tls_failure: TlsFailure | None = None,
        sweep_seconds: float = 0.25,
    ):
        self.negotiation_seconds = negotiation_seconds
        self.tls_handshake_seconds = tls_handshake_seconds
        self.network_timeout_seconds = network_timeout_seconds
        self.max_pending = max_pending
        self.on_tls_failure = on_tls_failure
        self.sweep_seconds = sweep_seconds
        self._lock = threading.Lock()
        self._conns: list[Connection] = []
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    # --- lifecycle -------------------------------------------------------------------------------------------
    def start(self) -> None:
        self._thread = threading.Thread(target=self._watch, name="cxr-connection-guard", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)

    # --- registry --------------------------------------------------------------------------------------------
    def register(self, sock: socket.socket, peer: str) -> Connection:
        conn = Connection(peer=peer, opened=time.monotonic(), sock=sock)
        with self._lock:
            self._conns.append(conn)
            pending = [c for c in self._conns if c.phase != "established" and c.closed_reason is None]
        if len(pending) > self.max_pending:  # a flood of silent connections: the oldest silent one goes first
            self.close(pending[0], "too_many_pending")
        return conn

    def drop(self, conn: Connection) -> None:
        with self._lock:
            if conn in self._conns:
                self._conns.remove(conn)

    def connections(self) -> list[Connection]:
        with self._lock:
            return list(self._conns)

    def find(self, assoc: Any) -> Connection | None:
        with self._lock:
            return next((c for c in self._conns if c.assoc is assoc), None)

    @contextmanager
    def busy(self, assoc: Any) -> Iterator[None]:
        """While a request of ``assoc`` is being handled its silence is ours: no idle timeout."""
        conn = self.find(assoc)
        if conn is not None:
            conn.busy += 1
        try:
            yield
        finally:
            if conn is not None:
                conn.busy -= 1

    def close(self, conn: Connection, reason: str) -> None:
        """Shut the connection's socket down (wakes a blocked ``recv``); counted and logged once."""
        if conn.closed_reason is None:
            conn.closed_reason = reason
            self.count(conn, reason)
        try:
            socket.socket.shutdown(conn.sock, socket.SHUT_RDWR)  # the base method: also for an SSLSocket
        except OSError:
            pass

    def count(self, conn: Connection, reason: str) -> None:
        if conn.counted or reason == "closed_by_peer":
            return
        conn.counted = True
        metrics.associations_aborted.labels(reason=reason).inc()
        level = logging.INFO if reason == "shutdown" else logging.WARNING
        log_event(LOG, level, "connection aborted", peer=conn.peer, reason=reason, phase=conn.phase,
                  seconds=round(time.monotonic() - conn.opened, 1))

    def close_all(self, reason: str, phases: tuple[str, ...] = ("tls", "negotiating", "established")) -> int:
        targets = [c for c in self.connections() if c.phase in phases]
        for conn in targets:
            self.close(conn, reason)
        return len(targets)

    # --- watchdog --------------------------------------------------------------------------------------------
    def sweep(self, now: float | None = None) -> None:
        now = time.monotonic() if now is None else now
        for conn in self.connections():
            assoc = conn.assoc
            if assoc is not None and not assoc.is_alive():
                self.drop(conn)
                continue
            if assoc is None and conn.closed_reason and now - conn.opened > self.negotiation_seconds + 10:
                self.drop(conn)  # its thread failed before an association existed
                continue
            if conn.phase == "negotiating" and assoc is not None and assoc.is_established:
                conn.phase = "established"
            if conn.phase == "tls":
                if now - conn.opened > self.tls_handshake_seconds + 1:  # the handshake's own timeout failed
                    self.close(conn, "tls_handshake_timeout")
            elif conn.phase == "negotiating":
                rejected = assoc is not None and assoc.is_rejected
                if not rejected and now - conn.opened > self.negotiation_seconds:
                    # a peer that closed before negotiating (a port probe) is no attack: not counted
                    self.close(conn, "closed_by_peer" if _peer_closed(conn.sock) else "negotiation_timeout")
            elif assoc is not None and not conn.busy and assoc.dul.idle_timer_expired():
                self.close(conn, "idle_timeout")

    def _watch(self) -> None:
        while not self._stop.wait(self.sweep_seconds):
            try:
                self.sweep()
            except Exception:  # the watchdog must keep running
                LOG.exception("connection sweep failed")


def _peer_closed(sock: socket.socket) -> bool:
    """True when the peer has closed the TCP connection (EOF waiting), without consuming any data."""
    try:
        readable, _, _ = select.select([sock], [], [], 0)
        if not readable:  # never wait here: Python's recv polls for the socket's whole timeout first
            return False
        return socket.socket.recv(sock, 1, socket.MSG_PEEK | socket.MSG_DONTWAIT) == b""
    except (BlockingIOError, InterruptedError, TimeoutError):
        return False
    except (OSError, ValueError):
        return True


class GuardedServer(ThreadedAssociationServer):
    """pynetdicom's threaded server, except that ``accept`` never does TLS (the per-connection thread does)."""

    request_queue_size = 128
    daemon_threads = True
    guard: ConnectionGuard
    tls_context: ssl.SSLContext | None = None

    def get_request(self) -> tuple[socket.socket, Any]:
        assert self.socket is not None
        return self.socket.accept()


class GuardedHandler(RequestHandler):
    """Per connection: register with the guard, TLS handshake with a deadline, then pynetdicom's association."""

    server: GuardedServer

    def handle(self) -> None:
        guard = self.server.guard
        raw: socket.socket = self.request
        peer = f"{self.client_address[0]}:{self.client_address[1]}"
        conn = guard.register(raw, peer)
        sock: socket.socket = raw
        if self.server.tls_context is not None:
            tls = self._handshake(raw, conn)
            if tls is None:
                guard.drop(conn)
                return
            sock = tls
        conn.phase = "negotiating"
        # every recv/send is bounded; a client that sends nothing at all is also ended by ARTIM (acse timeout)
        sock.settimeout(guard.network_timeout_seconds)
        self.request = sock
        assoc = self._create_association()
        evt.trigger(assoc, evt.EVT_CONN_OPEN, {"address": self.client_address})
        assoc.start()
        conn.assoc = assoc

    def _handshake(self, raw: socket.socket, conn: Connection) -> ssl.SSLSocket | None:
        guard = self.server.guard
        deadline = conn.opened + guard.tls_handshake_seconds
        reason = None
        tls: ssl.SSLSocket | None = None
        try:
            raw.settimeout(max(0.1, deadline - time.monotonic()))
            first = raw.recv(1, socket.MSG_PEEK)
            if not first:
                reason = "closed before the TLS handshake"
            elif first[0] == PDU_ASSOCIATE_RQ:
                reason = "plain (non-TLS) DICOM connection to the TLS-only listener"
            elif first[0] != TLS_RECORD_HANDSHAKE:
                reason = f"not a TLS handshake (first byte 0x{first[0]:02X})"
            else:
                assert self.server.tls_context is not None
                tls = self.server.tls_context.wrap_socket(raw, server_side=True, do_handshake_on_connect=False)
                conn.sock = tls
                tls.settimeout(max(0.1, deadline - time.monotonic()))
                tls.do_handshake()
                return tls
        except OSError as exc:  # TimeoutError and ssl.SSLError among them
            reason = handshake_failure(exc, guard.tls_handshake_seconds, conn.closed_reason)
        metrics.tls_failures.inc()
        log_event(LOG, logging.WARNING, "TLS handshake failed", peer=conn.peer, reason=reason)
        if guard.on_tls_failure is not None:
            guard.on_tls_failure(conn.peer, reason or "unknown")
        for s in (tls, raw):
            if s is None:
                continue
            try:
                socket.socket.shutdown(s, socket.SHUT_RDWR)
            except OSError:
                pass
            s.close()
        return None
