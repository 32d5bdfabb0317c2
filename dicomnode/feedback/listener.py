"""The feedback listener: MLLP over TCP (or TLS), one thread per connection, each message handed to the intake and
its acknowledgement framed back (framing: :mod:`dicomnode.mllp`).

A connection from an address outside ``feedback.allowed_hosts``, one over ``max_connections``, a TLS handshake that
fails or never comes, bytes that are no MLLP frame and a frame over ``max_message_bytes`` are each logged with the
reason, audited (``feedback.refused``) and the connection closed: there is no message to answer. A connection
silent for ``idle_timeout_seconds`` is closed quietly (senders reconnect). ``stop()`` stops accepting, closes idle
connections and lets the ones handling a message finish and send their ACK.
"""
from __future__ import annotations

import ipaddress
import logging
import socket
import ssl
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

from dicomnode.accepting import accepted
from dicomnode.config import FeedbackSection
from dicomnode.handshake import handshake_failure
from dicomnode.logs import log_event
from dicomnode.mllp import FrameDecoder, MllpClosed, MllpFramingError, MllpTimeout, frame, read_frame

LOG = logging.getLogger("dicomnode.feedback")
Handler = Callable[[bytes, str], bytes]  # (MLLP payload, peer "host:port") -> ACK text as bytes
Refused = Callable[[str, str], None]  # (peer, reason)


@dataclass
class _Connection:
    sock: socket.socket
    peer: str
    thread: threading.Thread | None = None
    busy: bool = False  # between a whole frame and its ACK sent


