"""DICOM associations, in one place: the peers the node calls, the AE factory, ``associate()``, TLS contexts, and
the process-wide pynetdicom switches.

pynetdicom keeps some settings per process (its ``_config`` module, its temp-file factory). The node sets them all
in :func:`configure_pynetdicom`, called explicitly at start-up (``cxr-node``'s entry point, :class:`Node`, the
listener, the deliverer); importing a module of this package changes nothing in pynetdicom.
"""
from __future__ import annotations

import contextlib
import functools
import logging
import re
import socket
import ssl
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pynetdicom import AE, dimse_messages
from pynetdicom import _config as pynetdicom_config
from pynetdicom._validators import validate_ae
from pynetdicom.association import Association

if TYPE_CHECKING:
    from dicomnode.config_types import TLSConfig

_PEER_RE = re.compile(r"^(?P<ae>[^@]{1,16})@(?P<host>\[[^\]]+\]|[^:]+):(?P<port>\d{1,5})$")
WRITE_BEHIND_BYTES = 4 << 20


class ScuError(RuntimeError):
    """No association (refused, rejected, aborted, unreachable)."""


@dataclass(frozen=True)
class Peer:
    """A remote application entity and how we call it."""

    ae_title: str
    host: str
    port: int
    calling_aet: str = "CXRNODE"
    tls: TLSConfig | None = None
    connect_timeout: float = 10.0
    acse_timeout: float = 30.0
    dimse_timeout: float = 120.0

    @classmethod
    def parse(cls, text: str, calling_aet: str = "CXRNODE") -> Peer:
        """``AE@HOST:PORT`` -> Peer."""
        match = _PEER_RE.match(text.strip())
        if not match or not 0 < int(match["port"]) < 65536:
            raise ValueError(f"peer {text!r} is not AE@HOST:PORT")
        return cls(match["ae"], match["host"].strip("[]"), int(match["port"]), calling_aet)

    def __str__(self) -> str:
        return f"{self.ae_title}@{self.host}:{self.port}"


# --- TLS ---------------------------------------------------------------------------------------------------------
def tls_context(tls: TLSConfig) -> ssl.SSLContext:
    """A client-side TLS context: verify the peer against ``tls.ca`` and present ``cert``/``key`` when given."""
    context = ssl.create_default_context(ssl.Purpose.SERVER_AUTH, cafile=str(tls.ca) if tls.ca else None)
    context.check_hostname = False
    if tls.cert and tls.key:
        context.load_cert_chain(str(tls.cert), str(tls.key))
    return context


# OpenSSL verify codes -> what an admin can do about them ({ca}: the trusted CAs)
_VERIFY_HINTS = {
    2: "the destination's certificate is not signed by a CA in {ca}",
    9: "the destination's certificate is not valid yet (check its dates and this host's clock)",
    10: "the destination's certificate has expired",
    18: "the destination presents a self-signed certificate that is not in {ca}",
    19: "the destination's certificate chain ends in a CA that is not in {ca}",
    20: "the destination's certificate is not signed by a CA in {ca}",
    21: "the destination's certificate is not signed by a CA in {ca}",
    62: "the destination's certificate does not name its host",
    64: "the destination's certificate does not name its IP address",
}
# TLS alerts a server sends when it does not take the client's certificate
_CERTIFICATE_ALERTS = ("UNKNOWN_CA", "BAD_CERTIFICATE", "CERTIFICATE_UNKNOWN", "CERTIFICATE_EXPIRED",
                       "CERTIFICATE_REVOKED", "UNSUPPORTED_CERTIFICATE", "CERTIFICATE_REQUIRED", "ACCESS_DENIED")


def tls_failure_text(exc: ssl.SSLError, tls: TLSConfig) -> str:
    """What went wrong in a TLS handshake, in terms of the node's ``tls`` settings."""
    if isinstance(exc, ssl.SSLCertVerificationError):
        trusted = f"tls.ca {tls.ca}" if tls.ca else "the system's CAs (tls.ca is not set)"
        hint = _VERIFY_HINTS.get(int(exc.verify_code or 0), "")
        return f"certificate verify failed: {exc.verify_message}" + (f" ({hint.format(ca=trusted)})" if hint else "")
    reason = str(exc.reason or "")
    alert = reason.split("ALERT_", 1)[1] if "ALERT_" in reason else ""
    if alert in _CERTIFICATE_ALERTS:
        if not tls.cert:
            return (f"the destination requires a client certificate (TLS alert {alert.lower().replace('_', ' ')}): "
                    f"set tls.cert and tls.key")
        return f"the destination refused the node's certificate (tls.cert {tls.cert})"
    if alert:
        return f"the destination ended the handshake (TLS alert {alert.lower().replace('_', ' ')})"
    return reason.lower().replace("_", " ") or str(exc)


