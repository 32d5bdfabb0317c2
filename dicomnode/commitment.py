"""Storage Commitment (push model) for DIMSE destinations with ``storage_commitment: true``.

After an object is delivered (Delivery SENT), :class:`Committer` asks the destination to commit it: one N-ACTION
(Request Storage Commitment, action type 1) per batch with a new Transaction UID, recorded before it is sent. The
destination answers with an N-EVENT-REPORT on a new association to the node's listener (or on the same
association); :func:`record_report` then marks the objects COMMITTED, or re-queues the failed ones (Delivery
PENDING: sent again, counted against the destination's ``retry.max_attempts``, then asked again; a DELIVERED job
goes back to RESULTS_READY and is settled again, FAILED if the object is dead-lettered).

A report that does not come within ``commitment_timeout_seconds`` counts ``cxrnode_commitment_timeouts_total``,
is recorded on the row (``commit_timeouts``, shown by ``cxr-node status``) and the objects are asked for again
with a new transaction. Retention keeps a study's files until every delivery to a commitment destination is
COMMITTED (:func:`uncommitted_deliveries`).
"""
from __future__ import annotations

import datetime as dt
import logging
import threading
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from prometheus_client import Counter, Histogram
from pydicom import Dataset
from pydicom.uid import generate_uid
from pynetdicom import evt
from sqlalchemy import func, select
from sqlalchemy.orm import Session, sessionmaker

from dicomnode import metrics
from dicomnode.association import Peer, ScuError, associate, close, requestor_ae
from dicomnode.audit import audit
from dicomnode.background import BackgroundLoop
from dicomnode.config import NodeConfig
from dicomnode.db.models import Delivery, Job, utcnow
from dicomnode.db.states import DeliveryState, JobState
from dicomnode.destinations import DimseDestination
from dicomnode.jobs import set_job_state
from dicomnode.logs import log_event

LOG = logging.getLogger("dicomnode.commitment")
STORAGE_COMMITMENT_PUSH = "1.2.840.10008.1.20.1"
STORAGE_COMMITMENT_INSTANCE = "1.2.840.10008.1.20.1.1"  # the well-known SOP Instance of the push model
REQUEST_COMMITMENT = 1  # N-ACTION Action Type ID
EVENT_ALL_COMMITTED, EVENT_FAILURES = 1, 2  # N-EVENT-REPORT Event Type IDs
BATCH = 100
SAME_ASSOCIATION_WAIT_SECONDS = 0.5  # how long the N-ACTION association stays open for a report sent on it
STATUS_SUCCESS = 0x0000
STATUS_NO_SUCH_SOP_CLASS = 0x0118
STATUS_INVALID_ARGUMENT = 0x0115
FAILURE_REASONS = {0x0110: "processing failure", 0x0112: "no such object instance", 0x0213: "resource limitation",
                   0x0122: "referenced SOP class not supported", 0x0119: "class/instance conflict",
                   0x0131: "duplicate transaction UID"}

commitment_timeouts = Counter(
    f"{metrics.PREFIX}_commitment_timeouts", "Storage Commitment requests with no report within "
    "commitment_timeout_seconds, by destination.", ["destination"], registry=metrics.REGISTRY)
commitment_failures = Counter(
    f"{metrics.PREFIX}_commitment_failures", "Objects a destination reported as not committed (re-queued).",
    ["destination"], registry=metrics.REGISTRY)
commitment_seconds = Histogram(
    f"{metrics.PREFIX}_commitment_seconds", "From the N-ACTION to the N-EVENT-REPORT that committed the object.",
    ["destination"], buckets=(0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300, float("inf")),
    registry=metrics.REGISTRY)


def failure_text(reason: int) -> str:
    return f"0x{reason:04X} ({FAILURE_REASONS.get(reason, 'unknown reason')})"


# -- reports ---------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class ReportOutcome:
    committed: int
    failed: int
    unknown_transaction: bool


