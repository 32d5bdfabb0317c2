"""Delivery loop: send queued payloads to their destinations with retries, backoff, jitter and dead letter.

The loop is the same for every destination type: each destination's :class:`~dicomnode.destinations.Sender`
sends a batch of due rows (C-STORE in one association, one STOW-RS request per study, one MLLP message, ...) and
says what became of each; the loop records it, backs off and dead-letters here, once for all types.

Each destination has its own loops (one thread per association it may have, ``associations``): a loop sends its
share of that destination's due PENDING rows in one association, so one slow or dead peer never holds up another
and an object queued while another is being sent goes out on a second association. A row is leased
(``next_attempt_at`` pushed ahead) before it is sent so that two delivery loops never send it at the same time; a
row already SENT is never sent again. After a crash between the peer's acknowledgement and our commit the object
may be sent once more after the lease ends (the peer keeps one copy: same SOP Instance UID).
"""
from __future__ import annotations

import datetime as dt
import logging
import random
import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from sqlalchemy import func, select, update
from sqlalchemy.orm import Session, sessionmaker

from dicomnode import metrics
from dicomnode.association import configure_pynetdicom
from dicomnode.audit import audit
from dicomnode.config import NodeConfig, RetryConfig
from dicomnode.db.engine import rowcount
from dicomnode.db.models import Delivery, Job, Study, utcnow
from dicomnode.db.states import DeliveryState, JobState
from dicomnode.destinations import DeliveryItem, DestinationConfig, Outcome, Sender, SendError
from dicomnode.jobs import settle_job
from dicomnode.queueing import senders

LOG = logging.getLogger("dicomnode.delivery")
LEASE_SECONDS = 30.0
BATCH_PER_DESTINATION = 50
SWEEP_SECONDS = 5.0


def backoff_seconds(attempts: int, retry: RetryConfig, rng: Callable[[], float] = random.random) -> float:
    """Delay before the next try after ``attempts`` failed ones: min(max, initial * 2^(attempts-1)) * U(0.5, 1.5)."""
    base = min(retry.max_seconds, retry.initial_seconds * 2.0 ** max(attempts - 1, 0))
    return base * (0.5 + rng())