class _TlsFailures:
    """The TLS errors of one association's socket, which pynetdicom only logs (with a traceback, then aborts).

    While :func:`associate` waits, the threads involved are known: the calling thread (pynetdicom negotiates a
    requested association there) and, once an error is recorded, the DUL thread that met it. Their pynetdicom log
    records are dropped (:class:`_QuietTlsFailures`) once an error is recorded; ``associate`` reports it instead."""

    _lock = threading.Lock()
    _silenced: set[int] = set()  # DUL threads that met a TLS error
    _callers: dict[int, _TlsFailures] = {}  # calling thread -> its association's failures

    def __init__(self) -> None:
        self.errors: list[ssl.SSLError] = []
        self._threads: set[int] = set()
        self._caller = threading.get_ident()

    def __enter__(self) -> _TlsFailures:
        with self._lock:
            self._callers[self._caller] = self
        return self

    def __exit__(self, *exc: object) -> None:
        with self._lock:
            self._callers.pop(self._caller, None)
            self._silenced.difference_update(self._threads)

    def record(self, exc: ssl.SSLError) -> None:
        with self._lock:
            self.errors.append(exc)
            self._threads.add(threading.get_ident())
            self._silenced.add(threading.get_ident())

    @classmethod
    def calling(cls, thread: int | None) -> bool:
        """True while ``thread`` waits in :func:`associate`."""
        with cls._lock:
            return (thread or 0) in cls._callers

    @classmethod
    def silences(cls, thread: int | None) -> bool:
        with cls._lock:
            caller = cls._callers.get(thread or 0)
            return thread in cls._silenced or bool(caller and caller.errors)

    def most_telling(self) -> ssl.SSLError:
        """A certificate verdict, else a TLS alert from the peer, else the first error (often a bare EOF)."""
        for wanted in (lambda e: isinstance(e, ssl.SSLCertVerificationError), lambda e: "ALERT_" in str(e.reason)):
            found = [e for e in self.errors if wanted(e)]
            if found:
                return found[0]
        return self.errors[0]

    def socket_class(self, base: type[ssl.SSLSocket]) -> type[ssl.SSLSocket]:
        """``base`` whose ``connect``, ``recv`` and ``send`` record the TLS errors they raise."""

        def recording(method: Callable[..., Any]) -> Callable[..., Any]:
            @functools.wraps(method)
            def call(sock: ssl.SSLSocket, *args: Any, **kwargs: Any) -> Any:
                try:
                    return method(sock, *args, **kwargs)
                except ssl.SSLError as exc:
                    self.record(exc)
                    raise
            return call

        return type("RecordingSocket", (base,), {name: recording(getattr(base, name))
                                                 for name in ("connect", "recv", "send")})


def _reported_by_associate(message: str) -> bool:
    """pynetdicom's lines for what :func:`associate` puts in its ScuError (a rejection, no accepted context)."""
    return (message in ("Association Rejected", "No accepted presentation contexts", "Aborting Association")
            or message.startswith(("Reason: ", "Result: ")))


class _QuietReportedFailures(logging.Filter):
    """Drops pynetdicom's records of what :func:`associate` reports itself: a TLS failure (the tracebacks of TLS
    errors, and every record of the threads that met one: "connection closed", "aborted") and, in the thread that
    calls ``associate``, the lines of a rejection."""

    def filter(self, record: logging.LogRecord) -> bool:
        if _TlsFailures.silences(record.thread):
            return False
        if record.exc_info and isinstance(record.exc_info[1], ssl.SSLError):
            return False
        message = str(record.msg)
        if _TlsFailures.calling(record.thread) and _reported_by_associate(message):
            return False
        return not (message.startswith("TCP Initialisation Error: [SSL")
                    or message == "Association request failed: unable to connect to remote")


_QUIET = _QuietReportedFailures()


def _quiet_reported_failures() -> None:
    for name in ("pynetdicom.transport", "pynetdicom.dul", "pynetdicom.acse", "pynetdicom.association"):
        logger = logging.getLogger(name)
        if _QUIET not in logger.filters:
            logger.addFilter(_QUIET)