def record_report(session_factory: sessionmaker[Session], transaction_uid: str, committed: Iterable[str],
                  failed: Mapping[str, int], peer: str | None = None) -> ReportOutcome:
    """Apply one N-EVENT-REPORT: committed objects become COMMITTED, failed ones PENDING again (re-sent)."""
    committed_uids, now = set(committed), utcnow()
    n_ok = n_failed = 0
    with session_factory.begin() as session:
        rows = list(session.scalars(select(Delivery).where(Delivery.commit_transaction_uid == transaction_uid)
                                    .with_for_update()))
        for row in rows:
            common: dict[str, Any] = {"sop_instance_uid": row.sop_instance_uid, "job_id": row.job_id, "peer": peer}
            if row.state != DeliveryState.SENT.value:
                continue
            if row.sop_instance_uid in committed_uids:
                row.state, row.committed_at, row.last_error = DeliveryState.COMMITTED.value, now, None
                if row.commit_requested_at is not None:
                    commitment_seconds.labels(destination=row.destination).observe(
                        (now - row.commit_requested_at).total_seconds())
                audit(session, "delivery.committed", destination=row.destination, transaction=transaction_uid,
                      **common)
                n_ok += 1
            elif row.sop_instance_uid is not None and row.sop_instance_uid in failed:
                reason = failed[row.sop_instance_uid]
                row.state, row.next_attempt_at = DeliveryState.PENDING.value, now
                row.commit_transaction_uid = row.commit_requested_at = None
                row.last_status = reason
                row.last_error = f"storage commitment failed: {failure_text(reason)}; re-queued"
                commitment_failures.labels(destination=row.destination).inc()
                job = session.get(Job, row.job_id, with_for_update=True)
                if job is not None and job.state == JobState.DELIVERED.value:  # settled again once re-sent
                    set_job_state(session, job, JobState.RESULTS_READY)
                audit(session, "delivery.commit_failed", level=logging.WARNING, destination=row.destination,
                      reason=failure_text(reason), transaction=transaction_uid, **common)
                n_failed += 1
        if not rows:
            audit(session, "commitment.unknown_transaction", level=logging.WARNING, peer=peer,
                  transaction=transaction_uid)
    return ReportOutcome(n_ok, n_failed, not rows)


def _uids(items: Any) -> list[str]:
    return [str(item.ReferencedSOPInstanceUID) for item in items or [] if "ReferencedSOPInstanceUID" in item]


def event_report_handler(session_factory: sessionmaker[Session]) -> Callable[[Any], tuple[int, Dataset | None]]:
    """A pynetdicom ``EVT_N_EVENT_REPORT`` handler that applies Storage Commitment reports."""

    def handle(event: Any) -> tuple[int, Dataset | None]:
        request = event.request
        if str(request.AffectedSOPClassUID) != STORAGE_COMMITMENT_PUSH:
            return STATUS_NO_SUCH_SOP_CLASS, None
        try:
            info = event.event_information
            transaction = str(info.TransactionUID)
            failed = {str(item.ReferencedSOPInstanceUID): int(item.get("FailureReason", 0x0110))
                      for item in info.get("FailedSOPSequence", []) or []}
        except (AttributeError, KeyError, ValueError, TypeError):
            return STATUS_INVALID_ARGUMENT, None
        req = event.assoc.requestor if event.assoc.is_acceptor else event.assoc.acceptor
        record_report(session_factory, transaction, _uids(info.get("ReferencedSOPSequence")), failed,
                      peer=str(req.ae_title).strip())
        return STATUS_SUCCESS, None

    return handle


# -- requests --------------------------------------------------------------------------------------------------
def commitment_request(transaction_uid: str, objects: Iterable[tuple[str, str]]) -> Dataset:
    """The N-ACTION Action Information: Transaction UID and (SOP Class, SOP Instance) of each object."""
    ds = Dataset()
    ds.TransactionUID = transaction_uid
    ds.ReferencedSOPSequence = []
    for sop_class, sop_instance in objects:
        item = Dataset()
        item.ReferencedSOPClassUID, item.ReferencedSOPInstanceUID = sop_class, sop_instance
        ds.ReferencedSOPSequence.append(item)
    return ds


