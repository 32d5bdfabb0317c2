"""Several hosts' shape on one machine: a listener process and two worker processes (``cxr-node serve --role``)
share one PostgreSQL database and one spool; ten studies are each reasoned and delivered exactly once."""
from __future__ import annotations

import signal
import subprocess
import sys
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml
from sqlalchemy import select

from dicomnode.db import AuditEvent, Job, make_engine, make_session_factory
from dicomnode.db.states import JobState
from dicomnode.demo.synthetic import StudySpec, write_study
from dicomnode.peers.dcmtk import storescu
from dicomnode.peers.orthanc import OrthancServer
from dicomnode.peers.ports import free_port, wait_for_port
from tests.postgres_server import PostgresServer

from .conftest import wait_until

pytestmark = pytest.mark.slow
REPO = Path(__file__).resolve().parents[2]
CXR_NODE = str(Path(sys.executable).with_name("cxr-node"))
STUDIES = 10


def small_stage_book(path: Path) -> Path:
    """A hospital's edit of the stage book: quality/view and the report only (others recorded not applicable)."""
    book = yaml.safe_load((REPO / "config" / "stages.yaml").read_text())
    book["stages"] = [s for s in book["stages"] if s["number"] in (1, 8)]
    path.write_text(yaml.safe_dump(book, sort_keys=False))
    return path


@pytest.fixture(scope="module")
def postgres(tmp_path_factory: pytest.TempPathFactory) -> Iterator[PostgresServer]:
    with PostgresServer(tmp_path_factory.mktemp("pg")) as server:
        yield server


def _serve(config: Path, role: str, log: Path) -> subprocess.Popen[bytes]:
    with open(log, "ab") as handle:
        return subprocess.Popen([CXR_NODE, "serve", "--config", str(config), "--role", role],
                                stdout=handle, stderr=subprocess.STDOUT, start_new_session=True)


def test_two_workers_process_each_study_exactly_once(tmp_path: Path, postgres: PostgresServer,
                                                     qwen_demo_dir: Path) -> None:
    url = postgres.create_database("twoworkers")
    port = free_port()
    with OrthancServer(tmp_path / "orthanc") as orthanc:
        config = {
            "node": {"ae_title": "CXRNODE", "host": "127.0.0.1", "port": port, "min_free_disk_mb": 64},
            "storage": {"data_dir": str(tmp_path / "shared-spool"), "database_url": url},
            "study": {"quiet_seconds": 1},
            "destinations": [{"name": "pacs", "ae_title": orthanc.aet, "host": "127.0.0.1",
                              "port": orthanc.dicom_port, "objects": ["sr", "sc"],
                              "retry": {"max_attempts": 20, "initial_seconds": 0.5, "max_seconds": 5}}],
            "processing": {"processor": "reasoning", "poll_seconds": 0.2},
            "model": {"path": str(qwen_demo_dir), "quantization": "nf4", "device": "cpu"},
            "reasoning": {"stages_file": str(small_stage_book(tmp_path / "stages.yaml")), "max_new_tokens": 4},
            "logging": {"level": "INFO"},
        }
        config_path = tmp_path / "node.yaml"
        config_path.write_text(yaml.safe_dump(config))
        engine = make_engine(url)
        db = make_session_factory(engine)
        processes = [_serve(config_path, "worker", tmp_path / f"worker{i}.log") for i in (1, 2)]
        processes.append(_serve(config_path, "listener", tmp_path / "listener.log"))
        try:
            assert wait_for_port(port, timeout=120), (tmp_path / "listener.log").read_text()[-2000:]

            def workers_started() -> bool:
                with db() as session:
                    events = session.scalars(select(AuditEvent).where(AuditEvent.kind == "node.started")).all()
                return sum(1 for e in events if (e.detail or {}).get("role") == "worker") == 2

            wait_until(workers_started, timeout=180, what="both workers to load the model")
            specs = [StudySpec(patient_id=f"W{n:03d}", views=("PA",), rows=128, columns=104) for n in range(STUDIES)]
            files = [f for n, spec in enumerate(specs) for f in write_study(tmp_path / f"study{n}", spec)]
            done = storescu(files, "CXRNODE", "127.0.0.1", port, calling_aet="MODALITY")
            assert done.returncode == 0, done.stderr

            def all_delivered() -> bool:
                with db() as session:
                    states = session.scalars(select(Job.state)).all()
                return len(states) == STUDIES and set(states) == {JobState.DELIVERED.value}

            wait_until(all_delivered, timeout=600, what="ten studies delivered", interval=1.0)
        finally:
            for process in processes:
                if process.poll() is None:
                    process.send_signal(signal.SIGTERM)
            exit_codes = [process.wait(120) for process in processes]
        assert exit_codes == [0, 0, 0]

        with db() as session:
            jobs = session.scalars(select(Job)).all()
            claims = session.scalars(select(AuditEvent).where(AuditEvent.kind == "job.processing")).all()
        engine.dispose()
        assert Counter(c.job_id for c in claims) == Counter({job.id: 1 for job in jobs})  # each claimed once
        workers = Counter((c.detail or {}).get("worker") for c in claims)
        assert len(workers) == 2, workers  # both processes took part
        # Orthanc holds exactly one SR per study, each in its study.
        srs = orthanc.find("Instance", {"Modality": "SR"})
        sr_studies = Counter(orthanc.rest_get(f"/instances/{i['ID']}/study")["MainDicomTags"]["StudyInstanceUID"]
                             for i in srs)
        assert sr_studies == Counter({spec.study_instance_uid: 1 for spec in specs})
