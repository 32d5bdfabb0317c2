"""Audit trail: a row in audit_events plus a structured log line per event. Never patient name or ID."""
from __future__ import annotations

import logging
from typing import Any

from sqlalchemy import insert
from sqlalchemy.orm import Session, sessionmaker

from dicomnode.db.models import AuditEvent, utcnow
from dicomnode.logs import log_event

LOG = logging.getLogger("dicomnode.audit")
_INSERT = insert(AuditEvent.metadata.tables[AuditEvent.__tablename__])  # a Core insert: no ORM unit of work


def _trim(value: str | None, n: int) -> str | None:
    return None if value is None else str(value)[:n]


def audit(
    session: Session,
    kind: str,
    *,
    calling_aet: str | None = None,
    called_aet: str | None = None,
    peer: str | None = None,
    study_instance_uid: str | None = None,
    sop_instance_uid: str | None = None,
    job_id: int | None = None,
    level: int = logging.INFO,
    **detail: Any,
) -> None:
    """Insert an audit row in ``session``'s transaction (committed by the caller) and log it."""
    session.connection().execute(_INSERT, {
        "at": utcnow(),
        "kind": kind,
        "calling_aet": _trim(calling_aet, 16),
        "called_aet": _trim(called_aet, 16),
        "peer": _trim(peer, 128),
        "study_instance_uid": _trim(study_instance_uid, 64),
        "sop_instance_uid": _trim(sop_instance_uid, 64),
        "job_id": job_id,
        "detail": {k: v for k, v in detail.items() if v is not None} or None,
    })
    log_event(
        LOG, level, kind, calling_aet=calling_aet, called_aet=called_aet, peer=peer,
        study_instance_uid=study_instance_uid, sop_instance_uid=sop_instance_uid, job_id=job_id, **detail,
    )


def audit_now(session_factory: sessionmaker[Session], kind: str, **fields: Any) -> None:
    """Record one audit event in its own transaction; failures are logged, never raised."""
    try:
        with session_factory.begin() as session:
            audit(session, kind, **fields)
    except Exception:  # auditing must not break the caller
        LOG.exception("audit write failed", extra={"fields": {"kind": kind}})
