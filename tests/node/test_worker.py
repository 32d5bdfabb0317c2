"""Job worker: atomic claims (threads on PostgreSQL, processes on SQLite), results written durably, delivery rows,
failures, crash recovery and operator retry."""
from __future__ import annotations

import os
import subprocess
import sys
import threading
from collections import Counter

import pydicom
import pytest
import yaml
from cxr_test_processors import read_calls
from delivery_support import (
    HERE,
    PROCESSORS,
    deliveries,
    delivery_config,
    destination,
    ingest_files,
    job,
    orthanc_destination,
    study_state,
)
from sqlalchemy import select

from dicomnode.db import Job, make_engine, make_session_factory, upgrade_database
from dicomnode.db.states import DeliveryState, JobState
from dicomnode.delivery import Deliverer
from dicomnode.jobs import claim_job, retry_job
from dicomnode.jobs import requeue_processing as requeue_stale_jobs
from dicomnode.peers.ports import free_port
from dicomnode.processing import make_processor
from dicomnode.worker import Worker, study_input


def _worker(config, session_factory, worker_id: str = "w1") -> Worker:  # type: ignore[no-untyped-def]
    return Worker(config, session_factory, make_processor(config), worker_id=worker_id)


def test_job_results_written_and_deliveries_recorded(data_dir, database_url, session_factory, study_factory):
    dests = [destination("both", "A", free_port(), objects=["sr", "sc"]),
             destination("sconly", "B", free_port(), objects=["sc"])]
    config = delivery_config(data_dir, database_url, dests, processor=f"{PROCESSORS}:sr_and_sc")
    study = study_factory()
    job_id = ingest_files(config, session_factory, study.files)
    assert job(session_factory, job_id).state == JobState.QUEUED.value

    worker = _worker(config, session_factory)
    assert worker.run_once() is True
    assert worker.run_once() is False  # queue empty now

    done = job(session_factory, job_id)
    assert done.state == JobState.RESULTS_READY.value and done.claimed_by == "w1" and done.attempts == 1
    assert study_state(session_factory, study.study_instance_uid) == JobState.RESULTS_READY.value
    results = data_dir / "results" / study.study_instance_uid / str(job_id)
    assert done.record_path == str((results / "record.json").relative_to(data_dir))
    files = sorted(p.name.split("-")[0] for p in results.glob("*.dcm"))
    assert files == ["sc", "sr"]
    assert not list(results.glob(".*part"))  # no temp files left behind

    rows = deliveries(session_factory, job_id)
    assert sorted((r.destination, r.object_kind) for r in rows) == [("both", "sc"), ("both", "sr"), ("sconly", "sc")]
    for row in rows:
        assert row.state == DeliveryState.PENDING.value and row.attempts == 0
        ds = pydicom.dcmread(data_dir / row.path)
        assert ds.SOPInstanceUID == row.sop_instance_uid and ds.SOPClassUID == row.sop_class_uid
        assert ds.StudyInstanceUID == study.study_instance_uid
    assert [c[0] for c in read_calls(data_dir)] == [job_id]


def test_passthrough_job_is_delivered_without_objects(data_dir, sqlite_url, study_factory):
    engine = make_engine(sqlite_url)
    upgrade_database(engine)
    factory = make_session_factory(engine)
    config = delivery_config(data_dir, sqlite_url, [destination("pacs", "P", free_port())], processor="passthrough")
    study = study_factory()
    job_id = ingest_files(config, factory, study.files)
    assert _worker(config, factory).run_once()
    assert job(factory, job_id).state == JobState.DELIVERED.value
    assert job(factory, job_id).finished_at is not None
    assert deliveries(factory) == []
    engine.dispose()


