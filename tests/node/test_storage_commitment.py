"""Storage Commitment (push model) against a real Orthanc 1.10 as SCP (issue 14, part 2).

The node's listener runs (it receives Orthanc's N-EVENT-REPORT on a new association); worker, delivery and the
committer are driven here one pass at a time. Orthanc reports only to requesters in its DicomModalities: the node
is listed there with its listener's port (or, for the timeout, with a port where nothing listens).
"""
from __future__ import annotations

import datetime as dt
import json
import subprocess
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from delivery_support import PROCESSORS, deliveries, ingest_files, orthanc_destination
from ingest_support import CXR_NODE, NODE_AET, Db, config_dict, running_node, store, wait_until, write_config
from sqlalchemy import select

from dicomnode import metrics
from dicomnode.commitment import Committer
from dicomnode.config import NodeConfig, config_from_dict
from dicomnode.db.models import Delivery, utcnow
from dicomnode.db.states import DeliveryState, JobState
from dicomnode.delivery import Deliverer
from dicomnode.demo.synthetic import StudySpec, write_study
from dicomnode.peers.orthanc import OrthancServer
from dicomnode.peers.ports import free_port
from dicomnode.processing import make_processor
from dicomnode.retention import purge_expired
from dicomnode.worker import Worker


def _setup(tmp_path: Path, node_port_for_orthanc: int | None = None, timeout: float = 30):  # type: ignore[no-untyped-def]
    data = config_dict(tmp_path / "data", processing={"processor": f"{PROCESSORS}:sr_and_sc", "poll_seconds": 0.2})
    node_port = data["node"]["port"]
    orthanc = OrthancServer(tmp_path / "orthanc",
                            modalities={"CXRNODE": (NODE_AET, "127.0.0.1", node_port_for_orthanc or node_port)})
    destination = orthanc_destination(orthanc, max_attempts=3)
    destination.update(storage_commitment=True, commitment_timeout_seconds=timeout)
    data["destinations"] = [destination]
    return data, orthanc


def _sample(name: str) -> float:
    return metrics.REGISTRY.get_sample_value(name, {"destination": "pacs"}) or 0.0


def _deliver(config, db: Db, tmp_path: Path) -> int:  # type: ignore[no-untyped-def]
    files = write_study(tmp_path / "in", StudySpec(views=("PA",), rows=64, columns=52))
    job_id = ingest_files(config, db.session_factory, files)
    worker = Worker(config, db.session_factory, make_processor(config), worker_id="w")
    while worker.run_once():
        pass
    assert Deliverer(config, db.session_factory).run_once() == 2
    assert {r.state for r in deliveries(db.session_factory, job_id)} == {DeliveryState.SENT.value}, \
        [r.last_error for r in deliveries(db.session_factory, job_id)]
    return job_id


@contextmanager
def _delivered(tmp_path: Path, data: dict, orthanc: OrthancServer) -> Iterator[tuple[NodeConfig, Db, int]]:
    """Orthanc and the node's listener running, and a job of one study delivered (not committed yet)."""
    config = config_from_dict(data, environ={})
    with orthanc, running_node(config, role="listener"):
        db = Db(config.database_url)
        try:
            yield config, db, _deliver(config, db, tmp_path)
        finally:
            db.close()


def _study_of(db: Db, job_id: int) -> str:
    from dicomnode.db.models import Job, Study

    with db.session_factory() as s:
        return s.scalar(select(Study.study_instance_uid).join(Job, Job.study_id == Study.id).where(Job.id == job_id))


def _states(db: Db, job_id: int) -> list[str]:
    return sorted(r.state for r in deliveries(db.session_factory, job_id))


