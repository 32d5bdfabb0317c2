"""The message types get the delivery loop's durability unchanged (as tests/node/test_destination_types.py shows for
a plug-in type): a message stored before its row, retried with back-off while its peer is down, dead-lettered, then
`cxr-node retry` and the dashboard's re-send deliver it to the real peer, with the audit trail and the metrics."""
from __future__ import annotations

import datetime as dt
from pathlib import Path

import pytest
import yaml
from delivery_support import deliveries, job
from ris_support import deliver_until_settled, fhir_destination, hl7_destination, process, ris_config
from sqlalchemy import select

from dicomnode import metrics
from dicomnode.cli import main as cli_main
from dicomnode.dashboard import actions, queries
from dicomnode.db.models import AuditEvent
from dicomnode.db.states import DeliveryState, JobState
from dicomnode.delivery import Deliverer
from dicomnode.peers.node_peers import FhirServer, MllpReceiver
from dicomnode.peers.ports import free_port

pytestmark = pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)
RETRY = {"max_attempts": 2, "initial_seconds": 0.05, "max_seconds": 0.1}


def _peer(kind: str, directory: Path, port: int) -> MllpReceiver | FhirServer:
    return MllpReceiver(directory, port=port) if kind == "hl7" else FhirServer(directory, port=port)


@pytest.mark.parametrize("kind", ["hl7", "fhir"])
def test_dead_letter_retry_and_resend(kind, tmp_path, data_dir, database_url, session_factory,
                                      study_factory) -> None:
    port = free_port()
    destination = (hl7_destination(port, "ris", retry=RETRY, timeout_seconds=2) if kind == "hl7"
                   else fhir_destination(f"http://127.0.0.1:{port}/fhir/R4", "ris", retry=RETRY))
    config = ris_config(data_dir, database_url, [destination])
    job_id = process(config, session_factory, study_factory().files)
    [row] = deliveries(session_factory, job_id)
    message = (data_dir / row.path).read_bytes()  # on disk before anything was sent
    failures = metrics.REGISTRY.get_sample_value("cxrnode_delivery_failures_total", {"destination": "ris"}) or 0
    deliverer = Deliverer(config, session_factory, rng=lambda: 0.5)
    deliverer.run_once()
    [first] = deliveries(session_factory, job_id)
    assert first.state == DeliveryState.PENDING.value and first.next_attempt_at > dt.datetime.now(dt.UTC)
    deliver_until_settled(deliverer, session_factory, job_id)  # the peer is down: dead after 2 attempts
    failed = job(session_factory, job_id)
    assert failed.state == JobState.FAILED.value
    [dead] = deliveries(session_factory, job_id)
    assert (dead.state, dead.attempts) == (DeliveryState.DEAD.value, 2) and "127.0.0.1" in (dead.last_error or "")
    assert metrics.REGISTRY.get_sample_value("cxrnode_delivery_failures_total", {"destination": "ris"}) \
        == failures + 2
    [dashboard_row] = queries.destination_rows(session_factory, config)
    assert (dashboard_row.dead, dashboard_row.pending, dashboard_row.address) == (1, 0, config.destinations[0].address)
    with _peer(kind, tmp_path / "peer", port) as peer:
        config_file = tmp_path / "node.yaml"
        config_file.write_text(yaml.safe_dump(config.model_dump(mode="json", by_alias=True)))
        assert cli_main(["retry", str(job_id), "--config", str(config_file)]) == 0  # `cxr-node retry`
        deliver_until_settled(deliverer, session_factory, job_id)
        assert job(session_factory, job_id).state == JobState.DELIVERED.value
        assert len(peer.received()) == 1
        assert actions.resend(session_factory, config, job_id, "ris", "admin") == "1 objects queued for ris"
        deliver_until_settled(deliverer, session_factory, job_id)
        assert len(peer.received()) == 2  # the same message again (the same control ID / resource ids)
        received = peer.received()
    assert (data_dir / row.path).read_bytes() == message  # the stored message never changed
    assert len(deliveries(session_factory, job_id)) == 1  # re-sent, never queued twice
    if kind == "hl7":
        assert received[0]["raw"] == received[1]["raw"]
        assert received[0]["fields"]["control_id"] == row.payload_key
    else:
        assert [r["resources"][0]["id"] for r in received][0] == [r["resources"][0]["id"] for r in received][1]
    with session_factory() as session:
        kinds = list(session.scalars(select(AuditEvent.kind).where(AuditEvent.job_id == job_id)
                                     .order_by(AuditEvent.id)))
    assert kinds.count("delivery.dead") == 1 and kinds.count("delivery.sent") == 2 and "job.triage" in kinds
