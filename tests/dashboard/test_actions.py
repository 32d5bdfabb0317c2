"""Actions and what is shown, through the real listener (DCMTK storescu -> node), without a browser."""
from __future__ import annotations

from pathlib import Path

from ingest_support import wait_until
from sqlalchemy import select

from dicomnode.db.models import AuditEvent, Study
from dicomnode.demo.synthetic import StudySpec, write_study
from dicomnode.node import Node
from dicomnode.peers.dcmtk import storescu

from .conftest import TOKEN, TOKEN_ENV, Client, csrf_of, dashboard_config


def _send(node: Node, folder: Path, spec: StudySpec) -> None:
    done = storescu(write_study(folder, spec), "CXRNODE", "127.0.0.1", node.port, calling_aet="MODALITY")
    assert done.returncode == 0, done.stderr


def _state(node: Node, uid: str) -> str | None:
    assert node.session_factory is not None
    with node.session_factory() as s:
        return s.scalar(select(Study.state).where(Study.study_instance_uid == uid))


def test_force_complete_a_receiving_study(tmp_path: Path, token_env: str) -> None:
    spec = StudySpec(patient_name="Waiting^Wim", patient_id="WAIT0001", accession_number="WAIT1", rows=128,
                     columns=112)
    config = dashboard_config(tmp_path / "node", {"type": "token", "token_env": TOKEN_ENV})  # quiet 1 h
    with Node(config, role="all") as node:
        _send(node, tmp_path / "study", spec)
        uid = spec.study_instance_uid
        assert _state(node, uid) == "RECEIVING"
        client = Client(node.dashboard.url.rstrip("/"))
        assert client.login(TOKEN).status == 303
        page = client.get(f"/studies/{uid}")
        assert page.status == 200 and 'id="force-complete"' in page.body
        assert "Waiting^Wim" in page.body and "WAIT0001" in page.body  # an authenticated admin sees the patient
        assert page.body.count('class="selected"') == 2  # PA + lateral received and selected
        done = client.post(f"/studies/{uid}/complete", {"csrf_token": csrf_of(page.body), "back": f"/studies/{uid}"})
        assert done.status == 303 and "completed%3A%20QUEUED" in done.headers["location"]
        # the passthrough worker takes it from the queue
        wait_until(lambda: _state(node, uid) not in ("RECEIVING", "QUEUED", "PROCESSING"), timeout=60,
                   what="the completed study to be processed")
        again = client.post(f"/studies/{uid}/complete", {"csrf_token": csrf_of(page.body)})
        assert "not%20done" in again.headers["location"]
        with node.session_factory() as s:
            users = [e.detail["user"] for e in s.scalars(select(AuditEvent).where(
                AuditEvent.kind == "dashboard.force_complete"))]
        assert users == ["token"]


def test_patient_data_only_for_an_authenticated_admin(tmp_path: Path) -> None:
    spec = StudySpec(patient_name="Hidden^Hanna", patient_id="HIDE0001", accession_number="HIDE1", rows=128,
                     columns=112)
    with Node(dashboard_config(tmp_path / "node", None), role="all") as node:  # loopback, no auth
        _send(node, tmp_path / "study", spec)
        client = Client(node.dashboard.url.rstrip("/"))
        listing = client.get("/studies?q=HIDE1")
        detail = client.get(f"/studies/{spec.study_instance_uid}")
        for page in (listing, detail):
            assert page.status == 200 and spec.study_instance_uid in page.body
            assert "Hidden" not in page.body and "HIDE0001" not in page.body
        assert client.get(f"/studies?q={spec.study_instance_uid[:20]}").body.count("data-uid=") == 1
        assert client.get("/studies?q=NOPE").body.count("data-uid=") == 0
