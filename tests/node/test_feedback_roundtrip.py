"""A feedback round trip: a study sent to the node (DCMTK storescu) and reasoned (a test processor that writes a
full reasoning record), then the radiologist's final report for its accession number (npm node-hl7-client), then the
agreement: the verdict rows, `cxr-node feedback report` and the dashboard's /feedback page. The result already
made is not touched. Also: a report that comes before its study, a correction that supersedes it, a preliminary
report that is not compared, and the agreement over time."""
from __future__ import annotations

import datetime as dt
import hashlib
import http.client
import json
import subprocess
from pathlib import Path
from urllib.parse import urlsplit

import pytest
from feedback_support import audit_rows, messages, oru, read_ack, send_with_node_client, verdicts
from ingest_support import CXR_NODE, Db, config_dict, running_node, store, wait_until, write_config
from sqlalchemy import select

from dicomnode.config import load_config
from dicomnode.db import Job, make_session_factory
from dicomnode.db.models import Delivery, FeedbackVerdict
from dicomnode.feedback.report import agreement_over_time, agreement_table

PROCESSOR = "cxr_test_processors:reasoning_record"  # pneumothorax and cardiomegaly present, the rest absent
REPORT = ("FINDINGS: Heart size is normal. Small right apical pneumothorax.",
          "No pleural effusion. No focal consolidation.",
          "IMPRESSION: Small right pneumothorax.")


TOKEN_ENV, TOKEN = "CXR_TEST_FEEDBACK_TOKEN", "feedback-test-token-0123456789"


def _node_config(tmp_path: Path, data_dir: Path, token: bool = False) -> Path:
    dashboard: dict[str, object] = {"enabled": True, "host": "127.0.0.1", "port": 0}
    if token:
        dashboard["auth"] = {"type": "token", "token_env": TOKEN_ENV}
    data = config_dict(data_dir, processing={"processor": PROCESSOR},
                       feedback={"enabled": True, "host": "127.0.0.1", "port": 0, "match_seconds": 0.3},
                       dashboard=dashboard)
    return write_config(tmp_path / "node.yaml", data)


def _reasoned(db: Db, study_uid: str) -> Job:
    def done() -> Job | None:
        jobs = db.jobs(study_uid)
        return jobs[-1] if jobs and jobs[-1].record_path and jobs[-1].state == "DELIVERED" else None

    return wait_until(done, 120, what="the study reasoned")


