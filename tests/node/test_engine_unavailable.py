"""Serving engine down (remote backend): unreachable, HTTP 5xx or a timeout raise ``EngineUnavailable``; the flow
lets it through (no record with failed stages) and the worker re-queues the job (QUEUED, not FAILED), waits
before its next claim and /healthz shows the engine down. An in-process fake OpenAI server stands in for the
engine: a real one cannot produce these failures on demand (the happy path runs against vLLM in
tests/inference/test_remote_engine.py)."""
from __future__ import annotations

import json
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest
from delivery_support import delivery_config, ingest_files, job

from dicomnode import metrics
from dicomnode.db import make_engine, make_session_factory, upgrade_database
from dicomnode.db.states import JobState
from dicomnode.demo.synthetic import make_study
from dicomnode.health import HealthChecks
from dicomnode.peers.ports import free_port
from dicomnode.worker import Worker
from inference.chat import EngineUnavailable
from inference.model.remote import connect


class _FakeEngine(BaseHTTPRequestHandler):
    mode = "503"  # what /chat/completions does: "503" or "slow"

    def do_GET(self) -> None:  # stdlib name
        if self.path == "/v1/models":
            self._json(200, {"data": [{"id": "fake-vlm", "root": "/nonexistent"}]})
        elif self.path == "/version":
            self._json(200, {"version": "0.0-fake"})
        else:
            self._json(404, {})

    def do_POST(self) -> None:
        self.rfile.read(int(self.headers.get("Content-Length", 0)))
        if type(self).mode == "slow":
            time.sleep(2)
            self._json(200, {})
        else:
            self._json(503, {"error": "engine overloaded"})

    def _json(self, status: int, body: dict[str, Any]) -> None:
        data = json.dumps(body).encode()
        try:
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)
        except OSError:
            pass

    def log_message(self, *args: Any) -> None:
        pass


@pytest.fixture
def fake_engine():
    server = ThreadingHTTPServer(("127.0.0.1", free_port()), _FakeEngine)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    _FakeEngine.mode = "503"
    yield f"http://127.0.0.1:{server.server_address[1]}/v1"
    server.shutdown()
    server.server_close()


def test_unreachable_5xx_and_timeout_raise_engine_unavailable(fake_engine: str) -> None:
    from inference.chat import Turn
    from inference.flow import run_flow

    with pytest.raises(EngineUnavailable):
        connect(f"http://127.0.0.1:{free_port()}/v1", timeout_seconds=2)
    model = connect(fake_engine, timeout_seconds=0.5)
    assert model.info.model_name == "fake-vlm" and model.info.engine_version == "0.0-fake"
    with pytest.raises(EngineUnavailable, match="503"):
        model.answer([], Turn("user", "Is there a pneumothorax?"), 8)
    with pytest.raises(EngineUnavailable):  # the flow does not turn an engine outage into failed stages
        run_flow(model, make_study())
    _FakeEngine.mode = "slow"
    with pytest.raises(EngineUnavailable):
        model.answer([], Turn("user", "Is there a pneumothorax?"), 8)


def test_worker_requeues_job_when_engine_is_down(fake_engine, data_dir, sqlite_url, study_factory) -> None:
    from dicomnode.reasoning import ReasoningProcessor

    engine = make_engine(sqlite_url)
    upgrade_database(engine)
    factory = make_session_factory(engine)
    config = delivery_config(data_dir, sqlite_url, [], processor="passthrough")
    study = study_factory()
    job_id = ingest_files(config, factory, study.files)
    processor = ReasoningProcessor(config, model=connect(fake_engine, timeout_seconds=2))
    worker = Worker(config, factory, processor, worker_id="w1")
    assert worker.run_once() is True
    requeued = job(factory, job_id)
    assert requeued.state == JobState.QUEUED.value and requeued.attempts == 1
    assert "serving engine unavailable" in (requeued.error or "")
    assert worker._engine_backoff >= 1.0
    ok, report = HealthChecks(data_dir=str(data_dir), min_free_mb=0, model_required=True,
                              model_loaded=lambda: True).report()
    assert not ok and report["checks"]["engine"]["ok"] is False
    assert worker.run_once() is True  # claimed again: still down, still queued, never FAILED
    assert job(factory, job_id).state == JobState.QUEUED.value and job(factory, job_id).attempts == 2
    metrics._engine_state.clear()
    engine.dispose()


def test_node_starts_while_the_engine_is_down_and_connects_with_a_later_study(
        fake_engine, data_dir, sqlite_url, study_factory) -> None:
    from dicomnode.reasoning import ReasoningProcessor

    engine = make_engine(sqlite_url)
    upgrade_database(engine)
    factory = make_session_factory(engine)
    config = delivery_config(data_dir, sqlite_url, [], processor="passthrough")
    down_url = f"http://127.0.0.1:{free_port()}/v1"
    config = config.model_copy(update={"model": config.model.model_copy(
        update={"backend": "openai", "url": down_url, "timeout_seconds": 2})})
    processor = ReasoningProcessor(config)  # no engine yet: the processor starts without a model
    state = metrics.engine_state()
    assert processor.model is None and state is not None and state[0] is False
    job_id = ingest_files(config, factory, study_factory().files)
    worker = Worker(config, factory, processor, worker_id="w1")
    assert worker.run_once() is True
    assert job(factory, job_id).state == JobState.QUEUED.value  # re-queued, not FAILED
    # the engine comes up (here: the fake, which answers 503 to chat requests): the next claim connects to it
    processor.config = config.model_copy(update={"model": config.model.model_copy(update={"url": fake_engine})})
    assert worker.run_once() is True
    assert processor.model is not None and processor.model.info.model_name == "fake-vlm"
    assert job(factory, job_id).state == JobState.QUEUED.value and job(factory, job_id).attempts == 2
    metrics._engine_state.clear()
    engine.dispose()