class FeedbackListener:
    """Serves MLLP on ``config.host:config.port``. ``handle`` answers one message; ``refused`` is told of every
    connection ended without one (for the audit trail)."""

    def __init__(self, config: FeedbackSection, handle: Handler, refused: Refused | None = None,
                 tls_context: ssl.SSLContext | None = None) -> None:
        self.config = config
        self.handle = handle
        self.refused = refused
        self.tls_context = tls_context
        self.allowed = [ipaddress.ip_network(h, strict=False) for h in config.allowed_hosts]
        self._server: socket.socket | None = None
        self._accept_thread: threading.Thread | None = None
        self._connections: dict[int, _Connection] = {}
        self._lock = threading.Lock()
        self._stopping = threading.Event()

    @property
    def port(self) -> int:
        if self._server is None:
            raise RuntimeError("the feedback listener is not started")
        return int(self._server.getsockname()[1])

    @property
    def active_connections(self) -> int:
        with self._lock:
            return len(self._connections)

    def start(self) -> FeedbackListener:
        family = socket.AF_INET6 if ":" in self.config.host else socket.AF_INET
        server = socket.socket(family, socket.SOCK_STREAM)
        server.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        server.bind((self.config.host, self.config.port))
        server.listen(64)
        server.settimeout(0.5)  # the accept loop looks at the stop flag this often
        self._server = server
        self._stopping.clear()
        self._accept_thread = threading.Thread(target=self._accept_loop, name="cxr-feedback-accept", daemon=True)
        self._accept_thread.start()
        return self

    # -- accepting -------------------------------------------------------------------------------------------
    def _accept_loop(self) -> None:
        assert self._server is not None
        for sock, address in accepted(self._server, self._stopping, LOG, "feedback listener"):
            peer = f"{address[0]}:{address[1]}"
            reason = self._refusal(address[0])
            if reason is not None:
                self._refuse(sock, peer, reason)
                continue
            connection = _Connection(sock, peer)
            thread = threading.Thread(target=self._serve, args=(connection,), name=f"cxr-feedback-{peer}",
                                      daemon=True)
            connection.thread = thread
            with self._lock:
                self._connections[id(connection)] = connection
            thread.start()

    def _refusal(self, host: str) -> str | None:
        if self.allowed:
            address = ipaddress.ip_address(host.split("%")[0])
            if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
                address = address.ipv4_mapped
            if not any(address in network for network in self.allowed):
                return f"host {host} is not in feedback.allowed_hosts"
        if self.active_connections >= self.config.max_connections:
            return f"too many connections (feedback.max_connections is {self.config.max_connections})"
        return None

    def _refuse(self, sock: socket.socket, peer: str, reason: str) -> None:
        log_event(LOG, logging.WARNING, "feedback connection refused", peer=peer, reason=reason)
        _close(sock)
        if self.refused is not None:
            self.refused(peer, reason)

    # -- one connection --------------------------------------------------------------------------------------
    def _serve(self, connection: _Connection) -> None:
        try:
            if self.tls_context is not None:
                tls = self._handshake(connection)
                if tls is None:
                    return
                connection.sock = tls
            self._messages(connection)
        except Exception:  # a connection's failure never stops the listener
            LOG.exception("feedback connection failed", extra={"fields": {"peer": connection.peer}})
        finally:
            _close(connection.sock)
            with self._lock:
                self._connections.pop(id(connection), None)

    def _handshake(self, connection: _Connection) -> ssl.SSLSocket | None:
        assert self.tls_context is not None
        raw = connection.sock
        raw.settimeout(self.config.tls_handshake_timeout_seconds)
        try:
            tls = self.tls_context.wrap_socket(raw, server_side=True, do_handshake_on_connect=False)
            connection.sock = tls
            tls.do_handshake()
            return tls
        except OSError as exc:  # TimeoutError and ssl.SSLError among them
            reason = handshake_failure(exc, self.config.tls_handshake_timeout_seconds)
        self._refuse(connection.sock, connection.peer, reason)
        return None

    def _messages(self, connection: _Connection) -> None:
        decoder = FrameDecoder(max_bytes=self.config.max_message_bytes)
        while not self._stopping.is_set():
            try:
                payload = read_frame(connection.sock, self.config.idle_timeout_seconds, decoder)
            except MllpTimeout:
                log_event(LOG, logging.DEBUG, "feedback connection idle; closed", peer=connection.peer)
                return
            except MllpClosed as exc:
                if decoder.partial and not self._stopping.is_set():
                    self._refused_message(connection, f"closed in the middle of a message: {exc}")
                return
            except MllpFramingError as exc:
                self._refused_message(connection, str(exc))
                return
            except OSError as exc:
                if not self._stopping.is_set():
                    log_event(LOG, logging.WARNING, "feedback connection lost", peer=connection.peer,
                              error=f"{type(exc).__name__}: {exc}")
                return
            connection.busy = True
            try:
                ack = self.handle(payload, connection.peer)
                connection.sock.settimeout(self.config.idle_timeout_seconds)
                connection.sock.sendall(frame(ack))
            finally:
                connection.busy = False

    def _refused_message(self, connection: _Connection, reason: str) -> None:
        log_event(LOG, logging.WARNING, "feedback message not received", peer=connection.peer, reason=reason)
        if self.refused is not None:
            self.refused(connection.peer, reason)

    # -- stopping --------------------------------------------------------------------------------------------
    def stop(self, timeout: float = 10.0) -> None:
        """Stop accepting; idle connections are closed, a message being handled gets its ACK (up to ``timeout``)."""
        self._stopping.set()
        if self._server is not None:
            _close(self._server)
        if self._accept_thread is not None:
            self._accept_thread.join(timeout)
        deadline = time.monotonic() + timeout
        with self._lock:
            connections = list(self._connections.values())
        for connection in connections:
            if not connection.busy:
                _shutdown(connection.sock)
        for connection in connections:
            if connection.thread is not None:
                connection.thread.join(max(0.1, deadline - time.monotonic()))
                if connection.thread.is_alive():
                    _shutdown(connection.sock)
        self._server = None


def _shutdown(sock: socket.socket) -> None:
    try:
        sock.shutdown(socket.SHUT_RDWR)
    except OSError:
        pass


def _close(sock: socket.socket) -> None:
    _shutdown(sock)
    try:
        sock.close()
    except OSError:
        pass