def server_ssl_context(tls: TLSConfig) -> ssl.SSLContext:
    """Server-side TLS context; client certificates required when ``tls.require_client_cert``."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    ctx.load_cert_chain(str(tls.cert), str(tls.key))
    if tls.ca:
        ctx.load_verify_locations(cafile=str(tls.ca))
    ctx.verify_mode = ssl.CERT_REQUIRED if tls.require_client_cert else (ssl.CERT_OPTIONAL if tls.ca else ssl.CERT_NONE)
    return ctx


# --- application entities and associations ----------------------------------------------------------------------
def make_ae(ae_title: str, *, acse_timeout: float, dimse_timeout: float, network_timeout: float | None,
            connect_timeout: float | None = None, cls: type[AE] = AE) -> AE:
    """An application entity with the node's timeouts and no limit on the PDUs it receives (far fewer PDUs for
    10 MB images)."""
    ae = cls(ae_title=ae_title)
    ae.acse_timeout = acse_timeout  # also the ARTIM timer
    ae.dimse_timeout = dimse_timeout
    ae.network_timeout = network_timeout
    if connect_timeout is not None:
        ae.connection_timeout = connect_timeout
    ae.maximum_pdu_size = 0
    return ae


def requestor_ae(peer: Peer) -> AE:
    """An AE that calls ``peer`` with ``peer``'s calling AE title and timeouts."""
    return make_ae(peer.calling_aet, acse_timeout=peer.acse_timeout, dimse_timeout=peer.dimse_timeout,
                   network_timeout=peer.dimse_timeout, connect_timeout=peer.connect_timeout)


def _low_latency(assoc: Association) -> None:
    """No waits on loopback-fast peers: TCP_NODELAY and quick ACKs on the association's socket.

    TCP_NODELAY: a C-STORE ends in a small PDU that Nagle's algorithm would hold back until the peer's delayed ACK.
    Quick ACKs (Linux ``TCP_QUICKACK``, re-armed after every read, since the kernel drops it again): a peer that
    keeps Nagle's algorithm on (DCMTK's default, so Orthanc and ``storescp`` as Debian ships them) writes its
    C-STORE-RSP in two pieces and holds the second until we acknowledge the first, which a delayed ACK does 40 ms
    later (measured: 7 result objects to Orthanc in 0.42 s before, 0.11 s after)."""
    transport = assoc.dul.socket
    raw = getattr(transport, "socket", None)
    if transport is None or raw is None:
        return
    try:
        raw.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    except OSError:  # no plain TCP socket underneath: keep the defaults
        return
    quick_ack = getattr(socket, "TCP_QUICKACK", None)
    if quick_ack is None:  # not Linux
        return
    read = transport.recv

    def recv_then_ack_at_once(nr_bytes: int) -> bytearray:
        data = read(nr_bytes)
        with contextlib.suppress(OSError):  # closed meanwhile: the read above already says so
            raw.setsockopt(socket.IPPROTO_TCP, quick_ack, 1)
        return data

    with contextlib.suppress(OSError):
        raw.setsockopt(socket.IPPROTO_TCP, quick_ack, 1)
    transport.recv = recv_then_ack_at_once  # type: ignore[method-assign]


def _unreachable(peer: Peer) -> str:
    """Why a TCP connection to ``peer`` fails, or "" when it connects."""
    try:
        with socket.create_connection((peer.host, peer.port), timeout=peer.connect_timeout):
            return ""
    except OSError as exc:
        return exc.strerror or str(exc)


# A-ASSOCIATE-RJ (PS3.8 Table 9-21): result, source, (source, diagnostic) -> reason
_REJECT_RESULTS = {1: "permanently", 2: "transiently"}
_REJECT_SOURCES = {1: "the service user", 2: "the service provider (ACSE)", 3: "the service provider (presentation)"}
_REJECT_REASONS = {
    (1, 1): "no reason given", (1, 2): "application context name not supported",
    (1, 3): "calling AE title not recognized", (1, 7): "called AE title not recognized",
    (2, 1): "no reason given", (2, 2): "protocol version not supported",
    (3, 1): "temporary congestion", (3, 2): "local limit exceeded",
}


