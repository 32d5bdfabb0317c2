"""DICOM listener (pynetdicom SCP): C-ECHO and C-STORE of every storage SOP class in every transfer syntax.

A C-STORE is answered 0x0000 only after the file is fsynced, renamed into the spool, its directory fsynced *and*
its database row committed. Received datasets go to a temp file (``STORE_RECV_CHUNKED_DATASET``) in the spool's
temp directory and are moved into place, never held whole in memory; only header tags are parsed.

C-STORE statuses returned (reason always logged and audited):

======  =====================================================================================
0x0000  stored (also for a duplicate SOP Instance UID already stored: idempotent, file kept)
0xA700  out of resources: spool or database write failed, or free disk below node.min_free_disk_mb
0xC000  cannot understand: not parseable as DICOM, or truncated (pixel data shorter than declared)
0xC001  cannot understand: Study, Series or SOP Instance UID missing
0xC002  cannot understand: a UID does not follow the UID grammar (e.g. ``../x``); never used as a path
0xC003  cannot understand: SOP Instance/Class UID of the dataset differs from the C-STORE request
======  =====================================================================================

Associations are rejected (A-ASSOCIATE-RJ) when the calling AE title is not in ``node.allowed_calling_aets``
(permanent, calling-AE-title-not-recognized), when the called AE title is not ``node.ae_title`` and
``node.check_called_aet`` is on (permanent, called-AE-title-not-recognized), or transiently (local-limit-exceeded) when ``max_associations`` are
active or free disk in data_dir is below ``node.min_free_disk_mb``. With TLS enabled only TLS connections are
served; ``require_client_cert`` demands a client certificate signed by ``ca``. Connections that are silent, slow
or stuck in a TLS handshake are ended by :mod:`dicomnode.connections` and never hold a ``max_associations`` slot.
"""
from __future__ import annotations

import logging
import shutil
import ssl
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

from pydicom import dcmread
from pydicom.dataelem import RawDataElement
from pydicom.errors import InvalidDicomError
from pynetdicom import ALL_TRANSFER_SYNTAXES, AllStoragePresentationContexts, _config, evt
from pynetdicom import dimse_messages
from pynetdicom.ae import ApplicationEntity
from pynetdicom.sop_class import Verification  # type: ignore[attr-defined]
from sqlalchemy.exc import IntegrityError, OperationalError
from sqlalchemy.orm import Session, sessionmaker

from dicomnode import metrics
from dicomnode.audit import audit, audit_now
from dicomnode.config import NodeConfig, TLSConfig
from dicomnode.connections import ConnectionGuard, GuardedHandler, GuardedServer
from dicomnode.db.ingest import InstanceRecord, IngestOutcome, fit_to_columns, instance_exists, record_instance
from dicomnode.db.engine import error_summary
from dicomnode.db.models import utcnow
from dicomnode.logs import log_event
from dicomnode.selection import InstanceFacts, skip_reason
from dicomnode.spool import Spool, SpoolError
from dicomnode.uids import clean_uid

LOG = logging.getLogger("dicomnode.listener")

STATUS_SUCCESS = 0x0000
STATUS_OUT_OF_RESOURCES = 0xA700
STATUS_UNREADABLE = 0xC000
STATUS_MISSING_UID = 0xC001
STATUS_INVALID_UID = 0xC002
STATUS_UID_MISMATCH = 0xC003

PIXEL_TAGS = (0x7FE00010, 0x7FE00008, 0x7FE00009)  # PixelData, FloatPixelData, DoubleFloatPixelData
HEADER_TAGS = [
    "SpecificCharacterSet", "SOPClassUID", "SOPInstanceUID", "StudyInstanceUID", "SeriesInstanceUID", "Modality",
    "BodyPartExamined", "ViewPosition", "PatientID", "AccessionNumber", "Rows", "Columns", "BitsAllocated",
    "SamplesPerPixel", "NumberOfFrames", *PIXEL_TAGS,
]
UNDEFINED_LENGTH = 0xFFFFFFFF