def test_committed_after_report_and_retention_waits_for_it(tmp_path: Path) -> None:
    data, orthanc = _setup(tmp_path)
    rounds_before = metrics.REGISTRY.get_sample_value("cxrnode_commitment_seconds_count", {"destination": "pacs"}) or 0
    with _delivered(tmp_path, data, orthanc) as (config, db, job_id):
        later = utcnow() + dt.timedelta(days=30)
        assert purge_expired(config, db.session_factory, now=later).studies == 0  # delivered, not committed
        committer = Committer(config, db.session_factory)
        assert committer.run_once() == 2
        assert committer.run_once() == 0  # asked once, not again while the report is due
        wait_until(lambda: _states(db, job_id) == [DeliveryState.COMMITTED.value] * 2, what="committed")
        rows = deliveries(db.session_factory, job_id)
        assert all(r.committed_at and r.committed_at >= r.commit_requested_at for r in rows)
        assert (metrics.REGISTRY.get_sample_value("cxrnode_commitment_seconds_count", {"destination": "pacs"})
                == rounds_before + 2)
        with db.session_factory() as s:
            assert s.scalar(select(Delivery).where(Delivery.job_id == job_id)).commit_timeouts == 0
        status = _status(tmp_path, data)
        assert status["commitment"] == {"pacs": {"committed": 2, "pending_commitment": 0, "timed_out": 0}}
        assert status["jobs"] == {JobState.DELIVERED.value: 1}
        assert purge_expired(config, db.session_factory, now=later).studies == 1


def test_instance_the_pacs_lacks_is_requeued_then_committed(tmp_path: Path) -> None:
    data, orthanc = _setup(tmp_path)
    failures_before = _sample("cxrnode_commitment_failures_total")
    with _delivered(tmp_path, data, orthanc) as (config, db, job_id):
        lost = deliveries(db.session_factory, job_id)[0]
        [found] = orthanc.find("Instance", {"SOPInstanceUID": lost.sop_instance_uid})
        orthanc.rest_delete(f"/instances/{found['ID']}")  # the PACS lost it after acknowledging it
        assert Committer(config, db.session_factory).run_once() == 2
        wait_until(lambda: _states(db, job_id) == [DeliveryState.COMMITTED.value, DeliveryState.PENDING.value],
                   what="one committed, one re-queued")
        requeued = next(r for r in deliveries(db.session_factory, job_id) if r.id == lost.id)
        assert requeued.last_status == 0x0112 and "0x0112 (no such object instance)" in requeued.last_error
        assert requeued.commit_transaction_uid is None
        assert _sample("cxrnode_commitment_failures_total") == failures_before + 1
        assert db.jobs(_study_of(db, job_id))[0].state == JobState.RESULTS_READY.value  # not delivered now
        assert Deliverer(config, db.session_factory).run_once() == 1  # sent again ...
        assert db.jobs(_study_of(db, job_id))[0].state == JobState.DELIVERED.value
        assert Committer(config, db.session_factory).run_once() == 1  # ... and asked again
        wait_until(lambda: _states(db, job_id) == [DeliveryState.COMMITTED.value] * 2, what="both committed")
        assert next(r for r in deliveries(db.session_factory, job_id) if r.id == lost.id).attempts == 2
        assert lost.sop_instance_uid in orthanc.sop_instance_uids()


def test_report_that_never_comes_times_out_counts_and_shows(tmp_path: Path) -> None:
    data, orthanc = _setup(tmp_path, node_port_for_orthanc=free_port(), timeout=1.0)  # reports go nowhere
    timeouts_before = _sample("cxrnode_commitment_timeouts_total")
    with _delivered(tmp_path, data, orthanc) as (config, db, job_id):
        committer = Committer(config, db.session_factory)
        assert committer.run_once() == 2
        first = {r.commit_transaction_uid for r in deliveries(db.session_factory, job_id)}
        assert committer.run_once() == 0
        status = _status(tmp_path, data)
        assert status["commitment"]["pacs"] == {"committed": 0, "pending_commitment": 2, "timed_out": 0}
        wait_until(lambda: committer.run_once() == 2, timeout=30, what="timed out and asked again")
        rows = deliveries(db.session_factory, job_id)
        assert all(r.state == DeliveryState.SENT.value and r.commit_timeouts == 1 for r in rows)
        assert all("no report within 1 s" in r.last_error for r in rows)
        assert {r.commit_transaction_uid for r in rows}.isdisjoint(first)  # a new transaction
        assert _sample("cxrnode_commitment_timeouts_total") == timeouts_before + 2
        status = _status(tmp_path, data)
        assert status["commitment"]["pacs"] == {"committed": 0, "pending_commitment": 2, "timed_out": 2}
        text = _status(tmp_path, data, as_json=False)
        assert "commitment pacs: committed=0, pending commitment=2, timed out=2" in text
        assert purge_expired(config, db.session_factory, now=utcnow() + dt.timedelta(days=30)).studies == 0


