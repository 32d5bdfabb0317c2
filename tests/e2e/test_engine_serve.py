"""``cxr-node serve`` with ``model.backend: openai`` against a real vLLM engine that dies in the middle of a study.

storescu -> node (``cxr-node serve``, SQLite) -> its own vLLM CPU engine (not the session's: this test kills it) ->
SR + reasoning pages -> Orthanc. The engine is SIGKILLed (its whole process group) once it has answered some of the
study's questions: the job goes back to QUEUED with the reason (not FAILED), ``/healthz`` says the engine is down,
nothing is sent. The engine is started again on the same port: the same job finishes, the study has exactly one
result set in Orthanc, and the SR names the engine.
"""
from __future__ import annotations

import io
import json
import urllib.error
import urllib.request
from pathlib import Path

import pydicom
import pytest
import yaml
from engine_fixtures import ENGINE_TEST_TIMEOUT, START_TIMEOUT
from ingest_support import NodeProcess, store
from sqlalchemy import select

from dicomnode.db import AuditEvent, Job, make_engine, make_session_factory
from dicomnode.db.states import JobState
from dicomnode.demo.run import results_of_study
from dicomnode.demo.synthetic import StudySpec, write_study
from dicomnode.peers.orthanc import OrthancServer
from dicomnode.peers.ports import free_port
from tests.vllm_engine import SKIP_ENV, VllmServer, engine_disabled

from .conftest import wait_until

pytestmark = [pytest.mark.slow, pytest.mark.timeout(ENGINE_TEST_TIMEOUT)]


def _healthz(port: int) -> tuple[int, dict]:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=10) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read())


def _chat_requests(engine: VllmServer) -> int:
    return engine.log_tail(10_000_000).count("POST /v1/chat/completions")


def test_engine_dies_mid_study_and_the_job_finishes_once_it_is_back(tmp_path: Path, engine_model_dir: Path) -> None:
    if engine_disabled():
        pytest.skip(f"{SKIP_ENV}=1: the vLLM engine is switched off")
    engine = VllmServer(engine_model_dir, tmp_path / "vllm")
    engine.start(START_TIMEOUT)
    served_id = str(engine.get("/models")["data"][0]["id"])
    try:
        with OrthancServer(tmp_path / "orthanc") as orthanc:
            port, metrics_port = free_port(), free_port()
            config = {
                "node": {"ae_title": "CXRNODE", "host": "127.0.0.1", "port": port, "min_free_disk_mb": 16},
                "storage": {"data_dir": str(tmp_path / "data")},
                "study": {"quiet_seconds": 1},
                "destinations": [{"name": "pacs", "ae_title": orthanc.aet, "host": "127.0.0.1",
                                  "port": orthanc.dicom_port, "objects": ["sr", "sc"]}],
                "processing": {"processor": "reasoning", "poll_seconds": 0.2},
                "model": {"backend": "openai", "url": engine.url, "timeout_seconds": 30},
                "metrics": {"enabled": True, "port": metrics_port},
                "logging": {"level": "INFO"},
            }
            config_path = tmp_path / "node.yaml"
            config_path.write_text(yaml.safe_dump(config))
            spec = StudySpec(views=("PA",), rows=256, columns=208, patient_id="ENG001")
            files = write_study(tmp_path / "in", spec)
            with NodeProcess(config_path, port) as node:
                db = make_session_factory(make_engine(f"sqlite:///{tmp_path / 'data' / 'cxr-node.sqlite'}"))

                def the_job() -> Job | None:
                    with db() as session:
                        return session.scalar(select(Job).order_by(Job.id.desc()))

                assert store(files, port).statuses == [0] * len(files)
                before = _chat_requests(engine)
                wait_until(lambda: (job := the_job()) is not None and job.state == JobState.PROCESSING.value
                           and _chat_requests(engine) >= before + 3, timeout=300, what="the study half reasoned",
                           interval=0.1)
                engine.kill()

                requeued = wait_until(lambda: (job := the_job()) is not None and job.state == JobState.QUEUED.value
                                      and job.error and job, timeout=120, what="the job back in the queue")
                assert "engine" in requeued.error.lower() or engine.url in requeued.error, requeued.error
                status, body = _healthz(metrics_port)
                assert status == 503 and body["checks"]["engine"]["ok"] is False, body
                assert results_of_study(orthanc, spec.study_instance_uid) == ([], [])  # nothing half-sent

                engine.start(START_TIMEOUT)  # the same port: the node's URL is good again
                done = wait_until(lambda: (job := the_job()) is not None and job.state == JobState.DELIVERED.value
                                  and job, timeout=900, what="the job delivered after the engine came back",
                                  interval=1.0)
                assert done.id == requeued.id and done.attempts >= 2
                status, body = _healthz(metrics_port)
                assert status == 200 and body["checks"]["engine"]["ok"] is True, body
                with db() as session:
                    kinds = [e.kind for e in session.scalars(select(AuditEvent).where(AuditEvent.job_id == done.id))]
                assert "job.requeued" in kinds and "job.failed" not in kinds
                assert node.terminate() == 0

            srs, pages = results_of_study(orthanc, spec.study_instance_uid)
            assert len(srs) == 1 and len(pages) >= 1  # one result set, not one per attempt
            assert len({orthanc.rest_get(f"/instances/{p['ID']}/series")["ID"] for p in pages}) == 1
            sr = pydicom.dcmread(io.BytesIO(orthanc.rest_get_bytes(f"/instances/{srs[0]['ID']}/file")))
            [ours] = [e for e in sr.ContributingEquipmentSequence
                      if any(str(v).startswith("engine ") for v in e.get("SoftwareVersions", []))]
            assert str(ours.ManufacturerModelName) == served_id[:64]  # the served model, by its engine's id
    finally:
        engine.stop()
