"""One inbound message in, one acknowledgement out: validate, store durably, then answer.

Every message that arrived whole is stored (``feedback_messages``), the ones refused too, with the reason; an ``AA``
is sent only after the transaction that stored the message has committed. ``AE``: malformed, or not stored (the
sender should correct it or send it again); ``AR``: a sender that is not allowed or a message type this receiver
never takes. A report whose accession number matches no study yet is stored and answered ``AA`` with a warning
(ERR 204): it is matched when the study arrives (see :mod:`dicomnode.feedback.matching` for why not ``AE``). A
message sent again (same sending application, facility and control id) is answered ``AA`` and not stored twice.
Logs and audit rows name the message id, control id and sender, never the patient or the accession number.
"""
from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass

from sqlalchemy import select
from sqlalchemy.exc import IntegrityError, SQLAlchemyError
from sqlalchemy.orm import Session, sessionmaker

from dicomnode import metrics
from dicomnode.audit import audit, audit_now
from dicomnode.config import FeedbackSection
from dicomnode.db.engine import error_summary
from dicomnode.db.models import FeedbackMessage, Study, utcnow
from dicomnode.feedback.oru import (
    ACCEPT,
    APPLICATION_INTERNAL_ERROR,
    ERROR,
    REJECT,
    Header,
    Refusal,
    Report,
    acknowledgement,
    decode,
    parse_header,
    parse_report,
)
from dicomnode.feedback.states import MessageState
from dicomnode.logs import log_event

LOG = logging.getLogger("dicomnode.feedback")
UNKNOWN_KEY = "204"  # HL7 table 0357: unknown key identifier (the accession number)


@dataclass(frozen=True)
class Answer:
    """What the sender is answered, and what became of the message."""

    ack: str  # the ACK message (HL7 text)
    code: str  # AA, AE, AR
    state: str  # a MessageState, or "duplicate" / "not_stored"
    message_id: int | None


