"""DICOM listener (pynetdicom SCP): C-ECHO and C-STORE of every storage SOP class in every transfer syntax.

A C-STORE is answered 0x0000 only after the file is fsynced, renamed into the spool, its directory fsynced *and*
its database row committed. Received datasets go to a temp file (``STORE_RECV_CHUNKED_DATASET``, set with
:func:`dicomnode.association.configure_pynetdicom`) in the spool's temp directory and are moved into place, never
held whole in memory; only header tags are parsed.

The C-STORE statuses and the header check are :mod:`dicomnode.received`'s (reason always logged and audited).

Associations are rejected (A-ASSOCIATE-RJ) when the calling AE title is not in ``node.allowed_calling_aets``
(permanent, calling-AE-title-not-recognized), when the called AE title is not ``node.ae_title`` and
``node.check_called_aet`` is on (permanent, called-AE-title-not-recognized), or transiently (local-limit-exceeded)
when ``max_associations`` are active or free disk in data_dir is below ``node.min_free_disk_mb``. With TLS enabled
only TLS connections are served; ``require_client_cert`` demands a client certificate signed by ``ca``. Connections
that are silent, slow or stuck in a TLS handshake are ended by :mod:`dicomnode.connections` and never hold a
``max_associations`` slot.
"""
from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from pynetdicom import ALL_TRANSFER_SYNTAXES, AllStoragePresentationContexts, evt
from pynetdicom.ae import ApplicationEntity
from pynetdicom.events import EventHandlerType
from pynetdicom.sop_class import Verification  # type: ignore[attr-defined]
from sqlalchemy.exc import IntegrityError, OperationalError
from sqlalchemy.orm import Session, sessionmaker

from dicomnode import metrics
from dicomnode.association import configure_pynetdicom, make_ae, server_ssl_context
from dicomnode.audit import audit, audit_now
from dicomnode.commitment import STORAGE_COMMITMENT_PUSH, event_report_handler
from dicomnode.config import NodeConfig
from dicomnode.connections import ConnectionGuard, GuardedHandler, GuardedServer
from dicomnode.datadir import disk_free_ok
from dicomnode.db.engine import error_summary
from dicomnode.db.ingest import IngestOutcome, InstanceRecord, fit_to_columns, instance_exists, record_instance
from dicomnode.db.models import utcnow
from dicomnode.logs import log_event
from dicomnode.loop_guard import written_by_node
from dicomnode.received import STATUS_OUT_OF_RESOURCES, STATUS_SUCCESS, ParsedHeader, Rejected, parse_header
from dicomnode.selection import InstanceFacts, skip_reason
from dicomnode.spool import Spool, SpoolError
from dicomnode.uids import clean_uid

LOG = logging.getLogger("dicomnode.listener")


# pynetdicom accepts, per presentation context, the first of *our* transfer syntaxes that the requestor proposed.
# Prefer Explicit VR LE, then lossless compressed (kept as sent), then other uncompressed, then the rest (lossy).
_PREFERRED_SYNTAXES = (
    "1.2.840.10008.1.2.1", "1.2.840.10008.1.2.4.70", "1.2.840.10008.1.2.4.57", "1.2.840.10008.1.2.4.80",
    "1.2.840.10008.1.2.4.90", "1.2.840.10008.1.2.4.92", "1.2.840.10008.1.2.4.201", "1.2.840.10008.1.2.4.202",
    "1.2.840.10008.1.2.4.110", "1.2.840.10008.1.2.5", "1.2.840.10008.1.2", "1.2.840.10008.1.2.1.99",
    "1.2.840.10008.1.2.2",
)
TRANSFER_SYNTAXES = [*_PREFERRED_SYNTAXES, *(ts for ts in ALL_TRANSFER_SYNTAXES if ts not in _PREFERRED_SYNTAXES)]