def rejection_text(answer: Any, peer: Peer) -> str:
    """Why the peer rejected the association, in PS3.8 terms, with what to check for the reasons that name one."""
    codes: list[Any] = [getattr(answer, name, None) for name in ("result", "result_source", "diagnostic")]
    if None in codes:
        return "association rejected (no reason received)"
    result, source, diagnostic = (int(code) for code in codes)
    reason = _REJECT_REASONS.get((source, diagnostic), f"reason {diagnostic}")
    text = (f"association rejected {_REJECT_RESULTS.get(result, f'(result {result})')} by "
            f"{_REJECT_SOURCES.get(source, f'source {source}')}: {reason}")
    hints = {
        (1, 7): f"the destination does not answer to AE title {peer.ae_title!r}: check the destination's ae_title",
        (1, 3): f"the destination does not know the calling AE title {peer.calling_aet!r}: register it there",
        (3, 2): "the destination has reached its limit of associations: try again later",
        (3, 1): "the destination is busy: try again later",
    }
    hint = hints.get((source, diagnostic))
    return f"{text} ({hint})" if hint else text


ABORTED_RETRIES = 1
ABORTED_RETRY_SECONDS = 0.2


def _aborted_without_answer(assoc: Association) -> bool:
    """The association ended before any A-ASSOCIATE-AC or -RJ was read."""
    return bool(assoc.is_aborted) and assoc.acceptor.primitive is None


def associate(ae: AE, peer: Peer, explain_unreachable: bool = False, **kwargs: Any) -> Association:
    """An established association with ``peer`` (TLS when ``peer.tls`` is enabled); ScuError saying why not.

    ``explain_unreachable``: when no association came, try a plain TCP connection to tell "unreachable (reason)"
    apart (costs up to ``connect_timeout`` more)."""
    failures = _TlsFailures()
    _quiet_reported_failures()
    if peer.tls is not None and peer.tls.enabled:
        context = tls_context(peer.tls)
        context.sslsocket_class = failures.socket_class(context.sslsocket_class)
        kwargs["tls_args"] = (context, None)
    for attempt in range(1 + ABORTED_RETRIES):
        try:
            with failures:
                assoc = ae.associate(peer.host, peer.port, ae_title=peer.ae_title, **kwargs)
        except (OSError, ssl.SSLError) as exc:
            raise ScuError(f"{peer}: {exc}") from exc
        if assoc.is_established or not _aborted_without_answer(assoc) or failures.errors:
            break
        if attempt < ABORTED_RETRIES:  # a peer that rejects and closes at once can lose its A-ASSOCIATE-RJ in the
            time.sleep(ABORTED_RETRY_SECONDS)  # race with the close: ask once more to learn its reason
    if assoc.is_established:
        _low_latency(assoc)
        return assoc
    if failures.errors and peer.tls is not None:
        raise ScuError(f"TLS handshake with {peer} failed: {tls_failure_text(failures.most_telling(), peer.tls)}")
    answer = assoc.acceptor.primitive  # the peer's A-ASSOCIATE-AC / -RJ, when one came
    if assoc.is_rejected:
        raise ScuError(f"{peer}: {rejection_text(answer, peer)}")
    if answer is not None and getattr(answer, "result", None) == 0 and not assoc.accepted_contexts:
        raise ScuError(f"{peer}: association accepted, but with none of the {len(ae.requested_contexts)} proposed "
                       f"presentation contexts (the destination takes none of these SOP classes in these transfer "
                       f"syntaxes)")
    unreachable = _unreachable(peer) if explain_unreachable else ""
    if unreachable:
        raise ScuError(f"{peer}: unreachable ({unreachable})")
    if assoc.is_aborted:
        raise ScuError(f"{peer}: association aborted or connection refused")
    raise ScuError(f"{peer}: no association (connection refused or timed out)")


def close(assoc: Association) -> None:
    """Release an established association, abort any other."""
    if assoc.is_established:
        assoc.release()
    else:
        assoc.abort()


@contextmanager
def association(ae: AE, peer: Peer, explain_unreachable: bool = False, **kwargs: Any) -> Iterator[Association]:
    """:func:`associate`, closed (:func:`close`) when the block ends."""
    assoc = associate(ae, peer, explain_unreachable, **kwargs)
    try:
        yield assoc
    finally:
        close(assoc)


# --- process-wide pynetdicom switches ---------------------------------------------------------------------------
_TMP_DIR_LOCK = threading.Lock()
_TMP_DIR: list[Path] = []