def test_failing_processor_fails_job_and_retry_requeues(data_dir, database_url, session_factory, study_factory):
    config = delivery_config(data_dir, database_url, processor=f"{PROCESSORS}:failing")
    study = study_factory()
    job_id = ingest_files(config, session_factory, study.files)
    worker = _worker(config, session_factory)
    assert worker.run_once()
    failed = job(session_factory, job_id)
    assert failed.state == JobState.FAILED.value
    assert failed.error == "RuntimeError: model exploded (test)"
    assert study_state(session_factory, study.study_instance_uid) == JobState.FAILED.value

    assert "re-queued" in retry_job(session_factory, job_id)
    assert job(session_factory, job_id).state == JobState.QUEUED.value
    assert worker.run_once()
    again = job(session_factory, job_id)
    assert again.state == JobState.FAILED.value and again.attempts == 2
    with pytest.raises(ValueError, match="does not exist"):
        retry_job(session_factory, 999_999)


def test_missing_spool_file_fails_job_with_reason(data_dir, sqlite_url, study_factory):
    engine = make_engine(sqlite_url)
    upgrade_database(engine)
    factory = make_session_factory(engine)
    config = delivery_config(data_dir, sqlite_url)
    study = study_factory()
    job_id = ingest_files(config, factory, study.files)
    victim = next((data_dir / "spool").rglob("*.dcm"))
    victim.unlink()
    assert _worker(config, factory).run_once()
    failed = job(factory, job_id)
    assert failed.state == JobState.FAILED.value and victim.name in (failed.error or "")
    assert read_calls(data_dir) == []  # the processor never saw an incomplete study
    engine.dispose()


def test_crashed_claim_is_requeued_and_stale_result_discarded(data_dir, database_url, session_factory,
                                                              study_factory):
    config = delivery_config(data_dir, database_url)
    job_id = ingest_files(config, session_factory, study_factory().files)
    claimed = claim_job(session_factory, "crashed-worker")
    assert claimed is not None and claimed.job_id == job_id
    assert job(session_factory, job_id).state == JobState.PROCESSING.value
    assert claim_job(session_factory, "other") is None  # nobody else gets it meanwhile

    assert requeue_stale_jobs(session_factory) == [job_id]
    assert job(session_factory, job_id).state == JobState.QUEUED.value
    assert _worker(config, session_factory, "w2").run_once()
    assert job(session_factory, job_id).state == JobState.DELIVERED.value  # results, but no destinations
    # the crashed worker "comes back" and tries to finish: its result must be discarded
    stale = _worker(config, session_factory, "crashed-worker")
    stale._finish_failed(claimed, "crashed-worker", "late failure")
    final = job(session_factory, job_id)
    assert final.state != JobState.FAILED.value and final.claimed_by == "w2"


def test_late_instance_job_sees_all_instances_and_predecessor_results(data_dir, database_url, session_factory,
                                                                     study_factory):
    config = delivery_config(data_dir, database_url, [destination("pacs", "P", free_port())])
    study = study_factory(views=("PA",))
    first = ingest_files(config, session_factory, study.files)
    worker = _worker(config, session_factory)
    assert worker.run_once()
    with session_factory.begin() as session:  # pretend delivery finished
        session.get(Job, first).state = JobState.DELIVERED.value
    late = study_factory(study_instance_uid=study.study_instance_uid, views=("LATERAL",))
    second = ingest_files(config, session_factory, late.files)
    assert second != first
    claimed = claim_job(session_factory, "inspect")
    assert claimed is not None and claimed.job_id == second and claimed.generation == 2
    with session_factory() as session:
        inp = study_input(session, data_dir.resolve(), claimed)
    assert sorted(p.stem for p in inp.instance_paths) == sorted(p.stem for p in study.files + late.files)
    assert [p.name.split("-")[0] for p in inp.predecessor_results] == ["sc"]
    assert job(session_factory, second).predecessor_job_id == first


