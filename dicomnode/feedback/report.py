"""The agreement between the node and the radiologists, read from the verdicts of compared reports: per model version
and finding (the table of ``cxr-node feedback report`` and the dashboard's /feedback page), per finding over time,
the studies where they disagree, and what became of the messages received. Read-only.

Agreement is agree / (agree + disagree); findings where either side was uncertain, or the model gave no answer, are
counted apart. TP/FP/FN/TN take the radiologist as the reference (a finding the report does not mention is absent).
"""
from __future__ import annotations

import datetime as dt
from dataclasses import dataclass, field

from sqlalchemy import func, select
from sqlalchemy.orm import Session, sessionmaker

from dicomnode.db.models import FeedbackMessage, FeedbackVerdict, Study, utcnow
from dicomnode.feedback.states import Agreement, MessageState

Factory = sessionmaker[Session]
COUNTED = MessageState.COMPARED.value  # superseded reports' verdicts do not count


@dataclass
class AgreementRow:
    model_name: str
    model_version: str
    finding: str
    agree: int = 0
    disagree: int = 0
    uncertain: int = 0
    not_compared: int = 0
    tp: int = 0
    fp: int = 0
    fn: int = 0
    tn: int = 0

    @property
    def compared(self) -> int:
        return self.agree + self.disagree

    @property
    def agreement(self) -> float | None:
        return self.agree / self.compared if self.compared else None

    @property
    def model(self) -> str:
        return f"{self.model_name} {self.model_version}"


def agreement_table(session_factory: Factory, since: dt.datetime | None = None) -> list[AgreementRow]:
    """One row per model version and finding, over the compared reports received since ``since`` (all by default)."""
    query = (select(FeedbackVerdict.model_name, FeedbackVerdict.model_version, FeedbackVerdict.finding,
                    FeedbackVerdict.agreement, FeedbackVerdict.radiologist, FeedbackVerdict.model, func.count())
             .join(FeedbackMessage, FeedbackMessage.id == FeedbackVerdict.message_id)
             .where(FeedbackMessage.state == COUNTED)
             .group_by(FeedbackVerdict.model_name, FeedbackVerdict.model_version, FeedbackVerdict.finding,
                       FeedbackVerdict.agreement, FeedbackVerdict.radiologist, FeedbackVerdict.model))
    if since is not None:
        query = query.where(FeedbackVerdict.reported_at >= since)
    rows: dict[tuple[str, str, str], AgreementRow] = {}
    with session_factory() as session:
        for name, version, finding, said, radiologist, model, n in session.execute(query):
            row = rows.setdefault((name, version, finding), AgreementRow(name, version, finding))
            if said == Agreement.AGREE.value:
                row.agree += n
            elif said == Agreement.DISAGREE.value:
                row.disagree += n
            elif said == Agreement.UNCERTAIN.value:
                row.uncertain += n
            else:
                row.not_compared += n
            if said in (Agreement.AGREE.value, Agreement.DISAGREE.value):
                positive_reference = radiologist == "present"
                positive_model = model == "present"
                if positive_model and positive_reference:
                    row.tp += n
                elif positive_model:
                    row.fp += n
                elif positive_reference:
                    row.fn += n
                else:
                    row.tn += n
    return sorted(rows.values(), key=lambda r: (r.model_name, r.model_version, r.finding))


@dataclass
class OverTime:
    """Agreement per finding per period (oldest first): ``cells[finding][i]`` is (agree, compared) of period i."""

    period: str  # "day" or "week"
    starts: list[dt.date]
    cells: dict[str, list[tuple[int, int]]] = field(default_factory=dict)


def _period_start(day: dt.date, period: str) -> dt.date:
    return day - dt.timedelta(days=day.weekday()) if period == "week" else day


def agreement_over_time(session_factory: Factory, period: str = "week", periods: int = 8,
                        now: dt.datetime | None = None) -> OverTime:
    """Agreement per finding in each of the last ``periods`` days or weeks (weeks start on Monday)."""
    if period not in ("day", "week"):
        raise ValueError("period is day or week")
    step = dt.timedelta(days=7 if period == "week" else 1)
    last = _period_start((now or utcnow()).astimezone(dt.UTC).date(), period)
    starts = [last - step * (periods - 1 - i) for i in range(periods)]
    since = dt.datetime.combine(starts[0], dt.time(), tzinfo=dt.UTC)
    index = {start: i for i, start in enumerate(starts)}
    out = OverTime(period, starts)
    query = (select(FeedbackVerdict.finding, FeedbackVerdict.reported_at, FeedbackVerdict.agreement)
             .join(FeedbackMessage, FeedbackMessage.id == FeedbackVerdict.message_id)
             .where(FeedbackMessage.state == COUNTED, FeedbackVerdict.reported_at >= since,
                    FeedbackVerdict.agreement.in_([Agreement.AGREE.value, Agreement.DISAGREE.value])))
    with session_factory() as session:
        for finding, at, said in session.execute(query):
            slot = index.get(_period_start(at.astimezone(dt.UTC).date(), period))
            if slot is None:
                continue
            cells = out.cells.setdefault(finding, [(0, 0)] * periods)
            agree, compared = cells[slot]
            cells[slot] = (agree + (said == Agreement.AGREE.value), compared + 1)
    out.cells = dict(sorted(out.cells.items()))
    return out