class Deliverer:
    """``run_once()`` does one pass; ``start()``/``stop()`` run passes in a background thread."""

    def __init__(self, config: NodeConfig, session_factory: sessionmaker[Session],
                 rng: Callable[[], float] = random.random, lease_seconds: float = LEASE_SECONDS,
                 association_timeout: float = 30.0) -> None:
        configure_pynetdicom()  # send stored files unchanged
        self.config = config
        self.session_factory = session_factory
        self.rng = rng
        self.lease_seconds = lease_seconds
        self.association_timeout = association_timeout
        self.data_dir = Path(config.storage.data_dir).resolve()
        self.destinations = {d.name: d for d in config.destinations}
        self.senders: dict[str, Sender[Any]] = senders(config, association_timeout)
        self._stop = threading.Event()
        self._wakes: dict[tuple[str | None, int], threading.Event] = {}  # per loop thread
        self._busy: set[tuple[str | None, int]] = set()  # loops in a pass, or woken and not yet waiting again
        self._busy_lock = threading.Lock()
        self._threads: list[threading.Thread] = []

    # -- one pass ----------------------------------------------------------------------------------------------
    def run_once(self) -> int:
        """Send every due row (one association per destination, destinations in parallel); finish jobs.

        Returns the number of rows attempted."""
        now = utcnow()
        with self.session_factory() as session:
            names = self._pending_destinations(session, now)
        if not names:
            self.finish_jobs()
            return 0
        with ThreadPoolExecutor(max_workers=len(names), thread_name_prefix="deliver") as pool:
            attempted = sum(pool.map(self.run_destination_once, names))
        self.finish_jobs()
        return attempted

    def run_destination_once(self, name: str, share: bool = False) -> int:
        """Send the due rows of one destination (with ``share``: this association's share of them); returns how
        many were attempted."""
        rows = self._lease_due_rows(name, share)
        if rows:
            self._deliver_to(name, rows)
            self.finish_jobs()
        return len(rows)

    def _lease_due_rows(self, name: str, share: bool = False) -> list[DeliveryItem]:
        """Lease due rows of destination ``name``, at most ``BATCH_PER_DESTINATION``; with ``share``, one
        association's share when the destination has several (a backlog of 10 rows and 2 associations: 5)."""
        now = utcnow()
        lease_until = now + dt.timedelta(seconds=self.lease_seconds)
        leased: list[DeliveryItem] = []
        destination = self.destinations.get(name)
        associations = destination.parallel_sends if destination is not None and share else 1
        due = (Delivery.destination == name, Delivery.state == DeliveryState.PENDING.value,
               Delivery.next_attempt_at <= now)
        with self.session_factory.begin() as session:
            limit = BATCH_PER_DESTINATION
            if associations > 1:
                count = session.scalar(select(func.count(Delivery.id)).where(*due)) or 0
                limit = max(1, min(limit, -(-count // associations)))
            rows = session.execute(
                select(Delivery.id, Delivery.job_id, Study.study_instance_uid, Delivery.object_kind,
                       Delivery.payload_key, Delivery.media_type, Delivery.path, Delivery.sop_instance_uid)
                .join(Job, Job.id == Delivery.job_id).join(Study, Study.id == Job.study_id)
                .where(*due).order_by(Delivery.next_attempt_at, Delivery.id).limit(limit)
                .with_for_update(skip_locked=True, of=Delivery)
            ).all()
            for row in rows:
                won = rowcount(session.execute(
                    update(Delivery).where(Delivery.id == row.id, Delivery.state == DeliveryState.PENDING.value,
                                           Delivery.next_attempt_at <= now)
                    .values(next_attempt_at=lease_until).execution_options(synchronize_session=False)
                ))
                if won == 1:
                    leased.append(DeliveryItem(row.id, row.job_id, row.study_instance_uid, row.object_kind,
                                               row.payload_key, row.media_type, self.data_dir / row.path,
                                               row.sop_instance_uid))
        return leased

    @staticmethod
    def _pending_destinations(session: Session, now: dt.datetime) -> list[str]:
        return list(session.scalars(
            select(Delivery.destination).where(Delivery.state == DeliveryState.PENDING.value,
                                               Delivery.next_attempt_at <= now).distinct()
        ))

    def _deliver_to(self, name: str, items: list[DeliveryItem]) -> None:
        sender = self.senders.get(name)
        if sender is None:
            self._record(None, items, [None] * len(items), f"destination {name!r} is not configured")
            return
        outcomes: list[Outcome | None]
        try:
            outcomes = list(sender.send(items))
            if len(outcomes) != len(items):
                raise RuntimeError(f"{type(sender).__name__} answered {len(outcomes)} outcomes for {len(items)} items")
            error = None
        except SendError as exc:
            outcomes, error = [None] * len(items), str(exc)
        except Exception as exc:
            LOG.exception("delivery to %s failed", name)
            outcomes, error = [None] * len(items), f"{type(exc).__name__}: {exc}"
        self._record(sender.destination, items, outcomes, error)

    def _record(self, destination: DestinationConfig | None, items: list[DeliveryItem],
                outcomes: list[Outcome | None], error: str | None) -> None:
        now = utcnow()
        with self.session_factory.begin() as session:
            for item, outcome in zip(items, outcomes, strict=True):
                delivery = session.get(Delivery, item.id, with_for_update=True)
                if delivery is None or delivery.state != DeliveryState.PENDING.value:
                    continue
                delivery.attempts += 1
                common: dict[str, Any] = {
                    "study_instance_uid": item.study_instance_uid, "sop_instance_uid": delivery.sop_instance_uid,
                    "job_id": delivery.job_id, "destination": delivery.destination, "object_kind": item.kind,
                    "attempt": delivery.attempts}
                delivery.last_status = outcome.status if outcome else None
                if outcome is not None and outcome.delivered:
                    delivery.state = DeliveryState.SENT.value
                    delivery.sent_at = now
                    delivery.last_error = None
                    metrics.record_delivery(delivery.destination, ok=True)
                    status = f"0x{outcome.status:04X}" if outcome.status is not None else None
                    audit(session, "delivery.sent", status=status, **common)
                    continue
                reason = (outcome.error if outcome else None) or error or "unknown error"
                delivery.last_error = reason[:2000]
                metrics.record_delivery(delivery.destination, ok=False)
                retry = destination.retry if destination else None
                if retry is None or delivery.attempts >= retry.max_attempts or (outcome and outcome.permanent):
                    delivery.state = DeliveryState.DEAD.value
                    audit(session, "delivery.dead", level=logging.WARNING, error=reason[:500],
                          status=delivery.last_status, **common)
                else:
                    delay = backoff_seconds(delivery.attempts, retry, self.rng)
                    delivery.next_attempt_at = now + dt.timedelta(seconds=delay)
                    audit(session, "delivery.failed", level=logging.WARNING, error=reason[:500],
                          status=delivery.last_status, retry_in_s=round(delay, 1), **common)

    def finish_jobs(self) -> int:
        """RESULTS_READY jobs with no PENDING row become DELIVERED (all SENT) or FAILED (some DEAD)."""
        with self.session_factory.begin() as session:
            pending = select(Delivery.id).where(Delivery.job_id == Job.id,
                                                Delivery.state == DeliveryState.PENDING.value).exists()
            jobs = list(session.scalars(
                select(Job).where(Job.state == JobState.RESULTS_READY.value, ~pending).with_for_update()))
            for job in jobs:
                settle_job(session, job, session.scalar(select(Study.study_instance_uid)
                                                        .where(Study.id == job.study_id)))
        return len(jobs)

    def next_due_in(self, name: str | None = None) -> float | None:
        """Seconds until the earliest PENDING row (of ``name``) is due (0 if overdue); None when none is pending."""
        stmt = select(func.min(Delivery.next_attempt_at)).where(Delivery.state == DeliveryState.PENDING.value)
        if name is not None:
            stmt = stmt.where(Delivery.destination == name)
        with self.session_factory() as session:
            first = session.scalar(stmt)
        if first is None:
            return None
        return max(0.0, (first - utcnow()).total_seconds())

    # -- background threads ------------------------------------------------------------------------------------
    def start(self) -> None:
        """Per configured destination one thread per association it may have (so a slow peer never delays
        another, and an object ready while another is being sent need not wait), plus one that dead-letters rows
        of destinations no longer configured."""
        self._stop.clear()
        loops: list[tuple[str | None, int]] = [
            (name, index) for name, destination in self.destinations.items()
            for index in range(destination.parallel_sends)]
        for name, index in [*loops, (None, 0)]:
            wake = self._wakes.setdefault((name, index), threading.Event())
            with self._busy_lock:
                self._busy.add((name, index))  # its first pass starts now
            label = f"deliver-{name or 'orphans'}" + (f"-{index + 1}" if index else "")
            thread = threading.Thread(target=self._loop, args=(name, wake, (name, index)), name=label, daemon=True)
            thread.start()
            self._threads.append(thread)

    def wake(self) -> None:
        """Results were just queued: per destination, one idle association loop makes a pass now (all of them when
        none is idle: each then makes another pass after its own). One object ready wakes one loop, not every
        association's (the others would lease nothing and only query the database)."""
        with self._busy_lock:
            for name in self.destinations:
                loops = [key for key in self._wakes if key[0] == name]
                idle = [key for key in loops if key not in self._busy]
                for key in idle[:1] or loops:
                    self._busy.add(key)
                    self._wakes[key].set()

    def _orphan_pass(self) -> int:
        with self.session_factory() as session:
            names = [n for n in self._pending_destinations(session, utcnow()) if n not in self.destinations]
        return sum(self.run_destination_once(n) for n in names)

    def _loop(self, name: str | None, wake: threading.Event, key: tuple[str | None, int]) -> None:
        poll = self.config.processing.poll_seconds
        while not self._stop.is_set():
            try:
                if name is None:
                    self._orphan_pass()
                    self.finish_jobs()
                    due = None
                else:
                    self.run_destination_once(name, share=True)
                    due = self.next_due_in(name)
            except Exception:  # database hiccup: log, wait, try again
                LOG.exception("delivery pass failed", extra={"fields": {"destination": name}})
                due = None
            if name is None:  # the sweep (orphans, jobs left RESULTS_READY by a crash) runs less often
                wait = max(poll * 10, SWEEP_SECONDS)
            else:
                wait = poll if due is None else min(poll, due)
            with self._busy_lock:
                self._busy.discard(key)  # waiting: a wake() may choose this loop
            wake.wait(max(wait, 0.05))
            with self._busy_lock:
                self._busy.add(key)  # in a pass (what was queued before this line, it sees)
            wake.clear()

    def stop(self, timeout: float | None = None) -> None:
        """Stop after the sends in flight."""
        self._stop.set()
        for event in self._wakes.values():
            event.set()
        for thread in self._threads:
            thread.join(timeout)
        self._threads = [t for t in self._threads if t.is_alive()]
