"""/healthz says "degraded" when a destination is down or deliveries are dead-lettered (issue 17), read over real
HTTP from the status server, with the worker and deliverer running against a closed port."""
from __future__ import annotations

import json
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

from delivery_support import deliveries, delivery_config, destination, ingest_files

from dicomnode.db.states import DeliveryState
from dicomnode.delivery import Deliverer
from dicomnode.health import HealthChecks, StatusServer, delivery_check
from dicomnode.peers.ports import free_port
from dicomnode.processing import make_processor
from dicomnode.worker import Worker


def _healthz(server: StatusServer) -> tuple[int, dict[str, Any]]:
    try:
        with urllib.request.urlopen(server.url + "/healthz", timeout=30) as resp:
            return resp.status, json.loads(resp.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read())


def test_healthz_degraded_when_destination_down_then_dead_lettered(data_dir: Path, database_url: str,
                                                                   session_factory, study_factory) -> None:  # type: ignore[no-untyped-def]
    config = delivery_config(data_dir, database_url,
                             [destination("pacs", "PACS", free_port(), max_attempts=2, initial_seconds=0.1,
                                          max_seconds=0.2)])
    checks = HealthChecks(data_dir=data_dir, min_free_mb=0, model_required=False,
                          soft=delivery_check(session_factory))
    with StatusServer(checks, port=0) as server:
        code, body = _healthz(server)
        assert code == 200 and body["status"] == "ok"  # nothing attempted yet
        job_id = ingest_files(config, session_factory, study_factory().files)
        worker = Worker(config, session_factory, make_processor(config), worker_id="w")
        while worker.run_once():
            pass
        deliverer = Deliverer(config, session_factory, rng=lambda: 0.5)
        assert deliverer.run_once() >= 1
        code, body = _healthz(server)
        assert code == 200 and body["status"] == "degraded"
        assert body["checks"]["destination:pacs"]["ok"] is False
        assert body["checks"]["destination:pacs"]["detail"].startswith("down")
        assert body["checks"]["dead_letters"]["ok"] is True
        import time

        deadline = time.monotonic() + 30
        while time.monotonic() < deadline and any(r.state != DeliveryState.DEAD.value
                                                  for r in deliveries(session_factory, job_id)):
            deliverer.run_once()
            time.sleep(0.1)
        code, body = _healthz(server)
        assert code == 200 and body["status"] == "degraded"
        assert body["checks"]["dead_letters"]["ok"] is False
        assert "dead-lettered" in body["checks"]["dead_letters"]["detail"]
