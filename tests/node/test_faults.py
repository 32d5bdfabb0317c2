"""Fault tests with real processes and signals: ``cxr-node serve`` killed with SIGKILL during a transfer and
during delivery, and a PACS that is down while results wait. Orthanc's REST API confirms what arrived."""
from __future__ import annotations

import os
import signal
import subprocess
from collections import Counter
from pathlib import Path

import pytest
import yaml
from delivery_support import HERE, PROCESSORS, delivery_config, orthanc_destination, wait_until
from ingest_support import NodeProcess
from sqlalchemy import func, select

from dicomnode.db import AuditEvent, Delivery, Instance, Job, Study, make_engine, make_session_factory
from dicomnode.db.states import DeliveryState, JobState
from dicomnode.peers.dcmtk import acknowledged
from dicomnode.peers.orthanc import OrthancServer
from dicomnode.peers.ports import free_port

pytestmark = pytest.mark.slow
SC_CLASS = "1.2.840.10008.5.1.4.1.1.7"


class Setup:
    """A node config on SQLite with one Orthanc destination, written to YAML for ``cxr-node serve``."""

    def __init__(self, tmp_path: Path, data_dir: Path, orthanc: OrthancServer, quiet_seconds: float = 2.0):
        self.port = free_port()
        self.url = f"sqlite:///{data_dir / 'cxr-node.sqlite'}"
        self.data_dir = data_dir
        config = delivery_config(
            data_dir, self.url,
            [orthanc_destination(orthanc, objects=["sc"], max_attempts=1000, initial_seconds=0.3, max_seconds=1.5)],
            processor=f"{PROCESSORS}:sc", node={"port": self.port}, study={"quiet_seconds": quiet_seconds},
        )
        self.config_path = tmp_path / "node.yaml"
        self.config_path.write_text(yaml.safe_dump(config.model_dump(mode="json", by_alias=True)))
        self.engine = make_engine(self.url)
        self.db = make_session_factory(self.engine)
        self.env = {"PYTHONPATH": str(HERE)}

    def node(self, name: str) -> NodeProcess:
        return NodeProcess(self.config_path, self.port, role="all", log_path=self.config_path.with_name(name),
                           env=self.env)

    def scalar_list(self, stmt):  # type: ignore[no-untyped-def]
        with self.db() as session:
            return list(session.scalars(stmt))

    def all_delivered(self, studies: int) -> bool:
        with self.db() as session:
            n_studies = session.scalar(select(func.count()).select_from(Study))
            states = set(session.scalars(select(Job.state)))
            pending = session.scalar(select(func.count()).select_from(Delivery)
                                     .where(Delivery.state != DeliveryState.SENT.value))
        return n_studies == studies and states == {JobState.DELIVERED.value} and pending == 0

    def assert_delivered_exactly_once(self, orthanc: OrthancServer) -> None:
        """Per study, Orthanc holds one SC per job; the SCs it holds are exactly our SENT delivery rows."""
        with self.db() as session:
            rows = list(session.scalars(select(Delivery)))
            jobs_per_study = Counter(session.scalars(select(Study.study_instance_uid).join(Job)))
        held = orthanc.find("Instance", {"SOPClassUID": SC_CLASS})
        held_uids = [i["MainDicomTags"]["SOPInstanceUID"] for i in held]
        assert len(held_uids) == len(set(held_uids))
        assert sorted(held_uids) == sorted(r.sop_instance_uid for r in rows)
        assert all(r.state == DeliveryState.SENT.value and r.last_status == 0 for r in rows)
        per_study = Counter(orthanc.rest_get(f"/instances/{i['ID']}/study")["MainDicomTags"]["StudyInstanceUID"]
                            for i in held)
        assert per_study == jobs_per_study

    def close(self) -> None:
        self.engine.dispose()


