"""The running node: database upgrade, recovery, listener + completion timers and/or worker + delivery loops.

``Node(config, role)``: role ``listener`` receives and completes studies, ``worker`` processes and delivers,
``all`` does both in one process (and serves the dashboard when ``dashboard.enabled``), ``dashboard`` serves only
the admin dashboard (dicomnode/dashboard) from the same database. The roles that run the listener also serve the
feedback listener (HL7 ORU^R01 over MLLP, dicomnode/feedback) when ``feedback.enabled``. ``run_until_signal()``
serves until SIGTERM/SIGINT, then stops accepting, finishes in-flight work and returns.
"""
from __future__ import annotations

import importlib
import logging
import signal
import threading
import time
from typing import Any, Literal

from sqlalchemy import func, select
from sqlalchemy.orm import Session, sessionmaker

from dicomnode.association import configure_pynetdicom
from dicomnode.audit import audit_now
from dicomnode.completion import CompletionScheduler
from dicomnode.config import NodeConfig
from dicomnode.db.engine import make_engine, make_session_factory, presize_sqlite_wal
from dicomnode.db.ingest import IngestOutcome
from dicomnode.db.migrate import upgrade_database
from dicomnode.db.models import Study, utcnow
from dicomnode.heap import freeze_start_up_heap, thaw_start_up_heap
from dicomnode.jobs import requeue_processing
from dicomnode.listener import Listener
from dicomnode.logs import log_event
from dicomnode.spool import Spool

LOG = logging.getLogger("dicomnode.node")
Role = Literal["all", "listener", "worker", "dashboard"]
ROLES: tuple[str, ...] = ("all", "listener", "worker", "dashboard")


def _optional(module: str, attr: str) -> Any:
    """``module.attr`` or None when that module does not exist (yet)."""
    try:
        return getattr(importlib.import_module(module), attr)
    except ModuleNotFoundError as exc:
        if exc.name == module:
            return None
        raise


