"""The node's state in numbers, for ``cxr-node status`` and the dashboard: counts by state, the latest failures and
Storage Commitment per destination."""
from __future__ import annotations

from typing import Any

from sqlalchemy import func, select
from sqlalchemy.orm import Session, sessionmaker

from dicomnode.commitment import commitment_summary
from dicomnode.db import Delivery, Instance, Job, Study
from dicomnode.db.states import JobState


def status_summary(session_factory: sessionmaker[Session],
                   commitment_destinations: list[str] | None = None) -> dict[str, Any]:
    """Counts of studies, jobs and deliveries by state, the latest failures, and per Storage Commitment
    destination the objects committed / pending commitment / timed out."""
    with session_factory() as s:
        def by_state(model: type[Study] | type[Job] | type[Delivery]) -> dict[str, int]:
            return {k: v for k, v in s.execute(select(model.state, func.count()).group_by(model.state))}

        failed = s.execute(
            select(Job.id, Study.study_instance_uid, Job.generation, Job.error)
            .join(Study, Study.id == Job.study_id).where(Job.state == JobState.FAILED.value)
            .order_by(Job.updated_at.desc()).limit(10)
        ).all()
        return {
            "studies": by_state(Study),
            "jobs": by_state(Job),
            "deliveries": by_state(Delivery),
            "instances": int(s.scalar(select(func.count()).select_from(Instance)) or 0),
            "queue_depth": int(s.scalar(select(func.count()).select_from(Job)
                                        .where(Job.state == JobState.QUEUED.value)) or 0),
            "failed_jobs": [{"job": j, "study": u, "generation": g, "error": e} for j, u, g, e in failed],
            "commitment": commitment_summary(s, commitment_destinations or []),
        }