def request_commitment(peer: Peer, transaction_uid: str, objects: list[tuple[str, str]],
                       on_report: Callable[[Any], tuple[int, Dataset | None]] | None = None,
                       report_wait: float | None = None) -> int:
    """Send one N-ACTION; returns its status. ScuError when there is no association or no answer.

    With ``on_report`` the association stays open up to ``report_wait`` seconds after a successful N-ACTION, for a
    peer that sends its N-EVENT-REPORT on the same association (most, Orthanc included, open a new one)."""
    report_wait = SAME_ASSOCIATION_WAIT_SECONDS if report_wait is None else report_wait
    ae = requestor_ae(peer)
    ae.add_requested_context(STORAGE_COMMITMENT_PUSH)
    assoc = associate(ae, peer)
    reported = threading.Event()
    if on_report is not None:
        def handle(event: Any) -> tuple[int, Dataset | None]:
            try:
                return on_report(event)
            finally:
                reported.set()

        assoc.bind(evt.EVT_N_EVENT_REPORT, handle)
    try:
        status, _reply = assoc.send_n_action(commitment_request(transaction_uid, objects), REQUEST_COMMITMENT,
                                             STORAGE_COMMITMENT_PUSH, STORAGE_COMMITMENT_INSTANCE)
        if on_report is not None and status.get("Status") == STATUS_SUCCESS and report_wait > 0:
            reported.wait(report_wait)
    finally:
        close(assoc)
    if "Status" not in status:
        raise ScuError(f"{peer}: no N-ACTION response")
    return int(status.Status)


class Committer:
    """``run_once()`` asks every commitment destination about its delivered objects and times out silent
    requests; ``start()``/``stop()`` run it in a background thread."""

    def __init__(self, config: NodeConfig, session_factory: sessionmaker[Session],
                 poll_seconds: float | None = None, association_timeout: float = 30.0) -> None:
        self.config = config
        self.session_factory = session_factory
        self.poll_seconds = poll_seconds or config.processing.poll_seconds
        self.association_timeout = association_timeout
        self.destinations = commitment_targets(config)
        self._loop = BackgroundLoop("commitment", self.run_once, self.poll_seconds, LOG)
        self._on_report = event_report_handler(session_factory)

    def run_once(self) -> int:
        """Returns the number of objects asked about."""
        asked = 0
        for destination in self.destinations:
            self.expire(destination)
            asked += self.ask(destination)
        return asked

    def expire(self, destination: DimseDestination, now: dt.datetime | None = None) -> int:
        """Requests older than the timeout: count, record, forget the transaction (the objects are asked again)."""
        now = now or utcnow()
        cutoff = now - dt.timedelta(seconds=destination.commitment_timeout_seconds)
        with self.session_factory.begin() as session:
            rows = list(session.scalars(select(Delivery).where(
                Delivery.destination == destination.name, Delivery.state == DeliveryState.SENT.value,
                Delivery.commit_transaction_uid.is_not(None), Delivery.commit_requested_at < cutoff)
                .with_for_update()))
            for row in rows:
                row.commit_timeouts += 1
                row.last_error = (f"storage commitment: no report within {destination.commitment_timeout_seconds:g} s "
                                  f"({row.commit_timeouts} time(s)); asked again")
                audit(session, "delivery.commit_timeout", level=logging.WARNING, destination=destination.name,
                      sop_instance_uid=row.sop_instance_uid, job_id=row.job_id,
                      transaction=row.commit_transaction_uid)
                row.commit_transaction_uid = None
        if rows:
            commitment_timeouts.labels(destination=destination.name).inc(len(rows))
        return len(rows)

    def ask(self, destination: DimseDestination) -> int:
        """One N-ACTION for up to ``BATCH`` delivered objects not yet asked about; returns how many."""
        now = utcnow()
        retry_after = now - dt.timedelta(seconds=destination.retry.initial_seconds)
        transaction = generate_uid()
        with self.session_factory.begin() as session:
            rows = list(session.scalars(select(Delivery).where(
                Delivery.destination == destination.name, Delivery.state == DeliveryState.SENT.value,
                Delivery.commit_transaction_uid.is_(None),
                (Delivery.commit_requested_at.is_(None)) | (Delivery.commit_requested_at < retry_after))
                .order_by(Delivery.id).limit(BATCH).with_for_update(skip_locked=True)))
            objects = [(r.sop_class_uid or '', r.sop_instance_uid or '') for r in rows]
            for row in rows:  # recorded before the request: a report may come before send_n_action returns
                row.commit_transaction_uid, row.commit_requested_at = transaction, now
        if not rows:
            return 0
        peer = destination.peer(self.config.node.ae_title, self.association_timeout)
        try:
            status = request_commitment(peer, transaction, objects, on_report=self._on_report)
            error = None if status == STATUS_SUCCESS else f"N-ACTION status 0x{status:04X}"
        except ScuError as exc:
            error = str(exc)
        except Exception as exc:  # any failure: asked again after a delay
            LOG.exception("storage commitment request failed")
            error = f"{type(exc).__name__}: {exc}"
        if error is not None:
            with self.session_factory.begin() as session:
                for row in session.scalars(select(Delivery).where(Delivery.commit_transaction_uid == transaction,
                                                                  Delivery.state == DeliveryState.SENT.value)):
                    row.commit_transaction_uid = None
                    row.last_error = f"storage commitment request failed: {error}"
            log_event(LOG, logging.WARNING, "storage commitment request failed", destination=destination.name,
                      objects=len(objects), error=error)
            return 0
        log_event(LOG, logging.INFO, "storage commitment requested", destination=destination.name,
                  objects=len(objects), transaction=transaction)
        return len(objects)

    def start(self) -> None:
        if self.destinations:
            self._loop.start()

    def stop(self, timeout: float | None = None) -> None:
        self._loop.stop(timeout)