# pynetdicom accepts, per presentation context, the first of *our* transfer syntaxes that the requestor proposed.
# Prefer Explicit VR LE, then lossless compressed (kept as sent), then other uncompressed, then the rest (lossy).
_PREFERRED_SYNTAXES = (
    "1.2.840.10008.1.2.1", "1.2.840.10008.1.2.4.70", "1.2.840.10008.1.2.4.57", "1.2.840.10008.1.2.4.80",
    "1.2.840.10008.1.2.4.90", "1.2.840.10008.1.2.4.92", "1.2.840.10008.1.2.4.201", "1.2.840.10008.1.2.4.202",
    "1.2.840.10008.1.2.4.110", "1.2.840.10008.1.2.5", "1.2.840.10008.1.2", "1.2.840.10008.1.2.1.99",
    "1.2.840.10008.1.2.2",
)
TRANSFER_SYNTAXES = [*_PREFERRED_SYNTAXES, *(ts for ts in ALL_TRANSFER_SYNTAXES if ts not in _PREFERRED_SYNTAXES)]


class Rejected(Exception):
    """A C-STORE answered with a failure status; ``reason`` is logged."""

    def __init__(self, status: int, reason: str):
        super().__init__(reason)
        self.status = status
        self.reason = reason


@dataclass(frozen=True)
class ParsedHeader:
    study_uid: str
    series_uid: str
    sop_uid: str
    sop_class_uid: str
    transfer_syntax_uid: str | None
    modality: str
    body_part: str
    view_position: str | None
    patient_id: str | None
    accession_number: str | None
    has_pixel_data: bool


def _text(ds: Any, keyword: str) -> str | None:
    value = ds.get(keyword)
    if value is None:
        return None
    return str(value).strip() or None


def parse_header(path: Path, request_sop_uid: str | None, request_sop_class: str | None) -> ParsedHeader:
    """Read only the tags the node needs from a received Part-10 file; raise :class:`Rejected` when invalid."""
    size = path.stat().st_size
    try:
        ds = dcmread(path, defer_size=1024, specific_tags=HEADER_TAGS)
        raw_uids = {k: ds.get(k) for k in ("StudyInstanceUID", "SeriesInstanceUID", "SOPInstanceUID", "SOPClassUID")}
        meta_ts = ds.file_meta.get("TransferSyntaxUID") if hasattr(ds, "file_meta") else None
    except (InvalidDicomError, EOFError, ValueError, KeyError, TypeError, OSError, NotImplementedError) as exc:
        raise Rejected(STATUS_UNREADABLE, f"unreadable dataset: {type(exc).__name__}: {exc}") from None
    missing = [k for k, v in raw_uids.items() if v is None or str(v).strip("\x00 ") == ""]
    if len(missing) == len(raw_uids):
        raise Rejected(STATUS_UNREADABLE, "not a DICOM dataset: no SOP, Study or Series UID found")
    if missing:
        raise Rejected(STATUS_MISSING_UID, f"missing {', '.join(missing)}")
    uids = {k: clean_uid(v) for k, v in raw_uids.items()}
    bad = [k for k, v in uids.items() if v is None]
    if bad:
        raise Rejected(STATUS_INVALID_UID, f"invalid UID in {', '.join(bad)}")
    if request_sop_uid and clean_uid(request_sop_uid) != uids["SOPInstanceUID"]:
        raise Rejected(STATUS_UID_MISMATCH, "SOP Instance UID differs from the C-STORE request")
    if request_sop_class and clean_uid(request_sop_class) != uids["SOPClassUID"]:
        raise Rejected(STATUS_UID_MISMATCH, "SOP Class UID differs from the C-STORE request")
    has_pixels = False
    for tag in PIXEL_TAGS:
        if tag not in ds:
            continue
        has_pixels = True
        raw = ds.get_item(tag, keep_deferred=True)
        if isinstance(raw, RawDataElement) and raw.length != UNDEFINED_LENGTH:
            deflated = str(meta_ts) == "1.2.840.10008.1.2.1.99"  # value_tell is in the inflated stream
            if not deflated and raw.value_tell + raw.length > size:
                raise Rejected(STATUS_UNREADABLE, "truncated: pixel data shorter than its declared length")
            expected = _expected_native_length(ds)
            if tag == 0x7FE00010 and expected and raw.length < expected:
                raise Rejected(STATUS_UNREADABLE, f"truncated: pixel data {raw.length} bytes, expected {expected}")
    try:
        modality = _text(ds, "Modality") or ""
        body_part = _text(ds, "BodyPartExamined") or ""
        return ParsedHeader(
            study_uid=uids["StudyInstanceUID"], series_uid=uids["SeriesInstanceUID"],  # type: ignore[arg-type]
            sop_uid=uids["SOPInstanceUID"], sop_class_uid=uids["SOPClassUID"],  # type: ignore[arg-type]
            transfer_syntax_uid=clean_uid(meta_ts), modality=modality.upper(), body_part=body_part.upper(),
            view_position=(_text(ds, "ViewPosition") or None), patient_id=_text(ds, "PatientID"),
            accession_number=_text(ds, "AccessionNumber"), has_pixel_data=has_pixels,
        )
    except Exception as exc:  # noqa: BLE001 - undecodable text values
        raise Rejected(STATUS_UNREADABLE, f"unreadable attribute: {type(exc).__name__}") from None


