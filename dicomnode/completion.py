"""Per-study completion: a study is complete once its sender has been silent for ``quiet_seconds`` (apscheduler
timers).

Silence is the sender's: while an association that stored an instance of the study is still open, the study stays
open however long the node takes between commits (:meth:`CompletionScheduler.hold`); when it closes, the quiet
period starts from then (:meth:`CompletionScheduler.release`). At the deadline the newest RECEIVING job becomes
QUEUED, or SKIPPED with a reason when no instance of the study is selected. Start-up recovery: RECEIVING studies
wait a full quiet period from when the listener accepts again, so a modality that resends after the node came
back lands in the same generation (:meth:`CompletionScheduler.rearm_all`). Job state changes are
:mod:`dicomnode.jobs`'s.
"""
from __future__ import annotations

import datetime as dt
import logging
import threading
from collections import Counter
from collections.abc import Callable

from apscheduler.schedulers.background import BackgroundScheduler
from apscheduler.triggers.date import DateTrigger
from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from dicomnode.audit import audit
from dicomnode.db.models import Instance, Job, Study, utcnow
from dicomnode.db.states import JobState
from dicomnode.jobs import newest_job, set_job_state
from dicomnode.selection import study_skip_reason

LOG = logging.getLogger("dicomnode.completion")


def complete_study(session: Session, study_id: int, quiet_seconds: float, now: dt.datetime) -> dt.datetime | None:
    """Close the study's RECEIVING job if it has been quiet long enough.

    Returns None when done (or nothing to do), else the later deadline to re-arm (a new instance came in).
    """
    study = session.scalar(select(Study).where(Study.id == study_id).with_for_update())
    if study is None:
        return None
    job = newest_job(session, study.id, for_update=True)
    if job is None or job.state != JobState.RECEIVING.value:
        return None
    deadline = study.last_received_at + dt.timedelta(seconds=quiet_seconds)
    if deadline > now + dt.timedelta(milliseconds=5):
        return deadline
    if study.selected_count > 0:
        job.queued_at = now
        reason = None
        set_job_state(session, job, JobState.QUEUED, now=now)
    else:
        reasons = Counter(
            r or "unknown"
            for r in session.scalars(select(Instance.skip_reason).where(Instance.study_id == study.id))
        )
        reason = study_skip_reason(dict(reasons))
        set_job_state(session, job, JobState.SKIPPED, reason, now=now)
    audit(
        session, f"job.{job.state.lower()}", study_instance_uid=study.study_instance_uid, job_id=job.id,
        generation=job.generation, instances=study.instance_count, selected=study.selected_count, reason=reason,
    )
    return None


class CompletionScheduler:
    """One apscheduler date job per RECEIVING study; re-arming replaces the previous deadline."""

    def __init__(self, session_factory: sessionmaker[Session], quiet_seconds: float,
                 on_complete: Callable[[], None] | None = None):
        self.session_factory = session_factory
        self.quiet_seconds = quiet_seconds
        self.on_complete = on_complete  # called when a study was queued (or skipped): wakes an in-process worker
        self.scheduler = BackgroundScheduler(timezone=dt.UTC, job_defaults={"misfire_grace_time": None})
        self._armed: set[int] = set()
        self._holders: dict[int, set[threading.Thread]] = {}  # study id -> open associations that sent to it
        self._lock = threading.Lock()

    def start(self) -> None:
        self.scheduler.start()

    def stop(self, wait: bool = True) -> None:
        if self.scheduler.running:
            self.scheduler.shutdown(wait=wait)

    def arm(self, study_id: int, last_received_at: dt.datetime) -> None:
        """(Re-)schedule the completion check of ``study_id`` at last_received_at + quiet_seconds."""
        when = last_received_at + dt.timedelta(seconds=self.quiet_seconds)
        with self._lock:
            self._armed.add(study_id)
        self.scheduler.add_job(
            self._fire, DateTrigger(run_date=when, timezone=dt.UTC), args=[study_id],
            id=f"complete:{study_id}", replace_existing=True, coalesce=True, max_instances=1,
        )

    def touch(self, study_id: int, last_received_at: dt.datetime) -> None:
        """A new instance arrived: arm the study unless a timer is already pending.

        A pending timer that fires too early finds the later ``last_received_at`` and re-arms itself, so the
        receive path does not reschedule on every instance.
        """
        with self._lock:
            if study_id in self._armed:
                return
        self.arm(study_id, last_received_at)

    def hold(self, study_id: int, association: threading.Thread) -> None:
        """``association`` (still open) stored an instance of ``study_id``: the study is not complete before the
        association has closed (:meth:`release`) and then been silent for ``quiet_seconds``."""
        with self._lock:
            self._holders.setdefault(study_id, set()).add(association)

    def release(self, association: threading.Thread) -> None:
        """``association`` closed (released, aborted or dropped): each study it held waits ``quiet_seconds`` from
        now."""
        now = utcnow()
        with self._lock:
            released = [study_id for study_id, holders in self._holders.items() if association in holders]
            for study_id in released:
                self._holders[study_id].discard(association)
                if not self._holders[study_id]:
                    del self._holders[study_id]
        for study_id in released:
            self.arm(study_id, now)

    def _held(self, study_id: int) -> bool:
        """Whether an open association still holds ``study_id`` (a holder whose thread has ended, without a close
        event, lets go)."""
        with self._lock:
            holders = self._holders.get(study_id)
            if not holders:
                return False
            holders -= {a for a in holders if not a.is_alive()}
            if not holders:
                del self._holders[study_id]
                return False
            return True

    def rearm_all(self, not_before: dt.datetime | None = None) -> int:
        """Arm every study whose newest job is RECEIVING (start-up); return how many.

        Each waits a full quiet period from ``not_before`` (call it once the listener accepts: a partial study
        left by a crash must give its sender the time to send the rest, or to resend it, before it is completed)."""
        not_before = not_before or utcnow()
        with self.session_factory() as session:
            rows = session.execute(
                select(Study.id, Study.last_received_at)
                .join(Job, (Job.study_id == Study.id) & (Job.generation == Study.generation))
                .where(Job.state == JobState.RECEIVING.value)
            ).all()
        for study_id, last in rows:
            self.arm(study_id, max(last, not_before))
        return len(rows)

    def check_now(self, study_id: int) -> dt.datetime | None:
        """Run the completion check synchronously (used by the timer and by tests)."""
        with self.session_factory.begin() as session:
            return complete_study(session, study_id, self.quiet_seconds, utcnow())

    def _fire(self, study_id: int) -> None:
        with self._lock:
            self._armed.discard(study_id)
        if self._held(study_id):  # its sender is still connected: look again later (release re-arms at once)
            self.arm(study_id, utcnow())
            return
        try:
            later = self.check_now(study_id)
        except Exception:  # retry shortly rather than lose the study
            LOG.exception("completion check failed", extra={"fields": {"study_id": study_id}})
            later = utcnow() + dt.timedelta(seconds=min(5.0, self.quiet_seconds))
            later -= dt.timedelta(seconds=self.quiet_seconds)
            self.arm(study_id, later)
            return
        if later is not None:
            self.arm(study_id, later - dt.timedelta(seconds=self.quiet_seconds))
        elif self.on_complete is not None:
            self.on_complete()
