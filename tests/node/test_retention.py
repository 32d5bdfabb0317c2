"""Retention removes every file of a delivered (or skipped) study after retention_days (spool, results, prior cache),
never before delivery."""
from __future__ import annotations

import datetime as dt
import time

from delivery_support import PROCESSORS, delivery_config, destination, ingest_files, job, orthanc_destination
from sqlalchemy import select

from dicomnode.db import AuditEvent
from dicomnode.db.models import utcnow
from dicomnode.db.states import JobState
from dicomnode.delivery import Deliverer
from dicomnode.peers.ports import free_port
from dicomnode.processing import make_processor
from dicomnode.retention import Retention, purge_expired
from dicomnode.worker import Worker


def _spool_files(data_dir, study_uid):  # type: ignore[no-untyped-def]
    return sorted((data_dir / "spool" / study_uid).rglob("*.dcm"))


def test_only_delivered_studies_past_retention_are_purged(data_dir, database_url, session_factory, study_factory,
                                                          orthanc):
    dests = [orthanc_destination(orthanc, objects=["sc"]),
             destination("down", "DOWN", free_port(), max_attempts=100, initial_seconds=60, max_seconds=60)]
    config = delivery_config(data_dir, database_url, dests[:1], processor=f"{PROCESSORS}:sc")
    delivered, waiting, receiving = study_factory(), study_factory(), study_factory()

    delivered_job = ingest_files(config, session_factory, delivered.files)
    worker = Worker(config, session_factory, make_processor(config))
    assert worker.run_once()
    Deliverer(config, session_factory).run_once()
    assert job(session_factory, delivered_job).state == JobState.DELIVERED.value

    waiting_config = delivery_config(data_dir, database_url, dests[1:], processor=f"{PROCESSORS}:sc")
    waiting_job = ingest_files(waiting_config, session_factory, waiting.files)
    assert Worker(waiting_config, session_factory, make_processor(waiting_config)).run_once()
    Deliverer(waiting_config, session_factory).run_once()
    assert job(session_factory, waiting_job).state == JobState.RESULTS_READY.value  # still waiting for "down"

    ingest_files(config, session_factory, receiving.files, queue=False)

    # a prior-study copy that a crashed job left behind belongs to the study too
    leftover_prior = data_dir / "priors" / str(delivered_job) / "1.2.3.4.dcm"
    leftover_prior.parent.mkdir(parents=True)
    leftover_prior.write_bytes(b"prior")
    results = data_dir / "results" / delivered.study_instance_uid
    result_files = [p for p in results.rglob("*") if p.is_file()]
    assert any(p.suffix == ".dcm" for p in result_files)

    # before retention_days have passed: nothing goes
    assert purge_expired(config, session_factory, now=utcnow() + dt.timedelta(days=6)).files == 0
    assert len(_spool_files(data_dir, delivered.study_instance_uid)) == 2

    report = purge_expired(config, session_factory, now=utcnow() + dt.timedelta(days=400))
    expected_files = 2 + len(result_files) + 1  # spool + results + prior cache
    assert (report.studies, report.files) == (1, expected_files) and report.bytes > 0
    assert _spool_files(data_dir, delivered.study_instance_uid) == []
    assert not (data_dir / "spool" / delivered.study_instance_uid).exists()  # empty directories removed
    assert not results.exists()  # SR/pages/record of the study: gone with it
    assert not leftover_prior.parent.exists()
    assert len(_spool_files(data_dir, waiting.study_instance_uid)) == 2  # not delivered yet: kept
    assert list((data_dir / "results" / waiting.study_instance_uid).rglob("*.dcm"))  # its results too
    assert len(_spool_files(data_dir, receiving.study_instance_uid)) == 2  # still receiving: kept
    with session_factory() as session:
        events = list(session.scalars(select(AuditEvent).where(AuditEvent.kind == "retention.purged")))
    assert [(e.study_instance_uid, e.detail["files"]) for e in events] == [(delivered.study_instance_uid,
                                                                             expected_files)]
    # idempotent: a second pass finds nothing more
    assert purge_expired(config, session_factory, now=utcnow() + dt.timedelta(days=400)).files == 0

    # a late instance re-opens the purged study: the new job runs on the files that exist
    late = study_factory(study_instance_uid=delivered.study_instance_uid, views=("LATERAL",))
    late_job = ingest_files(config, session_factory, late.files)
    assert worker.run_once()
    assert job(session_factory, late_job).state == JobState.RESULTS_READY.value


def test_short_retention_with_the_background_runner(data_dir, sqlite_url, study_factory):
    from dicomnode.db import make_engine, make_session_factory, upgrade_database

    engine = make_engine(sqlite_url)
    upgrade_database(engine)
    factory = make_session_factory(engine)
    config = delivery_config(data_dir, sqlite_url, processor="passthrough",
                             storage={"retention_days": 2 / 86400})  # two seconds
    study = study_factory()
    ingest_files(config, factory, study.files)
    assert Worker(config, factory, make_processor(config)).run_once()  # no objects: DELIVERED at once
    runner = Retention(config, factory, interval_seconds=0.2)
    assert runner.run_once().files == 0  # delivered just now: too early
    runner.start()
    try:
        deadline = time.monotonic() + 60
        while _spool_files(data_dir, study.study_instance_uid) and time.monotonic() < deadline:
            time.sleep(0.2)
    finally:
        runner.stop(timeout=30)
    assert _spool_files(data_dir, study.study_instance_uid) == []
    engine.dispose()