def _expected_native_length(ds: Any) -> int | None:
    """Bytes of native (uncompressed) pixel data the header implies, or None when compressed/unknown."""
    ts = ds.file_meta.get("TransferSyntaxUID") if hasattr(ds, "file_meta") else None
    if ts is None or getattr(ts, "is_compressed", True):
        return None
    try:
        frames = int(ds.get("NumberOfFrames") or 1)
        bits = int(ds.BitsAllocated)
        n = int(ds.Rows) * int(ds.Columns) * int(ds.get("SamplesPerPixel") or 1) * frames
    except (AttributeError, TypeError, ValueError):
        return None
    return (n * bits + 7) // 8


class _NodeAE(ApplicationEntity):
    """An AE that refuses new associations (local limit) while ``refuse`` says so (low disk), and whose limit counts
    established associations only.

    pynetdicom rejects a request when its acceptor threads, itself included, outnumber ``maximum_associations``;
    threads of connections that have not negotiated (silent or slow clients) would use up the limit. So the limit
    reported is raised by the number of acceptors still negotiating, the asking one excepted.
    """

    refuse: Callable[[], bool] = staticmethod(lambda: False)  # type: ignore[assignment]

    @property  # type: ignore[override]
    def maximum_associations(self) -> int:
        if self.refuse():
            return 0
        negotiating = sum(1 for a in self.active_associations if a.is_acceptor and not a.is_established)
        return self._maximum_associations + max(0, negotiating - 1)

    @maximum_associations.setter
    def maximum_associations(self, value: int) -> None:
        self._maximum_associations = max(1, int(value))


_TMP_DIR_LOCK = threading.Lock()
_TMP_DIR: list[Path] = []
WRITE_BEHIND_BYTES = 4 << 20


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
    def file(self) -> "_WriteBehindFile":  # pynetdicom calls ``.file.flush()`` after each fragment
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


def _use_spool_tmp(directory: Path) -> None:
    """Make pynetdicom write received datasets into ``directory`` (same file system as the spool: no copy)."""
    with _TMP_DIR_LOCK:
        _TMP_DIR[:] = [directory]
        if getattr(dimse_messages, "_cxr_patched", False):
            return
        original = dimse_messages.NamedTemporaryFile

        def _named_temporary_file(*args: Any, **kwargs: Any) -> Any:
            if _TMP_DIR and "dir" not in kwargs:
                kwargs["dir"] = str(_TMP_DIR[0])
            return _WriteBehindFile(original(*args, **kwargs))

        dimse_messages.NamedTemporaryFile = _named_temporary_file  # type: ignore[assignment]
        dimse_messages._cxr_patched = True  # type: ignore[attr-defined]