class _NodeAE(ApplicationEntity):
    """An AE that refuses new associations (local limit) while ``refuse`` says so (low disk), and whose limit counts
    established associations only.

    pynetdicom rejects a request when its acceptor threads, itself included, outnumber ``maximum_associations``;
    threads of connections that have not negotiated (silent or slow clients) would use up the limit. So the limit
    reported is raised by the number of acceptors still negotiating, the asking one excepted.
    """

    refuse: Callable[[], bool] = staticmethod(lambda: False)

    @property
    def maximum_associations(self) -> int:
        if self.refuse():
            return 0
        negotiating = sum(1 for a in self.active_associations if a.is_acceptor and not a.is_established)
        return self._maximum_associations + max(0, negotiating - 1)

    @maximum_associations.setter
    def maximum_associations(self, value: int) -> None:
        self._maximum_associations = max(1, int(value))


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
        self.extra_handlers: list[EventHandlerType] = []  # e.g. the MPPS SCP's, set before start()
        self._closed = False
        self._disk_checked = 0.0
        self._disk_low = False
        ae = make_ae(config.node.ae_title, acse_timeout=config.node.acse_timeout_seconds,
                     dimse_timeout=config.node.dimse_timeout_seconds,
                     network_timeout=config.node.network_timeout_seconds, cls=_NodeAE)
        assert isinstance(ae, _NodeAE)
        self.ae = ae
        self.ae.refuse = self._low_disk
        self.ae.maximum_associations = config.node.max_associations
        self.ae.require_calling_aet = list(config.node.allowed_calling_aets)
        self.ae.require_called_aet = config.node.check_called_aet
        self.guard = ConnectionGuard(
            negotiation_seconds=config.node.acse_timeout_seconds,
            tls_handshake_seconds=config.node.tls_handshake_timeout_seconds,
            network_timeout_seconds=config.node.network_timeout_seconds,
            on_tls_failure=self._tls_failed,
        )
        for cx in AllStoragePresentationContexts:
            if cx.abstract_syntax is not None:  # every one has one (the attribute is Optional)
                self.ae.add_supported_context(cx.abstract_syntax, TRANSFER_SYNTAXES)
        self.ae.add_supported_context(Verification, TRANSFER_SYNTAXES)
        # Storage Commitment reports (N-EVENT-REPORT) from destinations, on an association they open
        self.ae.add_supported_context(STORAGE_COMMITMENT_PUSH, TRANSFER_SYNTAXES, scu_role=True, scp_role=True)

    # --- lifecycle -------------------------------------------------------------------------------------------
    @property
    def port(self) -> int:
        """The bound TCP port (useful when configured as 0)."""
        return int(self._server.server_address[1]) if self._server else self.config.node.port

    def start(self) -> None:
        self.spool.prepare()
        configure_pynetdicom(receive_dir=self.spool.tmp)
        ssl_ctx = server_ssl_context(self.config.node.tls) if self.config.node.tls.enabled else None
        handlers: list[EventHandlerType] = [
            (evt.EVT_C_STORE, self._handle_store),
            (evt.EVT_C_ECHO, self._handle_echo),
            (evt.EVT_N_EVENT_REPORT, event_report_handler(self.session_factory)),
            (evt.EVT_ACCEPTED, self._handle_accepted),
            (evt.EVT_REJECTED, self._handle_rejected),
            (evt.EVT_CONN_CLOSE, self._handle_closed),
            (evt.EVT_ABORTED, self._handle_aborted),
            *self.extra_handlers,
        ]
        server = self.ae.make_server(
            (self.config.node.host, self.config.node.port), evt_handlers=handlers,
            server_class=GuardedServer, request_handler=GuardedHandler,
        )
        assert isinstance(server, GuardedServer)  # make_server's type does not follow server_class
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
            self._disk_low = not disk_free_ok(self.spool.data_dir, self.config.node.min_free_disk_mb)[0]
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
            except Exception:  # a study without its release still completes (thread-ended check)
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
        except Exception as exc:  # never crash the association; answer out-of-resources
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
            except Exception:  # stored and committed; completion re-arms at start-up
                LOG.exception("on_stored callback failed")
        log_event(LOG, logging.DEBUG, "store handled", ms=round((time.perf_counter() - started) * 1000, 1))
        return status

    def _store(self, path: Path, request: Any, calling: str) -> tuple[int, IngestOutcome | None, ParsedHeader]:
        if self._low_disk():
            raise Rejected(STATUS_OUT_OF_RESOURCES, "low free disk space")
        header = parse_header(path, request.AffectedSOPInstanceUID, request.AffectedSOPClassUID)
        with self.session_factory() as session:
            duplicate = instance_exists(session, header.sop_uid)
            own_object = not duplicate and written_by_node(session, header.sop_uid)
        if duplicate:
            audit_now(self.session_factory, "instance.duplicate", calling_aet=calling,
                      study_instance_uid=header.study_uid, sop_instance_uid=header.sop_uid)
            return STATUS_SUCCESS, None, header
        relative = self.spool.relative_path(header.study_uid, header.series_uid, header.sop_uid)
        try:
            size = self.spool.store_file(path, relative)
        except SpoolError as exc:
            raise Rejected(STATUS_OUT_OF_RESOURCES, str(exc)) from None
        reason = skip_reason(InstanceFacts(header.modality, header.body_part, header.has_pixel_data,
                                           header.sop_class_uid, own_object), self.config.study)
        rec = InstanceRecord(**header.header_fields(), path=relative, size_bytes=size, skip_reason=reason,
                             calling_aet=calling)
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