def test_threads_on_postgres_never_process_a_job_twice(data_dir, postgres_url, study_factory):
    engine = make_engine(postgres_url)
    upgrade_database(engine)
    factory = make_session_factory(engine)
    config = delivery_config(data_dir, postgres_url, [destination("pacs", "P", free_port())])
    job_ids = [ingest_files(config, factory, study_factory(views=("PA",)).files) for _ in range(12)]
    workers = [_worker(config, factory, f"t{i}") for i in range(4)]
    barrier = threading.Barrier(len(workers))

    def drain(worker: Worker) -> None:
        barrier.wait()
        while worker.run_once():
            pass

    threads = [threading.Thread(target=drain, args=(w,)) for w in workers]
    for t in threads:
        t.start()
    for t in threads:
        t.join(300)
    calls = Counter(c[0] for c in read_calls(data_dir))
    assert sorted(calls) == sorted(job_ids) and set(calls.values()) == {1}
    with factory() as session:
        states = set(session.scalars(select(Job.state)))
        claimers = set(session.scalars(select(Job.claimed_by)))
    assert states == {JobState.RESULTS_READY.value}
    assert len(claimers) > 1  # the work really was shared
    assert len(deliveries(factory)) == len(job_ids)
    engine.dispose()


def test_two_processes_on_sqlite_never_process_a_job_twice(tmp_path, data_dir, sqlite_url, study_factory):
    engine = make_engine(sqlite_url)
    upgrade_database(engine)
    factory = make_session_factory(engine)
    config = delivery_config(data_dir, sqlite_url, [destination("pacs", "P", free_port())])
    job_ids = [ingest_files(config, factory, study_factory(views=("PA",)).files) for _ in range(10)]
    config_path = tmp_path / "node.yaml"
    config_path.write_text(yaml.safe_dump(config.model_dump(mode="json", by_alias=True)))
    procs = [subprocess.Popen([sys.executable, str(HERE / "worker_proc.py"), str(config_path), f"p{i}"],
                              env={"CXR_TEST_PROCESS_SECONDS": "0.3", "PATH": "/usr/bin:/bin",
                                   "PYTHONPATH": os.environ.get("PYTHONPATH", "")})
             for i in range(2)]
    for proc in procs:
        assert proc.wait(300) == 0
    calls = read_calls(data_dir)
    per_job = Counter(c[0] for c in calls)
    assert sorted(per_job) == sorted(job_ids) and set(per_job.values()) == {1}
    assert len({c[1] for c in calls}) == 2  # both processes took jobs
    with factory() as session:
        assert set(session.scalars(select(Job.state))) == {JobState.RESULTS_READY.value}
    engine.dispose()


def test_worker_liveness_rules() -> None:
    import datetime as dt
    import os
    import socket

    from dicomnode.jobs import STALE_SECONDS, worker_is_gone

    now = dt.datetime.now(dt.UTC)
    fresh, stale = now, now - dt.timedelta(seconds=STALE_SECONDS + 1)
    here = socket.gethostname()
    exited = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    dead_pid = int(exited.stdout)
    assert not worker_is_gone(f"{here}:{os.getpid()}:0", fresh, now)  # this very process: alive
    assert worker_is_gone(f"{here}:{dead_pid}:0", fresh, now)  # its process exited
    assert not worker_is_gone("gpu-host-2:4242:0", fresh, now)  # another host, fresh heartbeat
    assert worker_is_gone("gpu-host-2:4242:0", stale, now)  # another host, heartbeat lost
    assert worker_is_gone("crashed-worker", fresh, now)  # not one of our worker ids


def test_live_worker_keeps_its_job_when_another_process_starts(data_dir, database_url, session_factory,
                                                                study_factory):
    import os
    import socket

    config = delivery_config(data_dir, database_url)
    job_id = ingest_files(config, session_factory, study_factory().files)
    live = f"{socket.gethostname()}:{os.getpid()}:0"
    assert claim_job(session_factory, live) is not None
    assert requeue_stale_jobs(session_factory) == []  # a second worker's start-up leaves it alone
    assert job(session_factory, job_id).state == JobState.PROCESSING.value