def server_ssl_context(tls: TLSConfig) -> ssl.SSLContext:
    """Server-side TLS context; client certificates required when ``tls.require_client_cert``."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    ctx.load_cert_chain(str(tls.cert), str(tls.key))
    if tls.ca:
        ctx.load_verify_locations(cafile=str(tls.ca))
    ctx.verify_mode = ssl.CERT_REQUIRED if tls.require_client_cert else (ssl.CERT_OPTIONAL if tls.ca else ssl.CERT_NONE)
    return ctx


class Listener:
    """The node's SCP. ``on_stored(outcome)`` is called after each committed instance (completion arming)."""

    def __init__(
        self,
        config: NodeConfig,
        session_factory: sessionmaker[Session],
        spool: Spool,
        on_stored: Callable[[IngestOutcome], None] | None = None,
        on_closed: Callable[[Any], None] | None = None,
    ):
        self.config = config
        self.session_factory = session_factory
        self.spool = spool
        self.on_stored = on_stored  # called in the association's thread (a pynetdicom Association is a Thread)
        self.on_closed = on_closed  # called with the association when its connection closes (completion hold)
        self._server: Any = None
        self._closed = False
        self._disk_checked = 0.0
        self._disk_low = False
        self.ae = _NodeAE(ae_title=config.node.ae_title)
        self.ae.refuse = self._low_disk  # type: ignore[method-assign]
        self.ae.maximum_associations = config.node.max_associations
        self.ae.maximum_pdu_size = 0
        self.ae.require_calling_aet = list(config.node.allowed_calling_aets)
        self.ae.require_called_aet = config.node.check_called_aet
        self.ae.network_timeout = config.node.network_timeout_seconds
        self.ae.dimse_timeout = config.node.dimse_timeout_seconds
        self.ae.acse_timeout = config.node.acse_timeout_seconds  # also the ARTIM timer
        self.guard = ConnectionGuard(
            negotiation_seconds=config.node.acse_timeout_seconds,
            tls_handshake_seconds=config.node.tls_handshake_timeout_seconds,
            network_timeout_seconds=config.node.network_timeout_seconds,
            on_tls_failure=self._tls_failed,
        )
        for cx in AllStoragePresentationContexts:
            self.ae.add_supported_context(cx.abstract_syntax, TRANSFER_SYNTAXES)
        self.ae.add_supported_context(Verification, TRANSFER_SYNTAXES)

    # --- lifecycle -------------------------------------------------------------------------------------------
    @property
    def port(self) -> int:
        """The bound TCP port (useful when configured as 0)."""
        return int(self._server.server_address[1]) if self._server else self.config.node.port

    def start(self) -> None:
        _config.STORE_RECV_CHUNKED_DATASET = True
        self.spool.prepare()
        _use_spool_tmp(self.spool.tmp)
        ssl_ctx = server_ssl_context(self.config.node.tls) if self.config.node.tls.enabled else None
        handlers = [
            (evt.EVT_C_STORE, self._handle_store),
            (evt.EVT_C_ECHO, self._handle_echo),
            (evt.EVT_ACCEPTED, self._handle_accepted),
            (evt.EVT_REJECTED, self._handle_rejected),
            (evt.EVT_CONN_CLOSE, self._handle_closed),
            (evt.EVT_ABORTED, self._handle_aborted),
        ]
        server = self.ae.make_server(
            (self.config.node.host, self.config.node.port), evt_handlers=handlers,
            server_class=GuardedServer, request_handler=GuardedHandler,
        )
        server.guard = self.guard
        server.tls_context = ssl_ctx
        self.ae._servers.append(server)
        threading.Thread(target=server.serve_forever, name="cxr-dicom-accept", daemon=True).start()
        self._server = server
        self.guard.start()
        if not self.config.node.check_called_aet:
            log_event(LOG, logging.WARNING, "called AE title check is off: associations to any AE title accepted")
        log_event(LOG, logging.INFO, "listener started", ae_title=self.config.node.ae_title,
                  host=self.config.node.host, port=self.port, tls=self.config.node.tls.enabled)

    def stop_accepting(self) -> None:
        """Close the listening socket; established associations continue."""
        if self._server is not None and not self._closed:
            self._closed = True
            self._server.shutdown()  # stops serve_forever and closes the socket

    def active_associations(self) -> int:
        """Established incoming associations (a bare TCP connect that never negotiates does not count)."""
        return len([a for a in self.ae.active_associations if a.is_acceptor and a.is_established])

    def stop(self, timeout: float | None = None) -> None:
        """Stop accepting, let established associations finish (up to ``timeout`` s, default
        ``node.shutdown_timeout_seconds``), then abort the rest. Returns in bounded time whatever clients do."""
        if self._server is None:
            return
        timeout = self.config.node.shutdown_timeout_seconds if timeout is None else timeout
        self.stop_accepting()
        self.guard.close_all("shutdown", phases=("tls", "negotiating"))  # nothing in flight there
        deadline = time.monotonic() + timeout
        while self.active_associations() and time.monotonic() < deadline:
            time.sleep(0.05)
        left = self.guard.close_all("shutdown")  # wakes every blocked recv: pynetdicom's aborts can finish
        stopper = threading.Thread(target=self.ae.shutdown, name="cxr-listener-shutdown", daemon=True)
        stopper.start()
        stopper.join(timeout=10)
        self.guard.stop()
        self._server = None
        log_event(LOG, logging.INFO, "listener stopped", ae_title=self.config.node.ae_title, aborted=left or None)

    # --- checks ----------------------------------------------------------------------------------------------
    def _low_disk(self) -> bool:
        now = time.monotonic()
        if now - self._disk_checked > 1.0:
            try:
                free = shutil.disk_usage(self.spool.data_dir).free
                self._disk_low = free < self.config.node.min_free_disk_mb * 1024 * 1024
            except OSError:
                self._disk_low = True
            self._disk_checked = now
        return self._disk_low

    # --- event handlers --------------------------------------------------------------------------------------
    @staticmethod
    def _peer(event: Any) -> tuple[str, str]:
        req = event.assoc.requestor
        return str(req.ae_title).strip(), f"{req.address}:{req.port}"

    def _handle_accepted(self, event: Any) -> None:
        calling, peer = self._peer(event)
        audit_now(self.session_factory, "association.accepted", calling_aet=calling,
                  called_aet=self.config.node.ae_title, peer=peer)

    def _handle_rejected(self, event: Any) -> None:
        calling, peer = self._peer(event)
        rj = event.assoc.acceptor.primitive
        source, diagnostic = (getattr(rj, "result_source", None), getattr(rj, "diagnostic", None))
        if (source, diagnostic) == (0x01, 0x03):
            reason = "calling AE title not allowed"
        elif (source, diagnostic) == (0x01, 0x07):
            reason = "called AE title not recognized"
        elif self._disk_low:
            reason = "low free disk space"
        elif (source, diagnostic) == (0x03, 0x02):
            reason = "too many associations"
        else:
            reason = f"rejected (source {source}, diagnostic {diagnostic})"
        requested = event.assoc.requestor.primitive
        called = str(getattr(requested, "called_ae_title", "") or "").strip() or self.config.node.ae_title
        metrics.associations_rejected.labels(reason=reason).inc()
        audit_now(self.session_factory, "association.rejected", calling_aet=calling,
                  called_aet=called, peer=peer, level=logging.WARNING, reason=reason)

    def _handle_aborted(self, event: Any) -> None:
        """Count pynetdicom's own idle aborts (the guard counts the connections it ends itself)."""
        conn = self.guard.find(event.assoc)
        if conn is not None and getattr(event.assoc, "_sent_abort", False) and event.assoc.dul.idle_timer_expired():
            self.guard.count(conn, "idle_timeout")

    def _tls_failed(self, peer: str, reason: str) -> None:
        audit_now(self.session_factory, "tls.handshake_failed", called_aet=self.config.node.ae_title, peer=peer,
                  level=logging.WARNING, reason=reason)

    def _handle_closed(self, event: Any) -> None:
        if self.on_closed is not None:
            try:
                self.on_closed(event.assoc)
            except Exception:  # noqa: BLE001 - a study without its release still completes (thread-ended check)
                LOG.exception("on_closed callback failed")

    def _handle_echo(self, event: Any) -> int:
        return STATUS_SUCCESS

    def _handle_store(self, event: Any) -> int:
        calling, peer = self._peer(event)
        request = event.request
        started = time.perf_counter()
        try:
            with self.guard.busy(event.assoc):
                status, outcome, header = self._store(Path(event.dataset_path), request, calling)
        except Rejected as rej:
            metrics.instances_rejected.labels(reason=f"0x{rej.status:04X}").inc()
            audit_now(self.session_factory, "instance.rejected", calling_aet=calling, peer=peer,
                      sop_instance_uid=clean_uid(request.AffectedSOPInstanceUID), level=logging.WARNING,
                      status=f"0x{rej.status:04X}", reason=rej.reason)
            return rej.status
        except Exception as exc:  # noqa: BLE001 - never crash the association; answer out-of-resources
            # the exception text may quote header values (patient data): the full trace at DEBUG only
            LOG.debug("store failed", exc_info=True)
            metrics.instances_rejected.labels(reason="0xA700").inc()
            audit_now(self.session_factory, "instance.store_failed", calling_aet=calling, peer=peer,
                      level=logging.ERROR, status="0xA700", reason=error_summary(exc))
            return STATUS_OUT_OF_RESOURCES
        metrics.instances_received.inc()
        if outcome is not None and self.on_stored is not None:
            try:
                self.on_stored(outcome)
            except Exception:  # noqa: BLE001 - stored and committed; completion re-arms at start-up
                LOG.exception("on_stored callback failed")
        log_event(LOG, logging.DEBUG, "store handled", ms=round((time.perf_counter() - started) * 1000, 1))
        return status

    def _store(self, path: Path, request: Any, calling: str) -> tuple[int, IngestOutcome | None, ParsedHeader]:
        if self._low_disk():
            raise Rejected(STATUS_OUT_OF_RESOURCES, "low free disk space")
        header = parse_header(path, request.AffectedSOPInstanceUID, request.AffectedSOPClassUID)
        with self.session_factory() as session:
            duplicate = instance_exists(session, header.sop_uid)
        if duplicate:
            audit_now(self.session_factory, "instance.duplicate", calling_aet=calling,
                      study_instance_uid=header.study_uid, sop_instance_uid=header.sop_uid)
            return STATUS_SUCCESS, None, header
        relative = self.spool.relative_path(header.study_uid, header.series_uid, header.sop_uid)
        try:
            size = self.spool.store_file(path, relative)
        except SpoolError as exc:
            raise Rejected(STATUS_OUT_OF_RESOURCES, str(exc)) from None
        reason = skip_reason(InstanceFacts(header.modality, header.body_part, header.has_pixel_data),
                             self.config.study)
        rec = InstanceRecord(
            study_uid=header.study_uid, series_uid=header.series_uid, sop_uid=header.sop_uid,
            sop_class_uid=header.sop_class_uid, transfer_syntax_uid=header.transfer_syntax_uid,
            modality=header.modality or None, body_part=header.body_part or None,
            view_position=header.view_position, patient_id=header.patient_id,
            accession_number=header.accession_number, path=relative, size_bytes=size, skip_reason=reason,
            calling_aet=calling,
        )
        rec, cut = fit_to_columns(rec)
        if cut:  # recorded with the stored instance (field names and lengths, never the values)
            log_event(LOG, logging.WARNING, "header values longer than the database allows were truncated",
                      sop_instance_uid=header.sop_uid, truncated=cut)
        outcome = self._commit(rec, calling, truncated=cut or None)
        if outcome is None:
            return STATUS_SUCCESS, None, header
        return STATUS_SUCCESS, outcome, header

    def _commit(self, rec: InstanceRecord, calling: str, truncated: dict[str, int] | None = None,
                ) -> IngestOutcome | None:
        """Commit the instance row; None when a concurrent association stored the same SOP Instance first."""
        last_exc: Exception | None = None
        for _attempt in range(3):
            try:
                with self.session_factory.begin() as session:
                    outcome = record_instance(session, rec, utcnow())
                    audit(
                        session, "instance.stored", calling_aet=calling, study_instance_uid=rec.study_uid,
                        sop_instance_uid=rec.sop_uid, job_id=outcome.job_id, generation=outcome.generation,
                        modality=rec.modality, selected=rec.skip_reason is None, skip_reason=rec.skip_reason,
                        size_bytes=rec.size_bytes, new_study=outcome.new_study or None,
                        reopened=outcome.reopened or None, truncated=truncated,
                    )
                return outcome
            except IntegrityError as exc:  # concurrent first instance of a study, or duplicate SOP instance
                last_exc = exc
                with self.session_factory() as session:
                    if instance_exists(session, rec.sop_uid):
                        return None
            except OperationalError as exc:
                raise Rejected(STATUS_OUT_OF_RESOURCES, f"database unavailable: {error_summary(exc)}") from None
        raise Rejected(STATUS_OUT_OF_RESOURCES, f"database write failed: {error_summary(last_exc)}")