# -- what others ask -------------------------------------------------------------------------------------------
def uncommitted_deliveries(session: Session, study_id: int, destinations: Iterable[str]) -> int:
    """Deliveries of the study's jobs to commitment ``destinations`` that are not COMMITTED yet."""
    names = list(destinations)
    if not names:
        return 0
    return int(session.scalar(
        select(func.count(Delivery.id)).join(Job, Job.id == Delivery.job_id)
        .where(Job.study_id == study_id, Delivery.destination.in_(names),
               Delivery.state != DeliveryState.COMMITTED.value)) or 0)


def commitment_targets(config: NodeConfig) -> list[DimseDestination]:
    """The DIMSE destinations that ask for Storage Commitment."""
    return [d for d in config.destinations if isinstance(d, DimseDestination) and d.storage_commitment]


def commitment_destinations(config: NodeConfig) -> list[str]:
    return [d.name for d in commitment_targets(config)]


def commitment_summary(session: Session, destinations: Iterable[str]) -> dict[str, dict[str, int]]:
    """Per commitment destination: objects committed, pending commitment (sent, no report yet) and, of those, the
    ones whose request went unanswered at least once (timed out)."""
    out = {name: {"committed": 0, "pending_commitment": 0, "timed_out": 0} for name in destinations}
    if not out:
        return out
    rows = session.execute(
        select(Delivery.destination, Delivery.state, Delivery.commit_timeouts > 0, func.count(Delivery.id))
        .where(Delivery.destination.in_(list(out)),
               Delivery.state.in_([DeliveryState.SENT.value, DeliveryState.COMMITTED.value]))
        .group_by(Delivery.destination, Delivery.state, Delivery.commit_timeouts > 0)).all()
    for destination, state, timed_out, count in rows:
        entry = out[destination]
        if state == DeliveryState.COMMITTED.value:
            entry["committed"] += count
        else:
            entry["pending_commitment"] += count
            if timed_out:
                entry["timed_out"] += count
    return out