def configure_pynetdicom(receive_dir: Path | None = None) -> None:
    """Set every process-wide pynetdicom switch the node relies on (idempotent):

    - ``STORE_SEND_CHUNKED_DATASET``: send files as they are stored (file meta stripped, in PDU-sized chunks)
      instead of decoding and re-encoding each one; the SR's re-encoding alone cost more than its transfer.
      :func:`dicomnode.scu.store_files` only sends a file whose own transfer syntax the peer accepted, which is
      what this mode requires.
    - ``STORE_RECV_CHUNKED_DATASET``: write each received dataset to a temp file (``event.dataset_path``) instead
      of holding it in memory.
    - AE titles padded with NUL are accepted (:func:`accept_nul_padded_ae_titles`).
    - with ``receive_dir``: those temp files go to ``receive_dir`` (the spool's temp directory, same file system:
      moved into place without a copy), with disk write-back started while the data still arrives.
    """
    pynetdicom_config.STORE_SEND_CHUNKED_DATASET = True
    pynetdicom_config.STORE_RECV_CHUNKED_DATASET = True
    accept_nul_padded_ae_titles()
    if receive_dir is not None:
        _receive_into(receive_dir)


def _ae_title_valid(value: Any) -> tuple[bool, str]:
    """pynetdicom's AE title check, with NUL padding taken for the padding it is."""
    return validate_ae(value.rstrip("\x00") if isinstance(value, str) else value)


def accept_nul_padded_ae_titles() -> None:
    """Take AE titles padded with NUL instead of spaces (PS3.8 9.3.2 says spaces): pynetdicom2-based peers such as
    tiny-pacs pad the Called AE Title of their C-MOVE sub-associations so, and pynetdicom refuses to decode such an
    A-ASSOCIATE-RQ at all (the peer sees an abort, the node logs a traceback)."""
    pynetdicom_config.VALIDATORS["AE"] = _ae_title_valid


def _load_sync_file_range() -> Callable[[int, int, int], None] | None:
    """Linux ``sync_file_range(fd, off, n, SYNC_FILE_RANGE_WRITE)``: start write-back without waiting."""
    try:
        import ctypes

        libc = ctypes.CDLL(None, use_errno=True)
        fn = libc.sync_file_range
        fn.argtypes = [ctypes.c_int, ctypes.c_int64, ctypes.c_int64, ctypes.c_uint]
    except (OSError, AttributeError):
        return None

    def start_writeback(fd: int, offset: int, nbytes: int) -> None:
        fn(fd, offset, nbytes, 2)

    return start_writeback


_START_WRITEBACK = _load_sync_file_range()


class _WriteBehindFile:
    """Wraps pynetdicom's temp file: starts disk write-back every few MB while the dataset is still arriving,
    so the fsync before the acknowledgement has little left to do."""

    def __init__(self, inner: Any):
        self._inner = inner
        self.name = inner.name
        self._written = 0
        self._kicked = 0

    @property
    def file(self) -> _WriteBehindFile:  # pynetdicom calls ``.file.flush()`` after each fragment
        return self

    def write(self, data: bytes) -> int:
        n = self._inner.write(data)
        self._written += n
        return n

    def flush(self) -> None:
        self._inner.file.flush()
        if _START_WRITEBACK is not None and self._written - self._kicked >= WRITE_BEHIND_BYTES:
            try:
                _START_WRITEBACK(self._inner.file.fileno(), self._kicked, self._written - self._kicked)
            except OSError:
                pass
            self._kicked = self._written

    def close(self) -> None:
        self._inner.close()

    def __getattr__(self, name: str) -> Any:
        return getattr(self._inner, name)


def _receive_into(directory: Path) -> None:
    """Make pynetdicom write received datasets into ``directory``."""
    with _TMP_DIR_LOCK:
        _TMP_DIR[:] = [directory]
        if getattr(dimse_messages, "_cxr_patched", False):
            return
        original = dimse_messages.NamedTemporaryFile

        def _named_temporary_file(*args: Any, **kwargs: Any) -> Any:
            if _TMP_DIR and "dir" not in kwargs:
                kwargs["dir"] = str(_TMP_DIR[0])
            return _WriteBehindFile(original(*args, **kwargs))

        dimse_messages.NamedTemporaryFile = _named_temporary_file
        dimse_messages._cxr_patched = True  # type: ignore[attr-defined]
