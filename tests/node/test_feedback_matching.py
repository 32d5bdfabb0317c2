"""The intake and the match pass on SQLite and PostgreSQL, without the network: a reasoned study, its report, the
verdicts and the tables; and the reports that cannot be compared (no reasoning record, the record gone, an
accession number shared by two studies), each with the reason an admin can act on."""
from __future__ import annotations

from pathlib import Path

from delivery_support import PROCESSORS, delivery_config, ingest_files, job
from feedback_support import audit_rows, messages, oru, read_ack, verdicts
from sqlalchemy.orm import Session, sessionmaker

from dicomnode.datadir import DataDir
from dicomnode.feedback.intake import Intake
from dicomnode.feedback.matching import Matcher
from dicomnode.feedback.report import (
    agreement_table,
    disagreements,
    format_table,
    message_counts,
    messages_needing_attention,
)
from dicomnode.feedback.terms import packaged_terms
from dicomnode.processing import make_processor
from dicomnode.worker import Worker


def _reasoned(config, factory, study) -> int:  # type: ignore[no-untyped-def]
    job_id = ingest_files(config, factory, study.files)
    assert Worker(config, factory, make_processor(config), worker_id="w").run_once()
    assert job(factory, job_id).record_path
    return job_id


def _take(config, factory: sessionmaker[Session], *reports: str) -> list[str]:  # type: ignore[no-untyped-def]
    intake = Intake(config.feedback, factory)
    return [read_ack(intake.handle(r.encode(), "127.0.0.1:9").ack).code for r in reports]


def test_report_compared_with_the_record_on_both_databases(data_dir: Path, database_url: str, session_factory,
                                                           study_factory) -> None:
    config = delivery_config(data_dir, database_url, processor=f"{PROCESSORS}:reasoning_record")
    study = study_factory(accession_number="ACC-M-1")
    job_id = _reasoned(config, session_factory, study)
    assert _take(config, session_factory, oru("M-1", "ACC-M-1", "Cardiomegaly. No pneumothorax.")) == ["AA"]
    matcher = Matcher(session_factory, DataDir(data_dir), packaged_terms())
    counts = matcher.run_pass()
    assert (counts.compared, counts.waiting) == (1, 0)
    assert matcher.run_pass().compared == 0  # compared once
    message = messages(session_factory)[0]
    rows = verdicts(session_factory, message.id)
    assert (rows["cardiomegaly"].agreement, rows["pneumothorax"].agreement) == ("agree", "disagree")
    assert {r.job_id for r in rows.values()} == {job_id}
    table = {r.finding: r for r in agreement_table(session_factory)}
    assert (table["pneumothorax"].fn, table["pneumothorax"].fp, table["cardiomegaly"].tp) == (0, 1, 1)
    assert sum(r.compared for r in table.values()) == 18
    assert [(d.finding, d.model, d.radiologist) for d in disagreements(session_factory)] == [
        ("pneumothorax", "present", "absent")]
    assert "pneumothorax                      0        1      0.0%" in format_table(list(table.values()))
    assert message_counts(session_factory) == {"compared": 1}


def test_reports_that_cannot_be_compared_say_why(data_dir: Path, database_url: str, session_factory,
                                                 study_factory) -> None:
    config = delivery_config(data_dir, database_url, processor=f"{PROCESSORS}:sc")  # its record is no reasoning one
    _reasoned(config, session_factory, study_factory(accession_number="ACC-SC"))
    for _ in range(2):  # two studies with one accession number
        ingest_files(config, session_factory, study_factory(accession_number="ACC-TWICE").files, queue=False)
    record_config = delivery_config(data_dir, database_url, processor=f"{PROCESSORS}:reasoning_record")
    gone = _reasoned(record_config, session_factory, study_factory(accession_number="ACC-GONE"))
    (data_dir / job(session_factory, gone).record_path).unlink()  # retention took the files
    waiting = study_factory(accession_number="ACC-WAIT")
    ingest_files(config, session_factory, waiting.files, queue=False)  # still receiving: no result yet
    assert _take(config, session_factory, *(oru(f"N-{n}", acc, "No pneumothorax.") for n, acc in
                                            enumerate(["ACC-SC", "ACC-TWICE", "ACC-GONE", "ACC-WAIT"]))) == ["AA"] * 4
    counts = Matcher(session_factory, DataDir(data_dir), packaged_terms()).run_pass()
    assert counts.waiting == 1 and counts.compared == 0
    states = {m.accession_number: (m.state, m.reason) for m in messages(session_factory)}
    assert states["ACC-SC"] == ("not_comparable", "the job's record is not a reasoning record (another processor "
                                                  "made it)")
    assert states["ACC-TWICE"] == ("ambiguous", "2 studies have this accession number: not compared")
    assert states["ACC-GONE"][0] == "not_comparable" and "is gone (retention?)" in states["ACC-GONE"][1]
    assert states["ACC-WAIT"] == ("awaiting_result", "the study has no reasoning record yet (its newest job is "
                                                     "RECEIVING)")
    attention = {m.state for m in messages_needing_attention(session_factory)}
    assert attention == {"not_comparable", "ambiguous", "awaiting_result"}
    audited = [a.detail["state"] for a in audit_rows(session_factory) if a.kind == "feedback.not_compared"]
    assert sorted(audited) == ["ambiguous", "not_comparable", "not_comparable"]
    assert agreement_table(session_factory) == []
