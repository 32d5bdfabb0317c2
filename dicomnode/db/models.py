"""SQLAlchemy 2 declarative models of the node's state (see dicomnode/db/migrations for the schema history).

Times are stored as naive UTC and returned as timezone-aware UTC (``UTCDateTime``); use :func:`utcnow`.
Audit rows never carry patient name or ID.
"""
from __future__ import annotations

import datetime as dt
from typing import Any

from sqlalchemy import (
    JSON,
    BigInteger,
    Boolean,
    DateTime,
    ForeignKey,
    Index,
    Integer,
    String,
    Text,
    TypeDecorator,
    UniqueConstraint,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column, relationship

from dicomnode.db.states import DeliveryState, JobState


def utcnow() -> dt.datetime:
    """Now, timezone-aware UTC."""
    return dt.datetime.now(dt.UTC)


class UTCDateTime(TypeDecorator[dt.datetime]):
    """Stores naive UTC, returns aware UTC; naive inputs are taken as UTC."""

    impl = DateTime
    cache_ok = True

    def process_bind_param(self, value: dt.datetime | None, dialect: Any) -> dt.datetime | None:
        if value is None:
            return None
        if value.tzinfo is not None:
            value = value.astimezone(dt.UTC).replace(tzinfo=None)
        return value

    def process_result_value(self, value: dt.datetime | None, dialect: Any) -> dt.datetime | None:
        if value is None:
            return None
        return value.replace(tzinfo=dt.UTC)


class Base(DeclarativeBase):
    pass


class Study(Base):
    __tablename__ = "studies"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    study_instance_uid: Mapped[str] = mapped_column(String(64), unique=True)
    state: Mapped[str] = mapped_column(String(16), default=JobState.RECEIVING.value, index=True)
    state_reason: Mapped[str | None] = mapped_column(Text, nullable=True)
    patient_id: Mapped[str | None] = mapped_column(String(64), nullable=True)
    accession_number: Mapped[str | None] = mapped_column(String(64), nullable=True, index=True)
    first_received_at: Mapped[dt.datetime] = mapped_column(UTCDateTime, default=utcnow)
    last_received_at: Mapped[dt.datetime] = mapped_column(UTCDateTime, default=utcnow)
    instance_count: Mapped[int] = mapped_column(Integer, default=0)
    selected_count: Mapped[int] = mapped_column(Integer, default=0)
    generation: Mapped[int] = mapped_column(Integer, default=1)
    # the triage priority of its newest results (routine, urgent, stat; NULL: none assessed), dicomnode/triage.py
    triage_priority: Mapped[str | None] = mapped_column(String(16), nullable=True, index=True)

    instances: Mapped[list[Instance]] = relationship(back_populates="study", lazy="raise_on_sql")
    jobs: Mapped[list[Job]] = relationship(back_populates="study", lazy="raise_on_sql")


class Instance(Base):
    __tablename__ = "instances"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    study_id: Mapped[int] = mapped_column(ForeignKey("studies.id"), index=True)
    sop_instance_uid: Mapped[str] = mapped_column(String(64), unique=True)
    sop_class_uid: Mapped[str] = mapped_column(String(64))
    series_instance_uid: Mapped[str] = mapped_column(String(64))
    transfer_syntax_uid: Mapped[str | None] = mapped_column(String(64), nullable=True)
    modality: Mapped[str | None] = mapped_column(String(16), nullable=True)
    body_part: Mapped[str | None] = mapped_column(String(64), nullable=True)
    view_position: Mapped[str | None] = mapped_column(String(16), nullable=True)
    path: Mapped[str] = mapped_column(Text)
    size_bytes: Mapped[int] = mapped_column(BigInteger, default=0)
    selected: Mapped[bool] = mapped_column(Boolean, default=False)
    skip_reason: Mapped[str | None] = mapped_column(Text, nullable=True)
    calling_aet: Mapped[str | None] = mapped_column(String(16), nullable=True)
    received_at: Mapped[dt.datetime] = mapped_column(UTCDateTime, default=utcnow)
    generation: Mapped[int] = mapped_column(Integer, default=1)

    study: Mapped[Study] = relationship(back_populates="instances", lazy="raise_on_sql")


class Job(Base):
    __tablename__ = "jobs"
    __table_args__ = (
        UniqueConstraint("study_id", "generation", name="uq_jobs_study_generation"),
        Index("ix_jobs_state_queued_at", "state", "queued_at"),
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    study_id: Mapped[int] = mapped_column(ForeignKey("studies.id"), index=True)
    generation: Mapped[int] = mapped_column(Integer, default=1)
    state: Mapped[str] = mapped_column(String(16), default=JobState.RECEIVING.value)
    error: Mapped[str | None] = mapped_column(Text, nullable=True)
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    created_at: Mapped[dt.datetime] = mapped_column(UTCDateTime, default=utcnow)
    updated_at: Mapped[dt.datetime] = mapped_column(UTCDateTime, default=utcnow, onupdate=utcnow)
    queued_at: Mapped[dt.datetime | None] = mapped_column(UTCDateTime, nullable=True)
    claimed_by: Mapped[str | None] = mapped_column(String(128), nullable=True)
    claimed_at: Mapped[dt.datetime | None] = mapped_column(UTCDateTime, nullable=True)
    finished_at: Mapped[dt.datetime | None] = mapped_column(UTCDateTime, nullable=True)
    record_path: Mapped[str | None] = mapped_column(Text, nullable=True)
    predecessor_job_id: Mapped[int | None] = mapped_column(ForeignKey("jobs.id"), nullable=True)
    triage_priority: Mapped[str | None] = mapped_column(String(16), nullable=True)  # NULL: no reasoning record
    triage_reason: Mapped[str | None] = mapped_column(Text, nullable=True)  # "Pneumothorax present", no patient data

    study: Mapped[Study] = relationship(back_populates="jobs", lazy="raise_on_sql")


def _sop_instance_uid(context: Any) -> str | None:
    """The payload key of a DICOM object is its SOP Instance UID."""
    return context.get_current_parameters().get("sop_instance_uid")


class Delivery(Base):
    __tablename__ = "deliveries"
    __table_args__ = (
        UniqueConstraint("destination", "payload_key", name="uq_deliveries_destination_payload"),
        Index("ix_deliveries_state_next", "state", "next_attempt_at"),
        Index("ix_deliveries_sop_instance_uid", "sop_instance_uid"),  # loop guard: "did this node write it?"
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    job_id: Mapped[int] = mapped_column(ForeignKey("jobs.id"), index=True)
    destination: Mapped[str] = mapped_column(String(64))
    object_kind: Mapped[str] = mapped_column(String(16))  # a result kind (sr, sc) or a message kind (hl7, ...)
    # what the destination is never queued twice: a DICOM object's SOP Instance UID, a message's id
    payload_key: Mapped[str] = mapped_column(String(128), default=_sop_instance_uid)
    media_type: Mapped[str] = mapped_column(String(64), default="application/dicom",
                                            server_default="application/dicom")
    sop_instance_uid: Mapped[str | None] = mapped_column(String(64), nullable=True)  # DICOM objects only
    sop_class_uid: Mapped[str | None] = mapped_column(String(64), nullable=True)
    path: Mapped[str] = mapped_column(Text)  # the payload's file, relative to data_dir
    state: Mapped[str] = mapped_column(String(16), default=DeliveryState.PENDING.value)
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    next_attempt_at: Mapped[dt.datetime] = mapped_column(UTCDateTime, default=utcnow)
    last_status: Mapped[int | None] = mapped_column(Integer, nullable=True)
    last_error: Mapped[str | None] = mapped_column(Text, nullable=True)
    sent_at: Mapped[dt.datetime | None] = mapped_column(UTCDateTime, nullable=True)
    # Storage Commitment (dicomnode.commitment): the open request's Transaction UID and when it was sent, when the
    # peer reported the object committed, and how many requests went unanswered
    commit_transaction_uid: Mapped[str | None] = mapped_column(String(64), nullable=True, index=True)
    commit_requested_at: Mapped[dt.datetime | None] = mapped_column(UTCDateTime, nullable=True)
    committed_at: Mapped[dt.datetime | None] = mapped_column(UTCDateTime, nullable=True)
    commit_timeouts: Mapped[int] = mapped_column(Integer, default=0, server_default="0")


class PerformedProcedureStep(Base):
    """A Modality Performed Procedure Step the node was sent (MPPS SCP, dicomnode.mpps)."""

    __tablename__ = "performed_procedure_steps"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    sop_instance_uid: Mapped[str] = mapped_column(String(64), unique=True)
    status: Mapped[str] = mapped_column(String(16))  # IN PROGRESS, COMPLETED, DISCONTINUED
    study_instance_uid: Mapped[str | None] = mapped_column(String(64), nullable=True, index=True)
    instance_uids: Mapped[list[str] | None] = mapped_column(JSON, nullable=True)  # the images it lists
    reason: Mapped[str | None] = mapped_column(Text, nullable=True)  # discontinuation reason
    calling_aet: Mapped[str | None] = mapped_column(String(16), nullable=True)
    created_at: Mapped[dt.datetime] = mapped_column(UTCDateTime, default=utcnow)
    updated_at: Mapped[dt.datetime] = mapped_column(UTCDateTime, default=utcnow)
    # when the study was queued (or skipped) because of this step; NULL while it waits for listed instances
    acted_at: Mapped[dt.datetime | None] = mapped_column(UTCDateTime, nullable=True)


class AuditEvent(Base):
    __tablename__ = "audit_events"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    at: Mapped[dt.datetime] = mapped_column(UTCDateTime, default=utcnow, index=True)
    kind: Mapped[str] = mapped_column(String(64), index=True)
    calling_aet: Mapped[str | None] = mapped_column(String(16), nullable=True)
    called_aet: Mapped[str | None] = mapped_column(String(16), nullable=True)
    peer: Mapped[str | None] = mapped_column(String(128), nullable=True)
    study_instance_uid: Mapped[str | None] = mapped_column(String(64), nullable=True)
    sop_instance_uid: Mapped[str | None] = mapped_column(String(64), nullable=True)
    job_id: Mapped[int | None] = mapped_column(Integer, nullable=True)
    detail: Mapped[dict[str, Any] | None] = mapped_column(JSON, nullable=True)


class FeedbackMessage(Base):
    """An HL7 v2 message the feedback listener received (dicomnode.feedback), stored before it is acknowledged.

    ``raw`` is the whole message as received (it holds patient data, like the spool). ``dedup_key`` is set for
    accepted messages only (sending application, facility and control id): a message sent again is not stored
    twice."""

    __tablename__ = "feedback_messages"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    received_at: Mapped[dt.datetime] = mapped_column(UTCDateTime, default=utcnow, index=True)
    peer: Mapped[str | None] = mapped_column(String(128), nullable=True)
    sending_application: Mapped[str | None] = mapped_column(String(180), nullable=True)
    sending_facility: Mapped[str | None] = mapped_column(String(180), nullable=True)
    control_id: Mapped[str | None] = mapped_column(String(199), nullable=True)
    dedup_key: Mapped[str | None] = mapped_column(String(600), nullable=True, unique=True)
    message_type: Mapped[str | None] = mapped_column(String(32), nullable=True)
    accession_number: Mapped[str | None] = mapped_column(String(64), nullable=True, index=True)
    result_status: Mapped[str | None] = mapped_column(String(8), nullable=True)
    raw: Mapped[str] = mapped_column(Text)
    ack_code: Mapped[str] = mapped_column(String(2))  # AA, AE, AR: what the sender was answered
    state: Mapped[str] = mapped_column(String(24), index=True)  # dicomnode.feedback.states.MessageState
    reason: Mapped[str | None] = mapped_column(Text, nullable=True)  # why refused, rejected, unmatched, not compared
    study_id: Mapped[int | None] = mapped_column(ForeignKey("studies.id"), nullable=True, index=True)
    job_id: Mapped[int | None] = mapped_column(ForeignKey("jobs.id"), nullable=True)
    compared_at: Mapped[dt.datetime | None] = mapped_column(UTCDateTime, nullable=True)


class FeedbackVerdict(Base):
    """One finding of one compared report: the radiologist's verdict, the node's answer, and whether they agree.
    The node's side is copied from the job's record when the report is compared (retention may delete the record
    later)."""

    __tablename__ = "feedback_verdicts"
    __table_args__ = (
        UniqueConstraint("message_id", "finding", name="uq_feedback_verdicts_message_finding"),
        Index("ix_feedback_verdicts_finding_reported", "finding", "reported_at"),
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    message_id: Mapped[int] = mapped_column(ForeignKey("feedback_messages.id"), index=True)
    study_id: Mapped[int] = mapped_column(ForeignKey("studies.id"), index=True)
    job_id: Mapped[int] = mapped_column(ForeignKey("jobs.id"))
    finding: Mapped[str] = mapped_column(String(64))
    radiologist: Mapped[str] = mapped_column(String(16))  # present, absent, uncertain, not_mentioned
    model: Mapped[str | None] = mapped_column(String(16), nullable=True)  # present, absent, uncertain; None: no answer
    agreement: Mapped[str] = mapped_column(String(16))  # agree, disagree, uncertain, not_compared
    model_name: Mapped[str] = mapped_column(String(128))
    model_version: Mapped[str] = mapped_column(String(80))
    evidence: Mapped[str | None] = mapped_column(Text, nullable=True)  # the report sentence that decided it
    reported_at: Mapped[dt.datetime] = mapped_column(UTCDateTime)  # when the report was received