def _status(tmp_path: Path, data: dict, as_json: bool = True):  # type: ignore[no-untyped-def]
    path = write_config(tmp_path / "node.yaml", data)
    result = subprocess.run([CXR_NODE, "status", "--config", str(path), *(["--json"] if as_json else [])],
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout) if as_json else result.stdout


def test_running_node_commits_on_its_own(tmp_path: Path) -> None:
    """The whole node (listener, worker, delivery, committer threads): a study in, its results committed."""
    data, orthanc = _setup(tmp_path)
    data["study"] = {"quiet_seconds": 0.5}
    config = config_from_dict(data, environ={})
    files = write_study(tmp_path / "in", StudySpec(views=("PA",), rows=64, columns=52))
    with orthanc, running_node(config, role="all") as node:
        db = Db(config.database_url)
        try:
            assert store(files, node.port).statuses == [0]
            wait_until(lambda: [r.state for r in deliveries(db.session_factory)] == [DeliveryState.COMMITTED.value] * 2,
                       timeout=120, what="results delivered and committed")
            delivered = sorted(r.sop_instance_uid for r in deliveries(db.session_factory))
            assert sorted(orthanc.sop_instance_uids()) == delivered
        finally:
            db.close()


def test_report_on_the_same_association(tmp_path: Path, monkeypatch) -> None:
    """A commitment SCP that answers on the N-ACTION's own association (pynetdicom as the PACS; Orthanc always
    opens a new one): the report is applied without the node's listener."""
    from dicomnode import commitment

    monkeypatch.setattr(commitment, "SAME_ASSOCIATION_WAIT_SECONDS", 10.0)  # a loaded test machine: ends at the report
    from pydicom import Dataset
    from pynetdicom import AE, AllStoragePresentationContexts, evt
    from pynetdicom.sop_class import StorageCommitmentPushModel  # type: ignore[attr-defined]

    from dicomnode.commitment import STORAGE_COMMITMENT_INSTANCE, STORAGE_COMMITMENT_PUSH
    from dicomnode.listener import TRANSFER_SYNTAXES

    def on_action(event):  # type: ignore[no-untyped-def]
        info = event.action_information
        report = Dataset()
        report.TransactionUID, report.ReferencedSOPSequence = info.TransactionUID, info.ReferencedSOPSequence

        def send() -> None:  # after the N-ACTION response, on the same association
            time.sleep(0.05)
            event.assoc.send_n_event_report(report, 1, STORAGE_COMMITMENT_PUSH, STORAGE_COMMITMENT_INSTANCE)

        threading.Thread(target=send, daemon=True).start()
        return 0x0000, None

    pacs = AE(ae_title="PYPACS")
    for context in AllStoragePresentationContexts:
        pacs.add_supported_context(context.abstract_syntax, TRANSFER_SYNTAXES)  # the node's own preference
    pacs.add_supported_context(StorageCommitmentPushModel)
    port = free_port()
    server = pacs.start_server(("127.0.0.1", port), block=False, evt_handlers=[
        (evt.EVT_C_STORE, lambda event: 0x0000), (evt.EVT_N_ACTION, on_action)])
    try:
        data = config_dict(tmp_path / "data", processing={"processor": f"{PROCESSORS}:sr_and_sc",
                                                            "poll_seconds": 0.2})
        data["destinations"] = [{"name": "pacs", "ae_title": "PYPACS", "host": "127.0.0.1", "port": port,
                                 "storage_commitment": True, "retry": {"max_attempts": 3, "initial_seconds": 0.2}}]
        config = config_from_dict(data, environ={})
        config.storage.data_dir.mkdir(parents=True)
        db = Db(config.database_url)
        try:
            from dicomnode.db import upgrade_database

            upgrade_database(db.engine)
            job_id = _deliver(config, db, tmp_path)  # no listener runs: only the same association can report
            assert Committer(config, db.session_factory).run_once() == 2
            wait_until(lambda: _states(db, job_id) == [DeliveryState.COMMITTED.value] * 2, timeout=10,
                       what="committed through the same association")
        finally:
            db.close()
    finally:
        server.shutdown()