class Intake:
    """Takes the messages of every connection of the feedback listener (thread-safe: one transaction each)."""

    def __init__(self, config: FeedbackSection, session_factory: sessionmaker[Session],
                 on_stored: Callable[[], None] | None = None) -> None:
        self.config = config
        self.session_factory = session_factory
        self.on_stored = on_stored  # wakes the match pass

    def handle(self, payload: bytes, peer: str) -> Answer:
        """Validate, store and answer one message (the MLLP payload)."""
        try:
            text = decode(payload)
        except Refusal as refusal:  # the header is ASCII: read as ISO 8859-1 for the ACK to name the message
            text = payload.decode("latin-1").replace("\r\n", "\r").replace("\n", "\r")
            return self._refuse(text, parse_header(text)[1], refusal, peer, MessageState.REJECTED)
        message, header = parse_header(text)
        if message is not None:
            not_allowed = self._sender_not_allowed(header)
            if not_allowed:
                return self._refuse(text, header, Refusal(REJECT, APPLICATION_INTERNAL_ERROR, not_allowed), peer,
                                    MessageState.REFUSED)
        try:
            report = parse_report(text, self.config.accession_fields)
        except Refusal as refusal:
            return self._refuse(text, header, refusal, peer, MessageState.REJECTED)
        return self._store(text, report, peer)

    def _sender_not_allowed(self, header: Header) -> str | None:
        apps, facilities = self.config.allowed_sending_applications, self.config.allowed_sending_facilities
        if apps and header.sending_application not in apps:
            return (f"sending application {header.sending_application or '(empty)'} (MSH-3) is not in "
                    f"feedback.allowed_sending_applications")
        if facilities and header.sending_facility not in facilities:
            return (f"sending facility {header.sending_facility or '(empty)'} (MSH-4) is not in "
                    f"feedback.allowed_sending_facilities")
        return None

    # -- accepted --------------------------------------------------------------------------------------------
    def _store(self, text: str, report: Report, peer: str) -> Answer:
        header = report.header
        key = "|".join((header.sending_application, header.sending_facility, header.control_id))[:600]
        final = report.result_status in self.config.final_statuses
        try:
            with self.session_factory.begin() as session:
                existing = session.scalar(select(FeedbackMessage.id).where(FeedbackMessage.dedup_key == key))
                if existing is not None:
                    return self._duplicate(session, header, existing, peer)
                studies = session.scalar(select(Study.id).where(Study.accession_number == report.accession_number)
                                         .limit(1))
                state = (MessageState.NOT_FINAL if not final
                         else MessageState.RECEIVED if studies is not None else MessageState.UNMATCHED)
                reason = {MessageState.NOT_FINAL: f"result status {report.result_status or '(empty)'} (OBR-25) is not "
                                                  f"one of feedback.final_statuses",
                          MessageState.UNMATCHED: "no study with this accession number yet"}.get(state)
                row = FeedbackMessage(
                    received_at=utcnow(), peer=peer[:128], sending_application=header.sending_application[:180],
                    sending_facility=header.sending_facility[:180], control_id=header.control_id[:199],
                    dedup_key=key, message_type=header.message_type[:32], accession_number=report.accession_number,
                    result_status=report.result_status[:8], raw=text, ack_code=ACCEPT, state=state.value,
                    reason=reason)
                session.add(row)
                session.flush()
                audit(session, "feedback.received", peer=peer, message_id=row.id, control_id=header.control_id,
                      sending_application=header.sending_application, state=state.value,
                      accession_field=report.accession_field)
                message_id = row.id
        except IntegrityError:  # the same message on two connections at once: the other one stored it
            return self._answer(header, ACCEPT, "duplicate", None, "already stored (sent twice)")
        except SQLAlchemyError as exc:
            log_event(LOG, logging.ERROR, "feedback message not stored: database error", peer=peer,
                      control_id=header.control_id, error=error_summary(exc))
            return self._answer(header, ERROR, "not_stored", None,
                                "not stored: the receiver's database is unavailable; send it again",
                                APPLICATION_INTERNAL_ERROR)
        if self.on_stored is not None:
            self.on_stored()
        if state is MessageState.UNMATCHED:
            return self._answer(header, ACCEPT, state.value, message_id,
                                "stored; no study with this accession number yet (matched when it arrives)",
                                UNKNOWN_KEY, severity="W")
        if state is MessageState.NOT_FINAL:
            return self._answer(header, ACCEPT, state.value, message_id,
                                f"stored; result status {report.result_status or '(empty)'} is not compared")
        return self._answer(header, ACCEPT, state.value, message_id, "stored")

    def _duplicate(self, session: Session, header: Header, existing: int, peer: str) -> Answer:
        audit(session, "feedback.duplicate", peer=peer, message_id=existing, control_id=header.control_id,
              sending_application=header.sending_application)
        return self._answer(header, ACCEPT, "duplicate", existing, f"already stored (message {existing})")

    # -- refused ---------------------------------------------------------------------------------------------
    def _refuse(self, text: str, header: Header, refusal: Refusal, peer: str, state: MessageState) -> Answer:
        """Store the refused message with its reason (best effort: the refusal is answered either way)."""
        kind = "feedback.refused" if state is MessageState.REFUSED else "feedback.rejected"
        message_id = None
        try:
            with self.session_factory.begin() as session:
                row = FeedbackMessage(
                    received_at=utcnow(), peer=peer[:128], sending_application=header.sending_application[:180] or None,
                    sending_facility=header.sending_facility[:180] or None,
                    control_id=header.control_id[:199] or None, message_type=header.message_type[:32] or None,
                    raw=text, ack_code=refusal.ack, state=state.value, reason=refusal.reason)
                session.add(row)
                session.flush()
                message_id = row.id
                audit(session, kind, peer=peer, level=logging.WARNING, message_id=message_id,
                      control_id=header.control_id or None, sending_application=header.sending_application or None,
                      ack=refusal.ack, reason=refusal.reason)
        except SQLAlchemyError as exc:
            log_event(LOG, logging.ERROR, "refused feedback message not stored: database error", peer=peer,
                      error=error_summary(exc))
            audit_now(self.session_factory, kind, peer=peer, level=logging.WARNING, ack=refusal.ack,
                      reason=refusal.reason, stored=False)
        return self._answer(header, refusal.ack, state.value, message_id, refusal.reason, refusal.code)

    def _answer(self, header: Header, code: str, state: str, message_id: int | None, text: str,
                error_code: str | None = None, severity: str = "E") -> Answer:
        metrics.feedback_messages.labels(ack=code).inc()
        ack = acknowledgement(header, code, text, application=self.config.application,
                              facility=self.config.facility, error_code=error_code, severity=severity)
        return Answer(ack, code, state, message_id)