def test_heartbeat_while_processing(data_dir, database_url, session_factory, study_factory, monkeypatch):
    import dicomnode.jobs as worker_module

    monkeypatch.setattr(worker_module, "HEARTBEAT_SECONDS", 0.2)
    monkeypatch.setenv("CXR_TEST_PROCESS_SECONDS", "1.5")
    config = delivery_config(data_dir, database_url, processor=f"{PROCESSORS}:sc")
    job_id = ingest_files(config, session_factory, study_factory().files)
    seen: list = []

    def watch() -> None:
        while not seen or seen[-1][0] != JobState.DELIVERED.value:
            row = job(session_factory, job_id)
            seen.append((row.state, row.claimed_at, row.updated_at))
    watcher = threading.Thread(target=watch)
    watcher.start()
    assert _worker(config, session_factory).run_once()
    watcher.join(30)
    beats = {updated for state, claimed, updated in seen if state == JobState.PROCESSING.value and updated > claimed}
    assert len(beats) >= 3  # updated_at moved on several times while the job was processed


def test_each_object_is_stored_and_queued_before_processing_ends(data_dir, database_url, session_factory,
                                                                   study_factory, orthanc):
    config = delivery_config(data_dir, database_url, [orthanc_destination(orthanc)],
                             processor=f"{PROCESSORS}:publishing")
    job_id = ingest_files(config, session_factory, study_factory().files)
    queued_while_processing: list[list[tuple[str, str]]] = []
    worker = _worker(config, session_factory)
    store = worker._store

    def watching_store(*args, **kwargs):  # type: ignore[no-untyped-def]
        store(*args, **kwargs)
        assert job(session_factory, job_id).state == JobState.PROCESSING.value
        queued_while_processing.append(sorted((r.object_kind, r.state) for r in deliveries(session_factory, job_id)))

    worker._store = watching_store
    assert worker.run_once()
    assert queued_while_processing == [[("sr", DeliveryState.PENDING.value)],  # queued before the SC was made
                                       [("sc", DeliveryState.PENDING.value), ("sr", DeliveryState.PENDING.value)]]
    rows = deliveries(session_factory, job_id)
    assert sorted(r.object_kind for r in rows) == ["sc", "sr"]  # each queued once
    assert len({r.sop_instance_uid for r in rows}) == 2
    assert job(session_factory, job_id).state == JobState.RESULTS_READY.value
    assert Deliverer(config, session_factory).run_once() == 2
    assert job(session_factory, job_id).state == JobState.DELIVERED.value
    assert sorted(orthanc.sop_instance_uids()) == sorted(r.sop_instance_uid for r in rows)


def test_failure_after_publishing_keeps_what_was_published(data_dir, sqlite_url, study_factory, orthanc):
    engine = make_engine(sqlite_url)
    upgrade_database(engine)
    factory = make_session_factory(engine)
    config = delivery_config(data_dir, sqlite_url, [orthanc_destination(orthanc)],
                             processor=f"{PROCESSORS}:publishing_then_failing")
    job_id = ingest_files(config, factory, study_factory().files)
    assert _worker(config, factory).run_once()
    failed = job(factory, job_id)
    [row] = deliveries(factory, job_id)
    assert failed.state == JobState.FAILED.value
    assert "page renderer exploded" in (failed.error or "") and f"sr {row.sop_instance_uid}" in (failed.error or "")
    assert pydicom.dcmread(data_dir / row.path).SOPInstanceUID == row.sop_instance_uid  # stored durably
    assert Deliverer(config, factory).run_once() == 1  # a published object is final: it is sent
    assert orthanc.sop_instance_uids() == [row.sop_instance_uid]
    assert job(factory, job_id).state == JobState.FAILED.value  # the job stays failed, with its reason
    assert "re-queued for processing" in retry_job(factory, job_id)  # retry makes a new, complete set
    engine.dispose()


def test_publishing_into_a_lost_job_records_nothing(data_dir, sqlite_url, study_factory):
    engine = make_engine(sqlite_url)
    upgrade_database(engine)
    factory = make_session_factory(engine)
    config = delivery_config(data_dir, sqlite_url, [destination("pacs", "P", free_port())],
                             processor=f"{PROCESSORS}:publishing_after_losing_the_job")
    job_id = ingest_files(config, factory, study_factory().files)
    assert _worker(config, factory).run_once()
    assert deliveries(factory, job_id) == []
    lost = job(factory, job_id)
    assert lost.state == JobState.QUEUED.value and lost.error is None  # for the worker that has it now
    engine.dispose()