class Node:
    """One node process. ``start()`` returns once everything listens; ``stop()`` is graceful and idempotent."""

    def __init__(self, config: NodeConfig, role: Role = "all"):
        if role not in ROLES:
            raise ValueError(f"role must be one of {ROLES}")
        self.config = config
        self.role = role
        self.engine: Any = None
        self.session_factory: sessionmaker[Session] | None = None
        self.listener: Listener | None = None
        self.completion: CompletionScheduler | None = None
        self.worker: Any = None
        self.deliverer: Any = None
        self.retention: Any = None
        self.committer: Any = None
        self.mpps: Any = None
        self.status_server: Any = None
        self.dashboard: Any = None
        self.feedback: Any = None
        self._stop_requested = threading.Event()
        self._started = False

    @property
    def port(self) -> int:
        """The DICOM port the listener is bound to."""
        if self.listener is None:
            raise RuntimeError("no listener in this role")
        return self.listener.port

    def start(self) -> Node:
        cfg = self.config
        configure_pynetdicom()
        cfg.storage.data_dir.mkdir(parents=True, exist_ok=True)
        self.engine = make_engine(cfg.database_url)
        upgrade_database(self.engine)
        presize_sqlite_wal(self.engine)
        self.session_factory = make_session_factory(self.engine)
        self._started = True
        try:
            # the dashboard first: the admin sees the node while the model loads
            if self.role == "dashboard" or (self.role == "all" and cfg.dashboard.enabled):
                self._start_dashboard()
            # then the listener: a sender whose transfer a crash cut off can resend while the model loads
            if self.role in ("all", "listener"):
                self._start_listener()
            if self.role in ("all", "worker"):
                self._start_worker()
            self._start_status_server()
            freeze_start_up_heap(f"node ({self.role})")  # the model, libraries, tables: never walked again
        except BaseException:
            self.stop()
            raise
        audit_now(self.session_factory, "node.started", called_aet=cfg.node.ae_title, role=self.role)
        return self

    def _start_listener(self) -> None:
        assert self.session_factory is not None
        self.completion = CompletionScheduler(self.session_factory, self.config.study.quiet_seconds,
                                              on_complete=self._wake_worker)
        self.completion.start()
        spool = Spool(self.config.storage.data_dir, fsync=self.config.storage.fsync)
        removed = spool.clean_temp()
        if removed:
            log_event(LOG, logging.WARNING, "partial transfers left by an earlier run removed", files=removed)
        elif removed is None:
            log_event(LOG, logging.WARNING, "another process receives into this spool; its temp files are kept")
        self.listener = Listener(self.config, self.session_factory, spool, on_stored=self._on_stored,
                                 on_closed=self.completion.release)
        self._start_mpps()
        self.listener.start()
        if self.config.feedback.enabled:
            from dicomnode.feedback.service import FeedbackService

            self.feedback = FeedbackService(self.config, self.session_factory).start()
        # after the listener accepts: a study left partial by a crash waits a full quiet period from now
        rearmed = self.completion.rearm_all(not_before=utcnow()) if self._quiet_timer else 0
        if rearmed:
            log_event(LOG, logging.INFO, "completion deadlines re-armed", studies=rearmed)

    @property
    def _quiet_timer(self) -> bool:
        return self.config.study.completion != "mpps"

    def _start_mpps(self) -> None:
        """MPPS SCP on the listener when study.completion uses MPPS (dicomnode.mpps)."""
        mode = self.config.study.completion
        if mode == "quiet":
            return
        from dicomnode.mpps import MPPS_SOP_CLASS, MppsService

        assert self.listener is not None and self.session_factory is not None
        self.mpps = MppsService(self.session_factory, on_complete=self._wake_worker,
                                poll_seconds=self.config.processing.poll_seconds)
        self.listener.ae.add_supported_context(MPPS_SOP_CLASS)
        self.listener.extra_handlers.extend(self.mpps.handlers())
        self.mpps.start()
        if mode == "mpps":
            log_event(LOG, logging.WARNING, "study.completion is mpps: a study is completed only by its Modality "
                      "Performed Procedure Step (COMPLETED/DISCONTINUED); the quiet timer is off")

    def _wake_worker(self) -> None:
        if self.worker is not None:  # role "all": start on the queued study now rather than at the next poll
            self.worker.wake()

    def _on_stored(self, outcome: IngestOutcome) -> None:
        if self.mpps is not None:
            self.mpps.poke()
        if outcome.receiving and self.completion is not None and self._quiet_timer:
            # runs in the association's thread: the study stays open while that association is
            self.completion.hold(outcome.study_id, threading.current_thread())
            self.completion.touch(outcome.study_id, outcome.last_received_at)

    def _start_worker(self) -> None:
        assert self.session_factory is not None
        requeued = requeue_processing(self.session_factory)
        if requeued:
            log_event(LOG, logging.WARNING, "re-queued jobs left in PROCESSING", jobs=requeued)
        worker_cls = _optional("dicomnode.worker", "Worker")
        deliverer_cls = _optional("dicomnode.delivery", "Deliverer")
        if worker_cls is None or deliverer_cls is None:
            LOG.error("worker/delivery modules not available; this node will not process studies")
            return
        from dicomnode.processing import make_processor
        from dicomnode.retention import Retention

        if self.config.processing.processor == "reasoning" and self.config.model.backend == "transformers":
            from dicomnode.threads import apply_node_threads

            apply_node_threads(self.config, self.role)  # before the model loads (make_processor)
        if self.config.processing.processor == "reasoning":
            self._log_decision_rules()
        self.deliverer = deliverer_cls(self.config, self.session_factory)
        self.worker = worker_cls(self.config, self.session_factory, make_processor(self.config),
                                 on_results=self.deliverer.wake)
        self.worker.start()
        self.deliverer.start()
        from dicomnode.commitment import Committer

        self.committer = Committer(self.config, self.session_factory)
        self.committer.start()
        self.retention = Retention(self.config, self.session_factory)
        self.retention.start()

    def _log_decision_rules(self) -> None:
        """Start-up: which operating points decide presence and which findings raise a study's priority (none: said
        as a warning, since the worklist and the RIS then get no urgent flag)."""
        points = ", ".join(f"{key} >= {value:g}" for key, value in self.config.thresholds.items())
        log_event(LOG, logging.INFO, "operating points", findings=points or "none: the model's own answer decides")
        rules = self.config.triage.as_rules()
        if rules:
            log_event(LOG, logging.INFO, "triage rules", rules=", ".join(r.describe() for r in rules))
        else:
            log_event(LOG, logging.WARNING, "triage.rules is empty: no study is flagged urgent (worklist, SR, RIS "
                      "messages); config/node.example.yaml has the shipped rule")

    def _start_status_server(self) -> None:
        if not self.config.metrics.enabled:
            return
        from dicomnode import health, metrics

        assert self.session_factory is not None
        session_factory = self.session_factory
        metrics.set_state_source(lambda: study_counts(session_factory))
        server = health.server_from_config(
            self.config, database=health.database_check(self.engine), model_required=self.worker is not None
            and self.config.processing.processor == "reasoning",
            soft=health.delivery_check(session_factory) if self.config.destinations else None,
        )
        if server is not None:
            self.status_server = server.start()

    def _start_dashboard(self) -> None:
        from dicomnode.dashboard import DashboardServer

        assert self.session_factory is not None
        self.dashboard = DashboardServer(self.config, self.session_factory, live=self.live_facts,
                                         on_queued=self._wake_all).start()

    def _wake_all(self) -> None:
        self._wake_worker()
        if self.deliverer is not None:
            self.deliverer.wake()

    def live_facts(self) -> dict[str, Any]:
        """What only this process knows (the dashboard's overview): listener address, worker threads, model."""
        from dicomnode import metrics

        facts: dict[str, Any] = {"role": self.role}
        if self.listener is not None:
            facts["listener"] = f"{self.config.node.ae_title}@{self.config.node.host}:{self.listener.port}"
        if self.feedback is not None:
            facts["feedback"] = f"HL7 MLLP {self.feedback.address}"
        if self.worker is not None:
            facts["workers"] = self.config.processing.workers
            facts["model_loaded"] = metrics.is_model_loaded()
        return facts

    def stop(self, timeout: float | None = None) -> None:
        """Stop accepting associations, finish in-flight transfers (up to ``timeout`` s, default
        ``node.shutdown_timeout_seconds``) and jobs, then release resources."""
        if not self._started:
            return
        self._started = False
        budget = self.config.node.shutdown_timeout_seconds if timeout is None else timeout
        deadline = time.monotonic() + budget  # for associations and the job in flight together

        def left() -> float:
            return max(1.0, deadline - time.monotonic())

        if self.dashboard is not None:
            self.dashboard.stop()
        if self.feedback is not None:
            self.feedback.stop(timeout=min(budget, 10.0))
        if self.listener is not None:
            self.listener.stop(timeout=budget)
            self.listener.spool.release_temp()
        if self.completion is not None:
            self.completion.stop(wait=True)
        if self.mpps is not None:
            self.mpps.stop()
        for part in (self.worker, self.deliverer, self.committer, self.retention):
            if part is not None:
                try:
                    part.stop(timeout=left())
                except Exception:  # keep stopping the rest
                    LOG.exception("stopping %s failed", type(part).__name__)
        if self.status_server is not None:
            self.status_server.stop()
        if self.session_factory is not None:
            audit_now(self.session_factory, "node.stopped", called_aet=self.config.node.ae_title, role=self.role)
        if self.engine is not None:
            self.engine.dispose()
        thaw_start_up_heap()
        log_event(LOG, logging.INFO, "node stopped", role=self.role)

    def request_stop(self, *_args: object) -> None:
        self._stop_requested.set()

    def run_until_signal(self) -> int:
        """Start, serve until SIGTERM/SIGINT, stop gracefully; returns the exit code (0)."""
        previous = {sig: signal.signal(sig, self.request_stop) for sig in (signal.SIGTERM, signal.SIGINT)}
        try:
            self.start()
            log_event(LOG, logging.INFO, "node serving", role=self.role,
                      port=self.listener.port if self.listener else None,
                      feedback=self.feedback.address if self.feedback else None,
                      dashboard=self.dashboard.url if self.dashboard else None)
            while not self._stop_requested.wait(0.5):
                pass
            log_event(LOG, logging.INFO, "stop requested; finishing in-flight work")
        finally:
            self.stop()
            for sig, handler in previous.items():
                signal.signal(sig, handler)
        return 0

    def __enter__(self) -> Node:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


def study_counts(session_factory: sessionmaker[Session]) -> dict[str, int]:
    """``{state: number of studies}``."""
    with session_factory() as session:
        return {state: n for state, n in session.execute(select(Study.state, func.count()).group_by(Study.state))}
