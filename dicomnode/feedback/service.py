"""What the node starts when ``feedback.enabled``: the MLLP listener with its intake, and the match pass (a
:class:`~dicomnode.background.BackgroundLoop` named ``feedback-match``, woken by every stored report)."""
from __future__ import annotations

import logging

from sqlalchemy.orm import Session, sessionmaker

from dicomnode.audit import audit_now
from dicomnode.background import BackgroundLoop
from dicomnode.config import LOOPBACK_HOSTS, NodeConfig
from dicomnode.datadir import DataDir
from dicomnode.feedback.intake import Intake
from dicomnode.feedback.listener import FeedbackListener
from dicomnode.feedback.matching import Matcher
from dicomnode.feedback.terms import load_terms
from dicomnode.logs import log_event

LOG = logging.getLogger("dicomnode.feedback")


class FeedbackService:
    def __init__(self, config: NodeConfig, session_factory: sessionmaker[Session]) -> None:
        self.config = config
        self.session_factory = session_factory
        section = config.feedback
        self.terms = load_terms(section.terms_file)
        self.matcher = Matcher(session_factory, DataDir(config.storage.data_dir), self.terms)
        self.loop = BackgroundLoop("feedback-match", self.matcher.run_pass, section.match_seconds, LOG)
        self.intake = Intake(section, session_factory, on_stored=self.loop.wake)
        tls = None
        if section.tls.enabled:
            from dicomnode.association import server_ssl_context

            tls = server_ssl_context(section.tls)
        self.listener = FeedbackListener(section, self._handle, refused=self._refused, tls_context=tls)

    def _handle(self, payload: bytes, peer: str) -> bytes:
        answer = self.intake.handle(payload, peer)
        log_event(LOG, logging.INFO if answer.code == "AA" else logging.WARNING, "feedback message answered",
                  peer=peer, ack=answer.code, state=answer.state, message_id=answer.message_id)
        return answer.ack.encode("utf-8")

    def _refused(self, peer: str, reason: str) -> None:
        audit_now(self.session_factory, "feedback.refused", peer=peer, level=logging.WARNING, reason=reason)

    @property
    def port(self) -> int:
        return self.listener.port

    @property
    def address(self) -> str:
        return f"{self.config.feedback.host}:{self.port}"

    def start(self) -> FeedbackService:
        self.listener.start()
        self.loop.start()
        section = self.config.feedback
        log_event(LOG, logging.INFO, "feedback listener on: HL7 ORU^R01 over MLLP", host=section.host,
                  port=self.port, tls=section.tls.enabled, allowed_hosts=section.allowed_hosts or "any",
                  allowed_sending_applications=section.allowed_sending_applications or "any",
                  allowed_sending_facilities=section.allowed_sending_facilities or "any",
                  terms_file=str(section.terms_file) if section.terms_file else "packaged")
        open_to_all = not (section.allowed_hosts or section.allowed_sending_applications or section.tls.enabled)
        if open_to_all and section.host not in LOOPBACK_HOSTS:
            log_event(LOG, logging.WARNING, "the feedback listener takes reports from any host and application "
                      "(set feedback.allowed_hosts or allowed_sending_applications, or TLS with client certificates)",
                      host=section.host)
        return self

    def stop(self, timeout: float = 10.0) -> None:
        self.listener.stop(timeout)
        self.loop.stop(timeout)
