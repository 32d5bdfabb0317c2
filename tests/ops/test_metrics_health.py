"""Metrics and health endpoints: scraped over real HTTP from the status server."""
from __future__ import annotations

import json
import urllib.error
import urllib.request
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families
from sqlalchemy import create_engine

from dicomnode import metrics
from dicomnode.datadir import disk_free_ok, free_disk_mb
from dicomnode.health import HealthChecks, StatusServer, database_check
from dicomnode.peers.ports import free_port


def _get(url: str) -> tuple[int, bytes, str]:
    try:
        with urllib.request.urlopen(url, timeout=30) as resp:
            return resp.status, resp.read(), resp.headers.get("Content-Type", "")
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read(), exc.headers.get("Content-Type", "")


def _samples(server: StatusServer) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    status, body, ctype = _get(server.url + "/metrics")
    assert status == 200 and ctype.startswith("text/plain")
    out = {}
    for family in text_string_to_metric_families(body.decode()):
        for s in family.samples:
            out[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return out


@pytest.fixture
def sqlite_check(tmp_path: Path):
    engine = create_engine(f"sqlite:///{tmp_path / 'db.sqlite'}")
    yield database_check(engine)
    engine.dispose()


def test_metrics_scrape_reflects_calls(tmp_path: Path, sqlite_check) -> None:
    counts = {"QUEUED": 3, "DELIVERED": 5}
    metrics.set_state_source(lambda: dict(counts))
    checks = HealthChecks(data_dir=tmp_path, min_free_mb=0, database=sqlite_check, model_required=False)
    try:
        with StatusServer(checks, port=0) as server:
            before = _samples(server)
            metrics.instances_received.inc()
            metrics.instances_received.inc()
            metrics.observe_stage("s3", 1.5)
            with metrics.timed_model("generate"):
                pass
            metrics.add_tokens("generated", 42)
            metrics.record_delivery("pacs", ok=True)
            metrics.record_delivery("pacs", ok=False)
            metrics.observe_study(0.25)
            metrics.reject_association("low_disk")
            metrics.reject_instance("invalid_uid")
            counts["QUEUED"] = 7
            after = _samples(server)
    finally:
        metrics.set_state_source(None)

    def delta(name: str, **labels: str) -> float:
        key = (name, tuple(sorted(labels.items())))
        return after[key] - before.get(key, 0.0)

    assert delta("cxrnode_instances_received_total") == 2
    assert delta("cxrnode_stage_seconds_count", stage="s3") == 1
    assert delta("cxrnode_stage_seconds_sum", stage="s3") == pytest.approx(1.5)
    assert delta("cxrnode_model_seconds_count", kind="generate") == 1
    assert delta("cxrnode_tokens_total", kind="generated") == 42
    assert delta("cxrnode_delivery_attempts_total", destination="pacs") == 2
    assert delta("cxrnode_delivery_failures_total", destination="pacs") == 1
    assert delta("cxrnode_study_seconds_count") == 1
    assert delta("cxrnode_associations_rejected_total", reason="low_disk") == 1
    assert delta("cxrnode_instances_rejected_total", reason="invalid_uid") == 1
    assert before[("cxrnode_queue_depth", ())] == 3
    assert after[("cxrnode_queue_depth", ())] == 7
    assert after[("cxrnode_studies", (("state", "DELIVERED"),))] == 5
    assert after[("cxrnode_database_scrape_ok", ())] == 1


def test_broken_state_source_does_not_break_scrape(tmp_path: Path) -> None:
    def broken() -> dict[str, int]:
        raise RuntimeError("database is down")

    metrics.set_state_source(broken)
    try:
        with StatusServer(HealthChecks(data_dir=tmp_path, min_free_mb=0, model_required=False), port=0) as server:
            samples = _samples(server)
    finally:
        metrics.set_state_source(None)
    assert samples[("cxrnode_database_scrape_ok", ())] == 0


def test_healthz_healthy(tmp_path: Path, sqlite_check) -> None:
    metrics.set_model_loaded(True)
    try:
        checks = HealthChecks(data_dir=tmp_path / "spool", min_free_mb=1, database=sqlite_check)
        with StatusServer(checks, port=free_port()) as server:
            status, body, ctype = _get(server.url + "/healthz")
            _, metrics_body, _ = _get(server.url + "/metrics")
    finally:
        metrics.set_model_loaded(False)
    report = json.loads(body)
    assert status == 200 and ctype == "application/json"
    assert report["status"] == "ok"
    assert {k: v["ok"] for k, v in report["checks"].items()} == {"database": True, "disk": True, "model": True}
    assert b"cxrnode_model_loaded 1.0" in metrics_body


def test_healthz_unhealthy_low_disk_and_no_model(tmp_path: Path, sqlite_check) -> None:
    floor = free_disk_mb(tmp_path) + 10 * 1024 * 1024  # 10 TiB above what is free
    checks = HealthChecks(data_dir=tmp_path, min_free_mb=floor, database=sqlite_check)
    with StatusServer(checks, port=0) as server:
        status, body, _ = _get(server.url + "/healthz")
        missing, _, _ = _get(server.url + "/nothing")
    report = json.loads(body)
    assert status == 503 and report["status"] == "unhealthy"
    assert report["checks"]["database"]["ok"] is True
    assert report["checks"]["disk"]["ok"] is False and "low disk" in report["checks"]["disk"]["detail"]
    assert report["checks"]["model"] == {"ok": False, "detail": "not loaded"}
    assert missing == 404


def test_healthz_unhealthy_database_unreachable(tmp_path: Path) -> None:
    port = free_port()  # nothing listens here
    engine = create_engine(f"postgresql+psycopg://postgres@127.0.0.1:{port}/x", connect_args={"connect_timeout": 5})
    checks = HealthChecks(data_dir=tmp_path, min_free_mb=0, database=database_check(engine), model_required=False)
    try:
        with StatusServer(checks, port=0) as server:
            status, body, _ = _get(server.url + "/healthz")
    finally:
        engine.dispose()
    report = json.loads(body)
    assert status == 503
    assert report["checks"]["database"]["ok"] is False
    assert "OperationalError" in report["checks"]["database"]["detail"]
    assert report["checks"]["disk"]["ok"] is True


def test_disk_free_ok(tmp_path: Path) -> None:
    ok, detail = disk_free_ok(tmp_path / "not" / "yet" / "created", 0)
    assert ok and "MiB free" in detail
    ok, reason = disk_free_ok(tmp_path, free_disk_mb(tmp_path) + 1e9)
    assert not ok and reason.startswith("low disk")
