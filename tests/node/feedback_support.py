"""Helpers for the feedback tests: ORU^R01 messages, the two real HL7 senders (npm node-hl7-client through
tests/js/hl7_send.cjs, and python-hl7's MLLPClient), reading ACKs and the feedback tables."""
from __future__ import annotations

import json
import shutil
import subprocess
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import hl7
from hl7.client import MLLPClient
from ingest_support import REPO
from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from dicomnode.db.models import AuditEvent, FeedbackMessage, FeedbackVerdict

JS_DIR = REPO / "tests" / "js"
NODE_SENDER = JS_DIR / "hl7_send.cjs"
PATIENT_ID, PATIENT_NAME = "PAT-778899", "TESTPERSON^ALICE"  # must never reach the logs


def oru(control_id: str, accession: str, *lines: str, status: str = "F", application: str = "RIS",
        facility: str = "HOSP", value_type: str = "TX", version: str = "2.5.1", message_type: str = "ORU^R01^ORU_R01",
        charset: str = "", placer: str | None = None) -> str:
    """An ORU^R01 with the accession number in OBR-3 (placer order number in OBR-2) and one OBX per report line."""
    msh = (f"MSH|^~\\&|{application}|{facility}|CXRNODE||20261207101500||{message_type}|{control_id}|P|{version}"
           + (f"||||||{charset}" if charset else ""))  # MSH-18
    placer = f"PLACER{control_id}" if placer is None else placer
    segments = [msh, f"PID|1||{PATIENT_ID}^^^HOSP^MR||{PATIENT_NAME}||19700101|F",
                f"OBR|1|{placer}|{accession}^RIS|71046^XR CHEST 2 VIEWS^CPT|||20261207090000" + "|" * 18 + status]
    segments += [f"OBX|{i}|{value_type}|18782-3^Radiology Study observation^LN||{line}||||||{status}"
                 for i, line in enumerate(lines, 1)]
    return "\r".join(segments) + "\r"


def node_client_available() -> bool:
    return (JS_DIR / "node_modules" / "node-hl7-client").is_dir() and shutil.which("node") is not None


def send_with_node_client(port: int, messages: Sequence[str], workdir: Path,
                          tls: tuple[Path, Path, Path] | None = None) -> list[str]:
    """The ACKs node-hl7-client got for ``messages`` (sent one after the other on one connection)."""
    assert node_client_available(), "npm packages of tests/js missing: run scripts/bootstrap.sh (npm ci)"
    batch = workdir / f"messages-{len(list(workdir.glob('messages-*')))}.json"
    batch.write_text(json.dumps(list(messages)), encoding="utf-8")
    args = ["node", str(NODE_SENDER), "127.0.0.1", str(port), str(batch), *(str(p) for p in tls or ())]
    result = subprocess.run(args, capture_output=True, text=True, timeout=90)
    assert result.returncode == 0, f"node-hl7-client sender failed: {result.stderr[-2000:]}"
    return list(json.loads(result.stdout)["acks"])


def send_with_python_hl7(port: int, messages: Sequence[str | bytes]) -> list[str]:
    """The ACKs python-hl7's MLLP client got for ``messages`` (one connection, one after the other)."""
    acks = []
    with MLLPClient("127.0.0.1", port) as client:
        client.socket.settimeout(30)
        for message in messages:
            framed = client.send_message(message)
            acks.append(framed.decode("utf-8").strip("\x0b\x1c\r"))
    return acks


@dataclass(frozen=True)
class Ack:
    code: str  # MSA-1
    control_id: str  # MSA-2
    text: str  # MSA-3
    error_code: str  # ERR-3.1
    severity: str  # ERR-4


def read_ack(text: str) -> Ack:
    """An ACK, parsed by python-hl7."""
    message = hl7.parse(text.replace("\n", "\r"))
    assert str(message.segment("MSH")(9)).startswith("ACK"), text

    def get(segment: str, field: int, component: int = 1) -> str:
        try:
            return str(message.extract_field(segment, 1, field, 1, component))
        except (KeyError, IndexError):
            return ""

    return Ack(get("MSA", 1), get("MSA", 2), get("MSA", 3), get("ERR", 3), get("ERR", 4))


def messages(factory: sessionmaker[Session]) -> list[FeedbackMessage]:
    with factory() as session:
        return list(session.scalars(select(FeedbackMessage).order_by(FeedbackMessage.id)))


def verdicts(factory: sessionmaker[Session], message_id: int) -> dict[str, FeedbackVerdict]:
    with factory() as session:
        rows = session.scalars(select(FeedbackVerdict).where(FeedbackVerdict.message_id == message_id))
        return {v.finding: v for v in rows}


def audit_rows(factory: sessionmaker[Session], prefix: str = "feedback.") -> list[AuditEvent]:
    with factory() as session:
        return list(session.scalars(select(AuditEvent).where(AuditEvent.kind.startswith(prefix))
                                    .order_by(AuditEvent.id)))
