"""The node's record of a job's triage (``inference.triage``): when a job's results are stored, the priority its
reasoning record raises under the config's ``triage.rules`` goes onto the job and, for the study's newest job,
the study (the dashboard's column and filter), into the audit trail when raised, and into the metric
``cxrnode_triage_total{priority}``. The SR, the pages and the HL7 / FHIR messages ask the same function of the same
record and rules, so every place shows the same priority."""
from __future__ import annotations

import logging

from pydantic import ValidationError
from sqlalchemy import update
from sqlalchemy.orm import Session

from dicomnode import metrics
from dicomnode.audit import audit
from dicomnode.db.models import Job, Study
from dicomnode.jobs import newest_job
from inference.record import ReasoningRecord
from inference.triage import Triage, TriageRule, assess_record


def record_triage(session: Session, job: Job, record_json: str | None, rules: tuple[TriageRule, ...],
                  study_instance_uid: str | None = None) -> Triage | None:
    """Assess the job's record and store the priority on the job (and its study when newest); None (nothing
    stored) when the job has no reasoning record."""
    if record_json is None:
        return None
    try:
        record = ReasoningRecord.from_json(record_json)
    except ValidationError:
        return None  # a processor's own record (not a reasoning record): nothing to assess
    triage = assess_record(record, rules)
    job.triage_priority = triage.priority.value
    job.triage_reason = triage.because() or None
    newest = newest_job(session, job.study_id)
    if newest is None or newest.id == job.id:
        session.execute(update(Study).where(Study.id == job.study_id).values(triage_priority=triage.priority.value))
    metrics.triage_assessed.labels(triage.priority.value).inc()
    if triage.raised:
        audit(session, "job.triage", level=logging.WARNING, study_instance_uid=study_instance_uid, job_id=job.id,
              priority=triage.priority.value, reason=triage.because())
    return triage
