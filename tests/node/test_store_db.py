"""The state store on SQLite and PostgreSQL: migrations, ingest bookkeeping, constraints, concurrency, outages."""
from __future__ import annotations

import datetime as dt
import subprocess
import threading
import uuid
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
from ingest_support import NODE_AET, Db, make_config, running_node, store, wait_until
from sqlalchemy import inspect, text
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session, sessionmaker

from dicomnode.completion import complete_study
from dicomnode.db import Delivery, Job, JobState, make_engine, make_session_factory, upgrade_database, utcnow
from dicomnode.db.ingest import InstanceRecord, record_instance
from dicomnode.db.migrate import current_revision
from dicomnode.demo.synthetic import StudySpec, write_study
from dicomnode.peers.dcmtk import echoscu
from tests.postgres_server import PostgresServer

SMALL = {"rows": 128, "columns": 104}
TABLES = {"studies", "instances", "jobs", "deliveries", "audit_events", "performed_procedure_steps", "alembic_version",
          "feedback_messages", "feedback_verdicts"}


@pytest.fixture(scope="module")
def postgres(tmp_path_factory: pytest.TempPathFactory) -> Iterator[PostgresServer]:
    with PostgresServer(tmp_path_factory.mktemp("pg")) as server:
        yield server


@pytest.fixture(params=["sqlite", "postgresql"])
def db_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'state.sqlite'}"
    server: PostgresServer = request.getfixturevalue("postgres")
    return server.create_database(f"t_{uuid.uuid4().hex[:12]}")


@pytest.fixture
def sf(db_url: str) -> Iterator[sessionmaker[Session]]:
    """A session factory on ``db_url``, migrated."""
    upgrade_database(db_url)
    engine = make_engine(db_url)
    try:
        yield make_session_factory(engine)
    finally:
        engine.dispose()


def _record(study: str, sop: str | None = None, selected: bool = True) -> InstanceRecord:
    sop = sop or f"1.2.3.{uuid.uuid4().int % 10**20}"
    return InstanceRecord(
        study_uid=study, series_uid=f"{study}.1", sop_uid=sop, sop_class_uid="1.2.840.10008.5.1.4.1.1.1.1",
        transfer_syntax_uid="1.2.840.10008.1.2.1", modality="DX" if selected else "CT", body_part="CHEST",
        view_position="PA", patient_id="P1", accession_number="A1", path=f"spool/{study}/{sop}.dcm",
        size_bytes=10, skip_reason=None if selected else "modality CT not in CR,DX", calling_aet="TEST",
    )


def test_migrations_create_schema_idempotently(db_url: str) -> None:
    upgrade_database(db_url)
    upgrade_database(db_url)  # second start: nothing to do
    engine = make_engine(db_url)
    try:
        assert TABLES <= set(inspect(engine).get_table_names())
        assert current_revision(engine) == "0005_feedback"
    finally:
        engine.dispose()


def test_ingest_bookkeeping_and_constraints(sf: sessionmaker[Session]) -> None:
    study = "1.2.826.0.1.1"
    t0 = utcnow()
    with sf.begin() as s:
        first = record_instance(s, _record(study), t0)
    assert first.new_study and first.receiving and first.generation == 1
    with sf.begin() as s:
        second = record_instance(s, _record(study), t0 + dt.timedelta(seconds=1))
    assert not second.new_study and second.job_id == first.job_id
    assert second.last_received_at == t0 + dt.timedelta(seconds=1)
    with sf.begin() as s:  # not quiet long enough yet: returns the later deadline
        assert complete_study(s, first.study_id, 10, t0 + dt.timedelta(seconds=5)) is not None
    with sf.begin() as s:
        assert complete_study(s, first.study_id, 10, t0 + dt.timedelta(seconds=12)) is None
    with sf() as s:
        job = s.get(Job, first.job_id)
        assert job.state == JobState.QUEUED.value and job.queued_at is not None
    with sf.begin() as s:  # late selected instance: new generation with predecessor
        late = record_instance(s, _record(study), t0 + dt.timedelta(seconds=20))
    assert late.reopened and late.generation == 2 and late.job_id != first.job_id
    with sf() as s:
        assert s.get(Job, late.job_id).predecessor_job_id == first.job_id
    # the same SOP Instance UID twice is refused by the database
    dup = _record(study)
    with sf.begin() as s:
        record_instance(s, dup, t0)
    with pytest.raises(IntegrityError), sf.begin() as s:
        record_instance(s, dup, t0)
    # one job per (study, generation); one delivery per (destination, SOP Instance UID)
    with pytest.raises(IntegrityError), sf.begin() as s:
        s.add(Job(study_id=first.study_id, generation=2, state="QUEUED"))
    with sf.begin() as s:
        s.add(Delivery(job_id=first.job_id, destination="pacs", object_kind="sr", sop_instance_uid="9.9",
                       sop_class_uid="1.2", path="results/x.dcm"))
    with pytest.raises(IntegrityError), sf.begin() as s:
        s.add(Delivery(job_id=late.job_id, destination="pacs", object_kind="sr", sop_instance_uid="9.9",
                       sop_class_uid="1.2", path="results/y.dcm"))
    # times come back timezone-aware UTC on both back-ends
    with sf() as s:
        assert s.get(Job, first.job_id).created_at.tzinfo is not None


