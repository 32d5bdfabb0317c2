"""The match pass: stored reports to their study (by accession number), then to the node's own findings.

A report whose accession number matches no study stays ``unmatched`` and is tried again on every pass, so a report
that comes before its images (or before the PACS forwarded them) is compared once they have been reasoned. That is
why the listener answers it ``AA`` (with an ERR 204 warning) rather than ``AE``: the message is valid and stored, an
``AE`` would only make the sender send it again and again (and many interface engines stop their whole queue on an
error), and most reports a RIS sends are of studies this node never sees (other modalities), which are no error
either. The report is compared with the record of the study's newest job that has one (``record.json``, the result
that was sent); the node's side is copied into the verdict rows, so the agreement survives retention. A later final
report of the same study (a correction) supersedes the earlier one's verdicts. Nothing here changes a job, a result
or a delivery: the pass only reads them.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass, field

from pydantic import ValidationError
from sqlalchemy import exists, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session, sessionmaker

from dicomnode.audit import audit
from dicomnode.datadir import DataDir
from dicomnode.db.engine import error_summary, rowcount
from dicomnode.db.models import FeedbackMessage, FeedbackVerdict, Job, Study, utcnow
from dicomnode.feedback.oru import parse_header, report_text
from dicomnode.feedback.states import RETRIED, Agreement, MessageState
from dicomnode.feedback.terms import Terms
from dicomnode.feedback.verdicts import Verdict, reader
from dicomnode.logs import log_event
from inference.record import ReasoningRecord

LOG = logging.getLogger("dicomnode.feedback")
BATCH = 200  # messages per pass and kind; the next pass takes the rest


def agreement(radiologist: Verdict, model: str | None) -> Agreement:
    """A finding the report does not mention counts as absent (the radiologist reports what is there and the
    pertinent negatives); either side uncertain is not counted as agreeing or disagreeing."""
    if model is None:
        return Agreement.NOT_COMPARED
    said = Verdict.ABSENT if radiologist is Verdict.NOT_MENTIONED else radiologist
    if said is Verdict.UNCERTAIN or model == Verdict.UNCERTAIN.value:
        return Agreement.UNCERTAIN
    return Agreement.AGREE if said.value == model else Agreement.DISAGREE


def model_version(record: ReasoningRecord) -> str:
    """The record's model version, or its weights' hash where the model gave none."""
    provenance = record.provenance
    return (provenance.model_version or f"sha256:{provenance.weights_sha256[:12]}")[:80]


@dataclass
class PassCounts:
    matched: int = 0
    compared: int = 0
    waiting: int = 0
    not_compared: dict[str, int] = field(default_factory=dict)


class Matcher:
    """Runs the match pass (:meth:`run_pass`) for one node."""

    def __init__(self, session_factory: sessionmaker[Session], data_dir: DataDir, terms: Terms) -> None:
        self.session_factory = session_factory
        self.data_dir = data_dir
        self.reader = reader(terms)

    def run_pass(self) -> PassCounts:
        counts = PassCounts()
        counts.matched = self._match_studies()
        with self.session_factory() as session:
            pending = list(session.scalars(
                select(FeedbackMessage.id).where(FeedbackMessage.state.in_(
                    [MessageState.RECEIVED.value, MessageState.AWAITING_RESULT.value]))
                .order_by(FeedbackMessage.id).limit(BATCH)))
        for message_id in pending:
            try:
                state = self._compare(message_id)
            except Exception as exc:  # one bad message never stops the pass
                state = self._failed(message_id, exc)
            if state is MessageState.COMPARED or state is MessageState.SUPERSEDED:
                counts.compared += 1
            elif state is MessageState.AWAITING_RESULT:
                counts.waiting += 1
            elif state is not None:
                counts.not_compared[state.value] = counts.not_compared.get(state.value, 0) + 1
        return counts

    # -- study -----------------------------------------------------------------------------------------------
    def _match_studies(self) -> int:
        """Unmatched reports whose accession number now names a study: to that study (or ambiguous)."""
        has_study = exists(select(Study.id).where(Study.accession_number == FeedbackMessage.accession_number))
        matched = 0
        with self.session_factory.begin() as session:
            rows = session.execute(select(FeedbackMessage.id, FeedbackMessage.accession_number)
                                   .where(FeedbackMessage.state == MessageState.UNMATCHED.value, has_study)
                                   .order_by(FeedbackMessage.id).limit(BATCH)).all()
            for message_id, accession in rows:
                studies = list(session.scalars(select(Study.id).where(Study.accession_number == accession)))
                if len(studies) == 1:
                    values = {"state": MessageState.RECEIVED.value, "study_id": studies[0], "reason": None}
                    matched += 1
                else:
                    values = {"state": MessageState.AMBIGUOUS.value,
                              "reason": f"{len(studies)} studies have this accession number: not compared"}
                session.execute(update(FeedbackMessage).where(FeedbackMessage.id == message_id,
                                                              FeedbackMessage.state == MessageState.UNMATCHED.value)
                                .values(**values))
                audit(session, "feedback.matched" if len(studies) == 1 else "feedback.ambiguous",
                      level=logging.INFO if len(studies) == 1 else logging.WARNING, message_id=message_id,
                      studies=len(studies))
        return matched

    def _study_of(self, session: Session, message: FeedbackMessage) -> int | None:
        """The message's study id, matching it now if the intake could not (several studies: None, ambiguous)."""
        if message.study_id is not None:
            return message.study_id
        studies = list(session.scalars(select(Study.id).where(Study.accession_number == message.accession_number)))
        if len(studies) == 1:
            message.study_id = studies[0]
            return studies[0]
        self._settle(session, message, MessageState.AMBIGUOUS if studies else MessageState.UNMATCHED,
                     f"{len(studies)} studies have this accession number: not compared" if studies
                     else "no study with this accession number yet")
        return None

    # -- result and verdicts ---------------------------------------------------------------------------------
    def _compare(self, message_id: int) -> MessageState | None:
        with self.session_factory.begin() as session:
            message = session.get(FeedbackMessage, message_id, with_for_update=True)
            if message is None or message.state not in {s.value for s in RETRIED}:
                return None  # another pass took it
            study_id = self._study_of(session, message)
            if study_id is None:
                return MessageState(message.state)
            study = session.get(Study, study_id)
            assert study is not None
            job = session.scalars(select(Job).where(Job.study_id == study_id, Job.record_path.is_not(None))
                                  .order_by(Job.generation.desc()).limit(1)).first()
            if job is None or job.record_path is None:
                newest = session.scalars(select(Job.state).where(Job.study_id == study_id)
                                         .order_by(Job.generation.desc()).limit(1)).first()
                return self._settle(session, message, MessageState.AWAITING_RESULT,
                                    f"the study has no reasoning record yet (its newest job is {newest or 'none'})")
            record = self._record(job.record_path)
            if isinstance(record, str):
                return self._settle(session, message, MessageState.NOT_COMPARABLE, record)
            parsed, _ = parse_header(message.raw)
            text = report_text(parsed) if parsed is not None else ""
            verdicts = self.reader.read(text)
            answers = {f.key: f.presence.value for f in record.findings}
            name, version = record.provenance.model_name[:128], model_version(record)
            tally: dict[str, int] = {}
            for key, verdict in verdicts.items():
                said = agreement(verdict.verdict, answers.get(key))
                tally[said.value] = tally.get(said.value, 0) + 1
                session.add(FeedbackVerdict(
                    message_id=message.id, study_id=study_id, job_id=job.id, finding=key,
                    radiologist=verdict.verdict.value, model=answers.get(key), agreement=said.value,
                    model_name=name, model_version=version, evidence=verdict.evidence or None,
                    reported_at=message.received_at))
            state = self._supersede(session, message, study_id)
            message.job_id, message.compared_at = job.id, utcnow()
            self._settle(session, message, state, None if state is MessageState.COMPARED
                         else "a later report of this study was compared")
            audit(session, "feedback.compared", study_instance_uid=study.study_instance_uid, job_id=job.id,
                  message_id=message.id, model_version=version, superseded=state is MessageState.SUPERSEDED,
                  agreement=tally)
            return state

    def _supersede(self, session: Session, message: FeedbackMessage, study_id: int) -> MessageState:
        """Earlier compared reports of the study become superseded; this one is, when a later one is compared."""
        later = session.scalar(select(FeedbackMessage.id).where(
            FeedbackMessage.study_id == study_id, FeedbackMessage.state == MessageState.COMPARED.value,
            FeedbackMessage.id > message.id).limit(1))
        if later is not None:
            return MessageState.SUPERSEDED
        replaced = rowcount(session.execute(
            update(FeedbackMessage).where(FeedbackMessage.study_id == study_id,
                                          FeedbackMessage.state == MessageState.COMPARED.value,
                                          FeedbackMessage.id < message.id)
            .values(state=MessageState.SUPERSEDED.value, reason=f"replaced by message {message.id}")))
        if replaced:
            log_event(LOG, logging.INFO, "earlier feedback of the study superseded", message_id=message.id,
                      superseded=replaced)
        return MessageState.COMPARED

    def _record(self, record_path: str) -> ReasoningRecord | str:
        """The job's reasoning record, or why there is none to compare with."""
        path = self.data_dir.absolute(record_path)
        try:
            return ReasoningRecord.from_json(path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            return f"the job's record {record_path} is gone (retention?)"
        except OSError as exc:
            return f"the job's record cannot be read ({exc.strerror or exc})"
        except ValidationError:
            return "the job's record is not a reasoning record (another processor made it)"

    @staticmethod
    def _settle(session: Session, message: FeedbackMessage, state: MessageState, reason: str | None) -> MessageState:
        if message.state != state.value or message.reason != reason:
            message.state, message.reason = state.value, reason
            if state in (MessageState.NOT_COMPARABLE, MessageState.AMBIGUOUS):
                audit(session, "feedback.not_compared", level=logging.WARNING, message_id=message.id,
                      state=state.value, reason=reason)
        return state

    def _failed(self, message_id: int, exc: Exception) -> MessageState:
        reason = f"comparing failed: {error_summary(exc) if not isinstance(exc, IntegrityError) else 'duplicate'}"
        LOG.warning("feedback message %s not compared: %s", message_id, reason, exc_info=not isinstance(exc, OSError))
        with self.session_factory.begin() as session:
            session.execute(update(FeedbackMessage).where(FeedbackMessage.id == message_id)
                            .values(state=MessageState.ERROR.value, reason=reason[:1000]))
            audit(session, "feedback.not_compared", level=logging.WARNING, message_id=message_id,
                  state=MessageState.ERROR.value, reason=reason[:300])
        return MessageState.ERROR
