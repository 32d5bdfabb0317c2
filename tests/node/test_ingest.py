"""Receiving studies with DCMTK storescu: durable ack, duplicates, selection, per-study completion, re-opening."""
from __future__ import annotations

import time
from pathlib import Path

import pydicom
import pytest
from ingest_support import Db, make_config, node_with_db, running_node, store, wait_until
from sqlalchemy import select, text

from dicomnode.db import AuditEvent, JobState
from dicomnode.demo.synthetic import StudySpec, write_study

SMALL = {"rows": 128, "columns": 104}


def _audit_kinds(db: Db) -> list[str]:
    with db.session_factory() as s:
        return list(s.scalars(select(AuditEvent.kind).order_by(AuditEvent.id)))


@pytest.fixture()
def node_db(tmp_path: Path):  # type: ignore[no-untyped-def]
    config = make_config(tmp_path / "data", study={"quiet_seconds": 1.0})
    with node_with_db(config) as env:
        yield env


def test_instances_are_stored_durably_before_ack_then_study_completes(tmp_path: Path, node_db) -> None:
    node, db, config = node_db
    spec = StudySpec(**SMALL)
    files = write_study(tmp_path / "in", spec)
    run = store(files, node.port)
    assert run.returncode == 0 and run.statuses == [0, 0], run.output
    # acknowledged => already in the spool and committed (no waiting here)
    rows = db.instances(spec.study_instance_uid)
    assert len(rows) == 2 and all(r.selected for r in rows)
    for row, original in zip(sorted(rows, key=lambda r: r.sop_instance_uid),
                             sorted(files, key=lambda p: p.stem), strict=False):
        stored = config.storage.data_dir.resolve() / row.path
        assert row.path == f"spool/{spec.study_instance_uid}/{row.series_instance_uid}/{row.sop_instance_uid}.dcm"
        assert stored.stat().st_size == row.size_bytes
        a, b = pydicom.dcmread(stored), pydicom.dcmread(original)
        assert a.SOPInstanceUID == b.SOPInstanceUID == original.stem
        assert a.PixelData == b.PixelData and a.PatientName == b.PatientName
        assert row.modality == "DX" and row.body_part == "CHEST" and row.calling_aet == "STORESCU"
    assert not list((config.storage.data_dir / "spool" / ".tmp").iterdir())  # no temp files left behind
    study = db.study(spec.study_instance_uid)
    assert study is not None and study.instance_count == 2 and study.selected_count == 2
    assert study.patient_id == spec.patient_id and study.accession_number == spec.accession_number
    assert [j.state for j in db.jobs(spec.study_instance_uid)] == [JobState.RECEIVING.value]
    wait_until(lambda: db.study_state(spec.study_instance_uid) == JobState.QUEUED.value, 60, what="QUEUED")
    job = db.jobs(spec.study_instance_uid)[0]
    assert job.state == JobState.QUEUED.value and job.queued_at is not None and job.generation == 1
    kinds = _audit_kinds(db)
    assert kinds.count("instance.stored") == 2 and "association.accepted" in kinds and "job.queued" in kinds


def test_duplicates_are_idempotent(tmp_path: Path, node_db) -> None:
    node, db, config = node_db
    spec = StudySpec(**SMALL)
    files = write_study(tmp_path / "in", spec)
    assert store(files, node.port).statuses == [0, 0]
    paths = [config.storage.data_dir / r.path for r in db.instances()]
    mtimes = [p.stat().st_mtime_ns for p in paths]
    again = store(files + files[:1], node.port)
    assert again.statuses == [0, 0, 0], again.output
    assert len(db.instances()) == 2
    study = db.study(spec.study_instance_uid)
    assert study is not None and study.instance_count == 2
    assert [p.stat().st_mtime_ns for p in paths] == mtimes  # first copy kept, not rewritten
    assert _audit_kinds(db).count("instance.duplicate") == 3
    assert len(db.jobs(spec.study_instance_uid)) == 1


def test_selection_skips_ct_and_other_body_parts_with_reason(tmp_path: Path, node_db) -> None:
    node, db, _config = node_db
    ct = StudySpec(modality="CT", views=("PA",), **SMALL)
    head = StudySpec(body_part="HEAD", views=("PA",), **SMALL)
    mixed = StudySpec(views=("PA",), **SMALL)
    mixed_ct = StudySpec(study_instance_uid=mixed.study_instance_uid, modality="CT", views=("PA",), **SMALL)
    files = [*write_study(tmp_path / "ct", ct), *write_study(tmp_path / "head", head),
             *write_study(tmp_path / "mixed", mixed), *write_study(tmp_path / "mixed_ct", mixed_ct)]
    run = store(files, node.port)
    assert run.statuses == [0, 0, 0, 0], run.output  # acknowledged, never dropped
    [ct_row] = db.instances(ct.study_instance_uid)
    assert not ct_row.selected and ct_row.skip_reason == "modality CT not in CR,DX"
    [head_row] = db.instances(head.study_instance_uid)
    assert not head_row.selected and head_row.skip_reason.startswith("body part HEAD not in")
    for uid in (ct.study_instance_uid, head.study_instance_uid):
        wait_until(lambda uid=uid: db.study_state(uid) == JobState.SKIPPED.value, 60, what="SKIPPED")
    ct_study = db.study(ct.study_instance_uid)
    assert ct_study.state_reason == "no instance selected: modality CT not in CR,DX (x1)"
    assert db.jobs(ct.study_instance_uid)[0].error == ct_study.state_reason
    wait_until(lambda: db.study_state(mixed.study_instance_uid) == JobState.QUEUED.value, 60, what="QUEUED")
    rows = db.instances(mixed.study_instance_uid)
    assert sorted(r.selected for r in rows) == [False, True]
    assert "job.skipped" in _audit_kinds(db)