def test_concurrent_first_instances_of_one_study(sf: sessionmaker[Session]) -> None:
    """Threads racing to create the same study: one study, one job, every instance counted."""
    study = "1.2.826.0.1.2"
    barrier = threading.Barrier(8)

    def one(_: int) -> int:
        barrier.wait(timeout=60)
        for _attempt in range(5):
            try:
                with sf.begin() as s:
                    return record_instance(s, _record(study), utcnow()).study_id
            except IntegrityError:
                continue
        raise AssertionError("never committed")

    with ThreadPoolExecutor(8) as pool:
        ids = set(pool.map(one, range(8)))
    assert len(ids) == 1
    with sf() as s:
        assert s.execute(text("SELECT instance_count, selected_count FROM studies")).one() == (8, 8)
        assert s.execute(text("SELECT count(*) FROM jobs")).scalar() == 1


def test_claims_are_atomic(sf: sessionmaker[Session]) -> None:
    """The worker's claim (SKIP LOCKED on PostgreSQL, conditional UPDATE on SQLite) hands each job out once."""
    from dicomnode.jobs import claim_job

    for n in range(12):
        with sf.begin() as s:
            out = record_instance(s, _record(f"1.2.826.0.2.{n}"), utcnow())
            s.execute(text("UPDATE jobs SET state='QUEUED', queued_at=:t WHERE id=:i"),
                      {"t": utcnow().replace(tzinfo=None), "i": out.job_id})
    barrier = threading.Barrier(6)

    def drain(worker: int) -> list[int]:
        barrier.wait(timeout=60)
        got = []
        while (claimed := claim_job(sf, f"w{worker}")) is not None:
            got.append(claimed.job_id)
        return got

    with ThreadPoolExecutor(6) as pool:
        claimed = [j for part in pool.map(drain, range(6)) for j in part]
    assert sorted(claimed) == sorted(set(claimed)) and len(claimed) == 12


def test_node_receives_into_database(tmp_path: Path, db_url: str) -> None:
    config = make_config(tmp_path / "data", database_url=db_url, study={"quiet_seconds": 1.0})
    studies = [StudySpec(views=("PA", "LATERAL"), **SMALL) for _ in range(3)]
    batches = [write_study(tmp_path / f"in{i}", spec) for i, spec in enumerate(studies)]
    same_study = StudySpec(views=("PA",) * 4, **SMALL)
    parallel = write_study(tmp_path / "parallel", same_study)
    with running_node(config) as node:
        db = Db(db_url)
        # three associations at once, plus four more that all carry the same (new) study
        procs = [subprocess.Popen(["storescu", "-aec", NODE_AET, "127.0.0.1", str(node.port), *map(str, files)])
                 for files in batches]
        procs += [subprocess.Popen(["storescu", "-aec", NODE_AET, "127.0.0.1", str(node.port), str(f)])
                  for f in parallel]
        assert [p.wait(300) for p in procs] == [0] * len(procs)
        assert len(db.instances()) == 10
        for spec in [*studies, same_study]:
            wait_until(lambda spec=spec: db.study_state(spec.study_instance_uid) == JobState.QUEUED.value, 60)
        assert db.study(same_study.study_instance_uid).instance_count == 4
        assert len(db.jobs(same_study.study_instance_uid)) == 1
        db.close()


def test_database_failure_answers_out_of_resources(tmp_path: Path, db_url: str) -> None:
    config = make_config(tmp_path / "data", database_url=db_url)
    first, second = write_study(tmp_path / "in", StudySpec(**SMALL))
    with running_node(config) as node:
        engine = make_engine(db_url)
        try:
            with engine.begin() as conn:  # the instances table disappears: every insert fails
                conn.execute(text("ALTER TABLE instances RENAME TO instances_gone"))
            run = store([first], node.port)
            assert run.statuses == [0xA700], run.output
            with engine.begin() as conn:
                conn.execute(text("ALTER TABLE instances_gone RENAME TO instances"))
        finally:
            engine.dispose()
        # the node keeps serving; the refused instance is accepted on retransmission
        assert store([first, second], node.port).statuses == [0, 0]
        db = Db(db_url)
        assert len(db.instances()) == 2
        db.close()


def test_spool_failure_answers_out_of_resources(tmp_path: Path) -> None:
    config = make_config(tmp_path / "data")
    spec = StudySpec(views=("PA",), **SMALL)
    [path] = write_study(tmp_path / "in", spec)
    with running_node(config) as node:
        blocker = config.storage.data_dir / "spool" / spec.study_instance_uid
        blocker.write_text("a file where the study directory should go")  # mkdir fails (works as root too)
        run = store([path], node.port)
        assert run.statuses == [0xA700], run.output
        db = Db(config.database_url)
        assert db.instances() == []  # nothing acknowledged, nothing recorded
        blocker.unlink()
        assert store([path], node.port).statuses == [0]
        assert len(db.instances()) == 1
        db.close()


def test_postgres_outage(tmp_path: Path) -> None:
    """PostgreSQL stopped under a running node: stores answer 0xA700, the listener keeps answering."""
    with PostgresServer(tmp_path / "pg") as server:
        url = server.create_database("outage")
        config = make_config(tmp_path / "data", database_url=url)
        a, b = write_study(tmp_path / "in", StudySpec(**SMALL))
        with running_node(config) as node:
            assert store([a], node.port).statuses == [0]
            server.stop()
            down = store([b], node.port)
            assert down.statuses == [0xA700], down.output
            assert echoscu(NODE_AET, "127.0.0.1", node.port).returncode == 0
            assert not list((config.storage.data_dir / "spool" / ".tmp").iterdir())
