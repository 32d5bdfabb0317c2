"""Listener behaviour at the association level: echo, calling-AE whitelist, limits, low disk, logs, CLI."""
from __future__ import annotations

import json
import logging
import subprocess
from pathlib import Path

import pytest
from ingest_support import (
    CXR_NODE,
    NODE_AET,
    Db,
    config_dict,
    make_config,
    running_node,
    store,
    wait_until,
    write_config,
)
from pynetdicom import AE
from sqlalchemy import select

from dicomnode import metrics
from dicomnode.db import AuditEvent
from dicomnode.demo.synthetic import StudySpec, write_study
from dicomnode.peers.dcmtk import echoscu

SMALL = {"rows": 128, "columns": 104}


def _audits(db: Db, kind: str) -> list[AuditEvent]:
    with db.session_factory() as s:
        return list(s.scalars(select(AuditEvent).where(AuditEvent.kind == kind).order_by(AuditEvent.id)))


def test_echo_with_echoscu_and_cli(tmp_path: Path) -> None:
    config = make_config(tmp_path / "data")
    with running_node(config) as node:
        assert echoscu(NODE_AET, "127.0.0.1", node.port).returncode == 0
        result = subprocess.run([CXR_NODE, "echo", f"{NODE_AET}@127.0.0.1:{node.port}"],
                                capture_output=True, text=True, timeout=120)
        assert result.returncode == 0, result.stderr
        assert "0x0000" in result.stdout


def test_unknown_calling_ae_is_rejected(tmp_path: Path) -> None:
    config = make_config(tmp_path / "data", node={"allowed_calling_aets": ["MODALITY1"]})
    files = write_study(tmp_path / "in", StudySpec(views=("PA",), **SMALL))
    labels = {"reason": "calling AE title not allowed"}
    before = metrics.REGISTRY.get_sample_value("cxrnode_associations_rejected_total", labels) or 0.0
    with running_node(config) as node:
        db = Db(config.database_url)
        refused = store(files, node.port, calling_aet="INTRUDER")
        assert refused.returncode != 0 and refused.statuses == []
        assert "Association Rejected" in refused.output
        assert echoscu(NODE_AET, "127.0.0.1", node.port, calling_aet="INTRUDER").returncode != 0
        assert db.instances() == []
        rejected = _audits(db, "association.rejected")
        assert rejected and rejected[0].calling_aet == "INTRUDER"
        assert rejected[0].detail["reason"] == "calling AE title not allowed"
        assert rejected[0].peer.startswith("127.0.0.1:")
        assert metrics.REGISTRY.get_sample_value("cxrnode_associations_rejected_total", labels) == before + 2
        ok = store(files, node.port, calling_aet="MODALITY1")
        assert ok.statuses == [0]
        assert len(db.instances()) == 1
        db.close()


def test_low_disk_refuses_new_associations(tmp_path: Path) -> None:
    config = make_config(tmp_path / "data", node={"min_free_disk_mb": 1 << 40})  # more than any disk has
    files = write_study(tmp_path / "in", StudySpec(views=("PA",), **SMALL))
    with running_node(config) as node:
        db = Db(config.database_url)
        run = store(files, node.port)
        assert run.returncode != 0 and run.statuses == [] and "Association Rejected" in run.output
        assert db.instances() == []
        wait_until(lambda: _audits(db, "association.rejected"), 30)
        assert _audits(db, "association.rejected")[0].detail["reason"] == "low free disk space"
        db.close()


def test_max_associations_limit(tmp_path: Path) -> None:
    config = make_config(tmp_path / "data", node={"max_associations": 1})
    with running_node(config) as node:
        ae = AE(ae_title="HOLDER")
        ae.add_requested_context("1.2.840.10008.1.1")
        held = ae.associate("127.0.0.1", node.port, ae_title=NODE_AET)
        try:
            assert held.is_established
            assert echoscu(NODE_AET, "127.0.0.1", node.port).returncode != 0
        finally:
            held.release()
        wait_until(lambda: node.listener.active_associations() == 0, 30)
        assert echoscu(NODE_AET, "127.0.0.1", node.port).returncode == 0


def test_patient_name_and_id_never_in_info_logs(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    spec = StudySpec(patient_name="Zzsecret^Yvonne", patient_id="PIDSECRET123", views=("PA",), **SMALL)
    files = write_study(tmp_path / "in", spec)
    config = make_config(tmp_path / "data")
    caplog.set_level(logging.INFO)
    with running_node(config) as node:
        assert store(files, node.port).statuses == [0]
        db = Db(config.database_url)
        wait_until(lambda: db.study_state(spec.study_instance_uid) == "QUEUED", 60)
        with db.session_factory() as s:
            details = json.dumps([e.detail for e in s.scalars(select(AuditEvent))], default=str)
        db.close()
    text = caplog.text + " ".join(json.dumps(getattr(r, "fields", {}), default=str) for r in caplog.records)
    assert "instance.stored" in text and spec.study_instance_uid in text
    for secret in ("Zzsecret", "Yvonne", "PIDSECRET123"):
        assert secret not in text
        assert secret not in details


def test_cli_send_and_status(tmp_path: Path) -> None:
    data = config_dict(tmp_path / "data")
    config_path = write_config(tmp_path / "node.yaml", data)
    config = make_config(tmp_path / "data", node={"port": data["node"]["port"]})
    files = write_study(tmp_path / "in", StudySpec(**SMALL))
    with running_node(config) as node:
        sent = subprocess.run([CXR_NODE, "send", str(tmp_path / "in"), "--to", f"{NODE_AET}@127.0.0.1:{node.port}"],
                              capture_output=True, text=True, timeout=300)
        assert sent.returncode == 0, sent.stdout + sent.stderr
        assert "sent 2/2" in sent.stdout
        status = subprocess.run([CXR_NODE, "status", "--config", str(config_path), "--json"],
                                capture_output=True, text=True, timeout=120)
        assert status.returncode == 0, status.stderr
        summary = json.loads(status.stdout)
        assert summary["instances"] == len(files)
        assert summary["studies"] == {"RECEIVING": 1} or summary["studies"] == {"QUEUED": 1}
        text_status = subprocess.run([CXR_NODE, "status", "--config", str(config_path)],
                                     capture_output=True, text=True, timeout=120)
        assert text_status.returncode == 0 and f"instances: {len(files)}" in text_status.stdout
        retry = subprocess.run([CXR_NODE, "retry", "999", "--config", str(config_path)],
                               capture_output=True, text=True, timeout=120)
        assert retry.returncode == 1 and "job 999 does not exist" in retry.stderr