def _results(data_dir: Path, study_uid: str) -> dict[str, str]:
    return {str(p.relative_to(data_dir)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted((data_dir / "results" / study_uid).rglob("*")) if p.is_file()}


def _get(url: str, path: str, token: str | None = None) -> tuple[int, str]:
    parts = urlsplit(url)
    conn = http.client.HTTPConnection(parts.hostname, parts.port, timeout=30)
    conn.request("GET", path, headers={"Accept": "text/plain", **({"Authorization": f"Bearer {token}"} if token
                                                                  else {})})
    response = conn.getresponse()
    body = response.read().decode("utf-8")
    conn.close()
    return response.status, body


def test_round_trip_report_to_agreement_table_and_dashboard(tmp_path: Path, data_dir: Path, study_factory,
                                                            monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(TOKEN_ENV, TOKEN)
    config_path = _node_config(tmp_path, data_dir, token=True)
    config = load_config(config_path, environ={})
    study = study_factory(accession_number="ACC-RT-1")
    db = Db(config.database_url)
    with running_node(config, role="all") as node:
        assert store(study.files, node.port).returncode == 0
        job = _reasoned(db, study.study_instance_uid)
        before = (_results(data_dir, study.study_instance_uid), job.state, job.updated_at, job.record_path)
        acks = send_with_node_client(node.feedback.port, [oru("RPT-1", "ACC-RT-1", *REPORT)], tmp_path)
        factory = make_session_factory(config.database_url)
        wait_until(lambda: messages(factory)[0].state == "compared", 30, what="the report compared")
        status, page = _get(node.dashboard.url, "/feedback", TOKEN)
        refused, _ = _get(node.dashboard.url, "/feedback")
        report = subprocess.run([CXR_NODE, "feedback", "report", "--config", str(config_path), "--disagreements",
                                 "5"], capture_output=True, text=True, timeout=120)
        as_json = subprocess.run([CXR_NODE, "feedback", "report", "--config", str(config_path), "--json",
                                  "--disagreements", "5"], capture_output=True, text=True, timeout=120)
        after_job = db.jobs(study.study_instance_uid)[-1]
        after = (_results(data_dir, study.study_instance_uid), after_job.state, after_job.updated_at,
                 after_job.record_path)
    db.close()

    ack = read_ack(acks[0])
    assert (ack.code, ack.control_id, ack.text, ack.error_code) == ("AA", "RPT-1", "stored", "")
    message = messages(factory)[0]
    assert (message.job_id, message.study_id is not None) == (job.id, True)
    rows = verdicts(factory, message.id)
    # the radiologist against the record: pneumothorax both present; cardiomegaly the model says present, the
    # report "heart size is normal"; effusion and consolidation both absent; lung lesion unmentioned = absent
    expect = {"pneumothorax": ("present", "present", "agree"), "cardiomegaly": ("absent", "present", "disagree"),
              "pleural_effusion": ("absent", "absent", "agree"), "consolidation": ("absent", "absent", "agree"),
              "lung_lesion": ("not_mentioned", "absent", "agree")}
    for finding, (radiologist, model, agreement) in expect.items():
        row = rows[finding]
        assert (row.radiologist, row.model, row.agreement) == (radiologist, model, agreement), finding
        assert (row.model_name, row.model_version, row.job_id) == ("cxr-node demo (untrained)", "0.1", job.id)
    assert rows["pneumothorax"].evidence == "Small right apical pneumothorax."
    assert len(rows) == 18  # every checklist finding

    # nothing in the feedback path touched the result already made and sent
    assert after == before
    with factory() as session:
        assert session.scalars(select(Delivery)).all() == []

    table = {r.finding: r for r in agreement_table(factory)}
    assert (table["cardiomegaly"].disagree, table["cardiomegaly"].fp) == (1, 1)
    assert (table["pneumothorax"].agree, table["pneumothorax"].tp, table["pneumothorax"].agreement) == (1, 1, 1.0)

    assert report.returncode == 0, report.stderr
    lines = report.stdout.splitlines()
    assert "feedback messages: compared=1" in lines
    assert "model cxr-node demo (untrained) 0.1" in lines
    cardio = next(line for line in lines if line.startswith("cardiomegaly "))
    assert cardio.split()[:4] == ["cardiomegaly", "0", "1", "0.0%"]
    pneumo = next(line for line in lines if line.startswith("pneumothorax "))
    assert pneumo.split()[:4] == ["pneumothorax", "1", "0", "100.0%"]
    assert any(line.startswith("DISAGREE ") and f"study {study.study_instance_uid} job {job.id} cardiomegaly: "
               "model present, radiologist absent" in line for line in lines), lines
    parsed = json.loads(as_json.stdout)
    assert parsed["messages"] == {"compared": 1}
    assert [d["finding"] for d in parsed["disagreements"]] == ["cardiomegaly"]
    assert parsed["disagreements"][0]["evidence"] is None  # no report text in machine output

    assert (status, refused) == (200, 401)
    assert 'data-finding="cardiomegaly"><td>cardiomegaly</td><td>0</td><td>1</td><td class="agreement">0.0%' in page
    assert f'<tr data-study="{study.study_instance_uid}" data-finding="cardiomegaly">' in page
    # a signed-in user sees the accession number and the sentence that decided it
    assert "<td>ACC-RT-1</td>" in page and "<small>Heart size is normal.</small>" in page
    assert "Listening on HL7 MLLP 127.0.0.1:" in page


def test_report_before_its_study_then_a_correction_and_a_preliminary(tmp_path: Path, data_dir: Path,
                                                                    study_factory) -> None:
    config = load_config(_node_config(tmp_path, data_dir), environ={})
    study = study_factory(accession_number="ACC-EARLY")
    db = Db(config.database_url)
    with running_node(config, role="all") as node:
        factory = make_session_factory(config.database_url)
        port = node.feedback.port
        # the report comes first: stored and answered AA (warning 204), compared once the study is reasoned
        early = read_ack(send_with_node_client(port, [oru("EARLY-1", "ACC-EARLY", "No pneumothorax.")], tmp_path)[0])
        assert (early.code, early.error_code, messages(factory)[0].state) == ("AA", "204", "unmatched")
        assert store(study.files, node.port).returncode == 0
        job = _reasoned(db, study.study_instance_uid)
        wait_until(lambda: messages(factory)[0].state == "compared", 30, what="the early report compared")
        assert verdicts(factory, messages(factory)[0].id)["pneumothorax"].agreement == "disagree"
        status, page = _get(node.dashboard.url, "/feedback")  # loopback without auth: anonymous
        assert status == 200 and f'data-study="{study.study_instance_uid}" data-finding="pneumothorax"' in page
        assert "ACC-EARLY" not in page and "No pneumothorax." not in page  # no accession, no report text
        # a corrected report (OBR-25 C) supersedes it; a preliminary one (P) is stored and not compared
        acks = send_with_node_client(port, [oru("EARLY-2", "ACC-EARLY", "Small left pneumothorax.", status="C"),
                                            oru("EARLY-3", "ACC-EARLY", "No cardiomegaly.", status="P")], tmp_path)
        wait_until(lambda: [m.state for m in messages(factory)] == ["superseded", "compared", "not_final"], 30,
                   what="the correction compared, the first superseded")
    db.close()
    assert [read_ack(a).code for a in acks] == ["AA", "AA"]
    assert "result status P is not compared" in read_ack(acks[1]).text
    table = {r.finding: r for r in agreement_table(factory)}
    assert (table["pneumothorax"].agree, table["pneumothorax"].disagree) == (1, 0)  # only the correction counts
    assert table["pneumothorax"].agree + table["pneumothorax"].disagree == 1
    over = agreement_over_time(factory, "day", periods=3)
    assert over.starts[-1] == dt.datetime.now(dt.UTC).date()
    assert over.cells["pneumothorax"] == [(0, 0), (0, 0), (1, 1)]
    kinds = [a.kind for a in audit_rows(factory)]
    assert kinds.count("feedback.compared") == 2 and "feedback.matched" in kinds
    with factory() as session:  # the superseded report's verdicts are kept, for the record
        first = messages(factory)[0].id
        assert session.scalars(select(FeedbackVerdict).where(FeedbackVerdict.message_id == first)).first()
    assert job.state == "DELIVERED"