def test_completion_is_per_study(tmp_path: Path) -> None:
    config = make_config(tmp_path / "data", study={"quiet_seconds": 3.0})
    a = StudySpec(views=("PA",), **SMALL)
    b = StudySpec(views=("PA",) * 40, **SMALL)
    a_files = write_study(tmp_path / "a", a)
    b_files = write_study(tmp_path / "b", b)
    with running_node(config) as node:
        db = Db(config.database_url)
        assert store(a_files, node.port).statuses == [0]
        sent = 0
        while db.study_state(a.study_instance_uid) != JobState.QUEUED.value:
            assert sent < len(b_files) - 1, "study A never completed while B kept arriving"
            assert store(b_files[sent:sent + 1], node.port).statuses == [0]
            sent += 1
            time.sleep(0.3)
        # A completed on its own quiet time while B is still arriving
        assert store(b_files[sent:sent + 1], node.port).statuses == [0]
        assert db.study_state(b.study_instance_uid) == JobState.RECEIVING.value
        assert len(db.jobs(b.study_instance_uid)) == 1
        wait_until(lambda: db.study_state(b.study_instance_uid) == JobState.QUEUED.value, 60, what="B QUEUED")
        assert db.study(b.study_instance_uid).instance_count == sent + 1
        db.close()


def test_late_instance_reopens_study_as_new_generation(tmp_path: Path, node_db) -> None:
    node, db, _config = node_db
    spec = StudySpec(views=("PA", "LATERAL"), **SMALL)
    first, late = write_study(tmp_path / "in", spec)
    late_ct = write_study(tmp_path / "ct", StudySpec(study_instance_uid=spec.study_instance_uid, modality="CT",
                                                     views=("PA",), **SMALL))
    uid = spec.study_instance_uid
    assert store([first], node.port).statuses == [0]
    wait_until(lambda: db.study_state(uid) == JobState.QUEUED.value, 60, what="QUEUED")
    # a late CT instance is recorded but cannot change the result: no new generation
    assert store(late_ct, node.port).statuses == [0]
    assert len(db.jobs(uid)) == 1 and db.study(uid).instance_count == 2
    assert store([late], node.port).statuses == [0]
    jobs = db.jobs(uid)
    assert [(j.generation, j.state) for j in jobs] == [(1, "QUEUED"), (2, "RECEIVING")]
    assert jobs[1].predecessor_job_id == jobs[0].id
    study = db.study(uid)
    assert study.generation == 2 and study.state == "RECEIVING"
    wait_until(lambda: db.jobs(uid)[-1].state == JobState.QUEUED.value, 60, what="generation 2 QUEUED")
    assert db.study_state(uid) == JobState.QUEUED.value
    gens = {r.sop_instance_uid: r.generation for r in db.instances(uid)}
    assert gens[late.stem] == 2 and gens[first.stem] == 1


def test_restart_rearms_receiving_studies(tmp_path: Path) -> None:
    config = make_config(tmp_path / "data", study={"quiet_seconds": 2.0})
    spec = StudySpec(views=("PA",), **SMALL)
    files = write_study(tmp_path / "in", spec)
    db = Db(config.database_url)
    with running_node(config) as node:
        assert store(files, node.port).statuses == [0]
    # stopped before the deadline: still RECEIVING, the spool keeps it
    assert db.study_state(spec.study_instance_uid) == JobState.RECEIVING.value
    time.sleep(2.5)
    assert db.study_state(spec.study_instance_uid) == JobState.RECEIVING.value  # no timer while down
    with running_node(config):
        wait_until(lambda: db.study_state(spec.study_instance_uid) == JobState.QUEUED.value, 60, what="re-armed")
    db.close()


def test_restart_requeues_jobs_left_processing(tmp_path: Path) -> None:
    config = make_config(tmp_path / "data", study={"quiet_seconds": 1.0})
    spec = StudySpec(views=("PA",), **SMALL)
    files = write_study(tmp_path / "in", spec)
    db = Db(config.database_url)
    with running_node(config, role="listener") as node:
        assert store(files, node.port).statuses == [0]
        wait_until(lambda: db.study_state(spec.study_instance_uid) == JobState.QUEUED.value, 60, what="QUEUED")
    job_id = db.jobs(spec.study_instance_uid)[0].id
    with db.session_factory.begin() as s:  # what a worker killed mid-job leaves behind
        s.execute(text("UPDATE jobs SET state='PROCESSING', claimed_by='dead-worker' WHERE id=:i"), {"i": job_id})
        s.execute(text("UPDATE studies SET state='PROCESSING'"))
    with running_node(config, role="all"):
        wait_until(lambda: db.jobs(spec.study_instance_uid)[0].state == JobState.DELIVERED.value, 120,
                   what="re-queued job processed")
    with db.session_factory() as s:
        requeued = s.scalars(select(AuditEvent).where(AuditEvent.kind == "job.requeued")).all()
    assert [e.job_id for e in requeued] == [job_id]
    assert db.jobs(spec.study_instance_uid)[0].claimed_by != "dead-worker"
    db.close()