@dataclass
class Disagreement:
    message_id: int
    study_instance_uid: str
    accession_number: str | None  # shown to authenticated users only
    job_id: int
    finding: str
    radiologist: str
    model: str | None
    model_version: str
    reported_at: dt.datetime
    evidence: str | None  # the report sentence (free text: authenticated users only)


def disagreements(session_factory: Factory, limit: int = 100) -> list[Disagreement]:
    """The newest findings where the model and the radiologist disagree (of reports that count)."""
    query = (select(FeedbackVerdict, Study.study_instance_uid, FeedbackMessage.accession_number)
             .join(FeedbackMessage, FeedbackMessage.id == FeedbackVerdict.message_id)
             .join(Study, Study.id == FeedbackVerdict.study_id)
             .where(FeedbackMessage.state == COUNTED, FeedbackVerdict.agreement == Agreement.DISAGREE.value)
             .order_by(FeedbackVerdict.reported_at.desc(), FeedbackVerdict.id.desc()).limit(limit))
    with session_factory() as session:
        return [Disagreement(v.message_id, uid, accession, v.job_id, v.finding, v.radiologist, v.model,
                             f"{v.model_name} {v.model_version}", v.reported_at, v.evidence)
                for v, uid, accession in session.execute(query)]


def message_counts(session_factory: Factory) -> dict[str, int]:
    """Received messages by state (``compared``, ``unmatched``, ``rejected``, ...)."""
    with session_factory() as session:
        return {state: n for state, n in session.execute(select(FeedbackMessage.state, func.count())
                                                          .group_by(FeedbackMessage.state))}


def percent(value: float | None) -> str:
    """``12.5%``, or an em dash where nothing was compared."""
    return "—" if value is None else f"{100 * value:.1f}%"


def format_table(rows: list[AgreementRow]) -> str:
    """The agreement table as text (one block per model version)."""
    if not rows:
        return "no compared reports yet\n"
    lines: list[str] = []
    header = (f"{'finding':<28} {'agree':>6} {'disagree':>8} {'agreement':>9} {'uncertain':>9} {'unanswered':>10}"
              f" {'TP':>4} {'FP':>4} {'FN':>4} {'TN':>4}")
    for model in dict.fromkeys(r.model for r in rows):
        lines += [f"model {model}", header]
        for r in (r for r in rows if r.model == model):
            lines.append(f"{r.finding:<28} {r.agree:>6} {r.disagree:>8} {percent(r.agreement):>9} {r.uncertain:>9}"
                         f" {r.not_compared:>10} {r.tp:>4} {r.fp:>4} {r.fn:>4} {r.tn:>4}")
        lines.append("")
    return "\n".join(lines)


@dataclass
class MessageRow:
    id: int
    received_at: dt.datetime
    peer: str | None
    sending_application: str | None
    control_id: str | None
    state: str
    ack_code: str
    reason: str | None  # never patient data: what the admin can act on


ATTENTION = (MessageState.REFUSED, MessageState.REJECTED, MessageState.UNMATCHED, MessageState.AWAITING_RESULT,
             MessageState.AMBIGUOUS, MessageState.NOT_COMPARABLE, MessageState.ERROR)


def messages_needing_attention(session_factory: Factory, limit: int = 50) -> list[MessageRow]:
    """The newest messages that were refused or are not (yet) compared, with the reason."""
    query = (select(FeedbackMessage.id, FeedbackMessage.received_at, FeedbackMessage.peer,
                    FeedbackMessage.sending_application, FeedbackMessage.control_id, FeedbackMessage.state,
                    FeedbackMessage.ack_code, FeedbackMessage.reason)
             .where(FeedbackMessage.state.in_([s.value for s in ATTENTION]))
             .order_by(FeedbackMessage.id.desc()).limit(limit))
    with session_factory() as session:
        return [MessageRow(*row) for row in session.execute(query)]