def _storescu(files: list[Path], port: int) -> subprocess.Popen[str]:
    return subprocess.Popen(["storescu", "-v", "-aet", "FAULTSCU", "-aec", "CXRNODE", "127.0.0.1", str(port),
                             *map(str, files)], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def _kill9(node: NodeProcess) -> None:
    assert node.process is not None
    os.kill(node.process.pid, signal.SIGKILL)
    node.process.wait(60)


def test_kill_during_transfer_loses_no_acknowledged_instance(tmp_path, data_dir, orthanc, study_factory):
    setup = Setup(tmp_path, data_dir, orthanc)
    studies = [study_factory(rows=512, columns=416) for _ in range(20)]
    files = [f for s in studies for f in s.files]
    node = setup.node("run1.log").start()
    try:
        sender = _storescu(files, setup.port)
        wait_until(lambda: len(setup.scalar_list(select(Instance.id))) >= 6, timeout=120, interval=0.05,
                   what="some instances stored")
        _kill9(node)
        output, _ = sender.communicate(timeout=120)
    finally:
        node.kill()
    acked = acknowledged(output)
    # really killed mid-transfer (the 6th row may be committed before its 0x0000 left the node: acks can trail)
    assert 0 < len(acked) < len(files), output[-2000:]

    stored = {i.sop_instance_uid: i for i in setup.scalar_list(select(Instance))}
    for uid in acked:  # every 0x0000 is in the DB and in the spool, before any restart
        assert uid in stored, f"acknowledged {uid} missing from the database"
        assert (data_dir / stored[uid].path).is_file(), f"acknowledged {uid} missing from the spool"
    n_studies = len(setup.scalar_list(select(Study.id)))

    with setup.node("run2.log") as node2:
        wait_until(lambda: setup.all_delivered(n_studies), timeout=240, what="every study delivered")
        setup.assert_delivered_exactly_once(orthanc)
        assert node2.terminate() == 0  # SIGTERM: graceful exit
    setup.close()


def test_kill_during_delivery_never_duplicates(tmp_path, data_dir, study_factory):
    pacs = OrthancServer(tmp_path / "pacs", aet="ORTHANC")  # not running yet: results pile up
    setup = Setup(tmp_path, data_dir, pacs)
    studies = [study_factory(views=("PA",)) for _ in range(10)]
    files = [f for s in studies for f in s.files]
    try:
        node = setup.node("run1.log").start()
        try:
            sender = _storescu(files, setup.port)
            assert sender.wait(120) == 0
            wait_until(lambda: len(setup.scalar_list(select(Delivery.id).where(Delivery.attempts >= 1))) == 10,
                       timeout=180, what="10 results waiting for the PACS")
            pacs.start()
            wait_until(lambda: pacs.statistics()["CountInstances"] >= 1, timeout=120, interval=0.02,
                       what="delivery under way")
            _kill9(node)
        finally:
            node.kill()
        with setup.node("run2.log") as node2:
            wait_until(lambda: setup.all_delivered(10), timeout=240, what="every study delivered")
            setup.assert_delivered_exactly_once(pacs)
            assert node2.terminate() == 0
    finally:
        pacs.stop()
        setup.close()


def test_pacs_down_while_results_wait(tmp_path, data_dir, orthanc, study_factory):
    setup = Setup(tmp_path, data_dir, orthanc)
    orthanc.stop()
    studies = [study_factory(views=("PA",)) for _ in range(5)]
    files = [f for s in studies for f in s.files]
    with setup.node("run.log") as node:
        sender = _storescu(files, setup.port)
        assert sender.wait(120) == 0
        wait_until(lambda: len(setup.scalar_list(select(Delivery.id).where(Delivery.attempts >= 2))) == 5,
                   timeout=180, what="results retried while the PACS is down")
        orthanc.start()
        wait_until(lambda: setup.all_delivered(5), timeout=120, what="every study delivered")
        setup.assert_delivered_exactly_once(orthanc)
        sent_events = Counter(setup.scalar_list(
            select(AuditEvent.sop_instance_uid).where(AuditEvent.kind == "delivery.sent")))
        assert len(sent_events) == 5 and set(sent_events.values()) == {1}
        with setup.db() as session:
            assert all(r.attempts >= 3 for r in session.scalars(select(Delivery)))
        assert node.terminate() == 0
    setup.close()
