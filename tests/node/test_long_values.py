"""Bad values never become 0xA700 (issue 17): header values longer than the database columns are stored cut to
fit, on SQLite and PostgreSQL alike, and recorded by field name and length; patient ID and accession number
appear in no audit row and no log line above DEBUG, also when the database write fails."""
from __future__ import annotations

import logging
from pathlib import Path

import pydicom
import pytest
from ingest_support import Db, make_config, node_with_db, store
from sqlalchemy import select

from dicomnode.db.models import AuditEvent
from dicomnode.demo.synthetic import StudySpec, write_study

LONG_PID = "PID" + "7" * 67  # 70 characters (LO allows 64)
LONG_ACC = "ACC" + "8" * 37  # 40 characters (SH allows 16; the column 64 -> fits, but stays unrecorded)
LONG_VIEW = "POSTERO_ANTERIOR_ERECT1"  # 23 characters (CS allows 16)
LONG_BODY = "CHEST" + "X" * 70  # 75 characters


def _long_study(directory: Path) -> list[Path]:
    files = write_study(directory, StudySpec(views=("PA",), rows=64, columns=64, patient_id=LONG_PID,
                                             accession_number=LONG_ACC))
    for path in files:
        ds = pydicom.dcmread(path)
        ds.ViewPosition = LONG_VIEW
        ds.BodyPartExamined = LONG_BODY
        ds.save_as(path)
    return files


def _audit_rows(db: Db) -> list[AuditEvent]:
    with db.session_factory() as s:
        return list(s.scalars(select(AuditEvent).order_by(AuditEvent.id)))


def test_long_header_values_are_stored_cut_and_recorded(tmp_path: Path, database_url: str,
                                                        caplog: pytest.LogCaptureFixture) -> None:
    files = _long_study(tmp_path / "in")
    config = make_config(tmp_path / "var", database_url)
    caplog.set_level(logging.INFO)
    with node_with_db(config) as (node, db, _):
        run = store(files, node.port)
        assert run.statuses == [0], run.output
        [instance] = db.instances()
        assert instance.view_position == LONG_VIEW[:16]
        assert instance.body_part == LONG_BODY[:64]
        study = db.study(_study_uid(files[0]))
        assert study is not None and study.patient_id == LONG_PID[:64]
        stored = [a for a in _audit_rows(db) if a.kind == "instance.stored"]
        assert stored[0].detail["truncated"] == {"view_position": 23, "body_part": 75, "patient_id": 70}
        rows = " ".join(str((a.kind, a.peer, a.detail)) for a in _audit_rows(db))
    assert LONG_PID[:20] not in rows and LONG_ACC[:12] not in rows
    logged = "\n".join(r.getMessage() + str(getattr(r, "fields", "")) for r in caplog.records)
    assert "truncated" in logged
    assert LONG_PID[:20] not in logged and LONG_ACC[:12] not in logged


def _study_uid(path: Path) -> str:
    return str(pydicom.dcmread(path, stop_before_pixels=True).StudyInstanceUID)


def test_failed_database_write_keeps_patient_data_out_of_logs_and_audit(
        tmp_path: Path, postgres_url: str, caplog: pytest.LogCaptureFixture) -> None:
    """A database write that fails (here: the patient_id column narrowed under the node) answers 0xA700 with a
    reason that quotes no values."""
    from sqlalchemy import create_engine, text

    files = _long_study(tmp_path / "in")
    config = make_config(tmp_path / "var", postgres_url)
    caplog.set_level(logging.INFO)
    with node_with_db(config) as (node, db, _):
        engine = create_engine(postgres_url)
        with engine.begin() as conn:
            conn.execute(text("ALTER TABLE studies ALTER COLUMN patient_id TYPE varchar(8)"))
        engine.dispose()
        run = store(files, node.port)
        assert run.statuses == [0xA700], run.output
        failed = [a for a in _audit_rows(db) if a.kind in ("instance.store_failed", "instance.rejected")]
        assert failed and "StringDataRightTruncation" in failed[0].detail["reason"]
        rows = " ".join(str((a.kind, a.peer, a.detail)) for a in _audit_rows(db))
    assert LONG_PID[:20] not in rows and LONG_ACC[:12] not in rows
    above_debug = [r for r in caplog.records if r.levelno > logging.DEBUG]
    logged = "\n".join(r.getMessage() + str(getattr(r, "fields", "")) + str(r.exc_text or "") for r in above_debug)
    assert LONG_PID[:20] not in logged and LONG_ACC[:12] not in logged


def test_invalid_birth_date_neither_withholds_the_result_nor_reaches_logs(caplog: pytest.LogCaptureFixture) -> None:
    """An impossible PatientBirthDate in the source is dropped from the SR (the result is still made), and the
    value is quoted in no log record above DEBUG."""
    from dicomnode.demo.records import make_record
    from dicomnode.demo.synthetic import make_study
    from dicomnode.logs import setup_logging
    from sr_writer import build_result_objects

    study = make_study(StudySpec(views=("PA",), rows=64, columns=64, patient_birth_date="19601301"))
    pydicom_logger = logging.getLogger("pydicom")
    level = pydicom_logger.level
    try:
        setup_logging("INFO", json_lines=True)
        caplog.clear()
        caplog.set_level(logging.INFO)
        result = build_result_objects(make_record(study, positive=("edema",)), study)
    finally:
        pydicom_logger.setLevel(level)
    assert result.sr.PatientBirthDate == ""
    assert result.sr.PatientID == study[0].PatientID
    above_debug = [r for r in caplog.records if r.levelno > logging.DEBUG]
    assert not [r for r in above_debug if "19601301" in r.getMessage() + str(getattr(r, "fields", ""))]
