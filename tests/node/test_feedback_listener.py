"""The feedback listener fed by real HL7 senders (npm node-hl7-client, python-hl7's MLLP client): every message that
arrived whole is stored before it is answered, the bad ones too, and answered AA, AE or AR with a reason; refusals
are logged and audited; connections that bring no message are ended and audited; TLS; no patient data in the logs."""
from __future__ import annotations

import logging
import socket
import sqlite3
import time
from pathlib import Path

import pytest
from feedback_support import (
    PATIENT_ID,
    PATIENT_NAME,
    audit_rows,
    messages,
    oru,
    read_ack,
    send_with_node_client,
    send_with_python_hl7,
)
from ingest_support import make_config, running_node, wait_until
from sqlalchemy import create_engine, event
from sqlalchemy.orm import sessionmaker
from test_tls import pki  # noqa: F401 - the module-scoped test PKI fixture

from dicomnode.db import make_session_factory
from dicomnode.feedback.intake import Intake
from dicomnode.mllp import frame

ACCESSION = "ACC-UNSEEN-1"
REPORT = ("FINDINGS: No pneumothorax.", "Small left pleural effusion.")


def feedback_config(data_dir: Path, **feedback: object):  # type: ignore[no-untyped-def]
    return make_config(data_dir, feedback={"enabled": True, "host": "127.0.0.1", "port": 0, "match_seconds": 0.5,
                                           **feedback})


def _no_patient_data(caplog: pytest.LogCaptureFixture, factory: sessionmaker) -> None:  # type: ignore[type-arg]
    logged = "\n".join(f"{r.getMessage()} {getattr(r, 'fields', '')}" for r in caplog.records)
    audited = "\n".join(f"{a.kind} {a.peer} {a.detail}" for a in audit_rows(factory, ""))
    for secret in (PATIENT_ID, "TESTPERSON", "ALICE", ACCESSION, "pleural effusion"):
        assert secret not in logged and secret not in audited, secret


def test_node_hl7_client_report_is_stored_then_acknowledged_once(data_dir: Path, tmp_path: Path,
                                                                 caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG, logger="dicomnode")
    config = feedback_config(data_dir)
    with running_node(config) as node:
        first = oru("MSG-1", ACCESSION, *REPORT)
        acks = [read_ack(a) for a in send_with_node_client(node.feedback.port, [first, first], tmp_path)]
        factory = make_session_factory(config.database_url)
        stored = messages(factory)
    # stored once, answered twice: the resend (its ACK lost, say) is recognised by sender and control id
    assert [(a.code, a.control_id) for a in acks] == [("AA", "MSG-1"), ("AA", "MSG-1")]
    assert acks[0].error_code == "204" and acks[0].severity == "W"  # no study with this accession number (yet)
    assert "no study with this accession number yet" in acks[0].text and "already stored" in acks[1].text
    assert len(stored) == 1
    row = stored[0]
    assert (row.state, row.ack_code, row.accession_number, row.result_status, row.sending_application) == (
        "unmatched", "AA", ACCESSION, "F", "RIS")
    assert "No pneumothorax." in row.raw and PATIENT_NAME in row.raw  # the message as sent, kept whole
    assert [a.kind for a in audit_rows(factory)] == ["feedback.received", "feedback.duplicate"]
    _no_patient_data(caplog, factory)


# (message, ACK code, table 0357 code, state, words of the reason)
BAD = [
    (b"this is not HL7", "AE", "100", "rejected", "not an HL7 v2 message"),
    (oru("MSG-ADT", ACCESSION, *REPORT, message_type="ADT^A01"), "AR", "200", "rejected", "message type ADT^A01"),
    (oru("MSG-R03", ACCESSION, *REPORT, message_type="ORU^R30"), "AR", "201", "rejected", "event R30"),
    (oru("MSG-V3", ACCESSION, *REPORT, version="3.0"), "AR", "203", "rejected", "version 3.0"),
    (oru("", ACCESSION, *REPORT), "AE", "101", "rejected", "MSH-10"),
    (oru("MSG-NOACC", "", *REPORT, placer=""), "AE", "101", "rejected", "no accession number (looked in OBR-3, OBR-2"),
    (oru("MSG-NOTEXT", ACCESSION, *REPORT, value_type="CE"), "AE", "101", "rejected", "no report text"),
    (oru("MSG-CS", ACCESSION, *REPORT, charset="KLINGON"), "AE", "102", "rejected", "character set 'KLINGON'"),
    (oru("MSG-APP", ACCESSION, *REPORT, application="BILLING"), "AR", "207", "refused",
     "sending application BILLING (MSH-3) is not in feedback.allowed_sending_applications"),
]


def test_bad_messages_are_answered_stored_logged_and_audited(data_dir: Path, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="dicomnode")
    good_latin1 = oru("MSG-LATIN1", ACCESSION, "Kein Pneumothorax. Gr\u00f6\u00dfe normal.",
                      charset="8859/1").encode("latin-1")
    config = feedback_config(data_dir, allowed_sending_applications=["RIS"])
    with running_node(config) as node:
        sent = [m for m, *_ in BAD] + [good_latin1]
        acks = [read_ack(a) for a in send_with_python_hl7(node.feedback.port, sent)]
        factory = make_session_factory(config.database_url)
        stored = messages(factory)
    assert len(stored) == len(sent)  # nothing lost: every message that came whole is kept, with what it was told
    for (message, code, error, state, words), ack, row in zip(BAD, acks, stored, strict=False):
        assert (ack.code, ack.error_code, row.ack_code, row.state) == (code, error, code, state), words
        assert words in row.reason, row.reason
        assert ack.severity == "E"
        if isinstance(message, str) and "|MSG-" in message:
            assert ack.control_id == message.split("|")[9]  # MSA-2 names the message answered
    assert (acks[-1].code, stored[-1].state) == ("AA", "unmatched")
    assert "Gr\u00f6\u00dfe" in stored[-1].raw  # MSH-18 8859/1 read as such
    refusals = [a for a in audit_rows(factory) if a.kind in ("feedback.rejected", "feedback.refused")]
    assert [a.detail["reason"] for a in refusals] == [row.reason for row in stored[:-1]]
    assert [a.kind for a in refusals].count("feedback.refused") == 1
    warned = [r for r in caplog.records if r.levelno == logging.WARNING and r.getMessage() == "feedback.rejected"]
    assert len(warned) == len(BAD) - 1
    _no_patient_data(caplog, factory)


def _closed_by_peer(sock: socket.socket, timeout: float = 10.0) -> bool:
    sock.settimeout(timeout)
    try:
        return sock.recv(100) == b""
    except ConnectionResetError:
        return True


def test_connections_without_a_message_are_ended_and_audited(data_dir: Path) -> None:
    config = feedback_config(data_dir, max_message_bytes=2048, max_connections=2)
    with running_node(config) as node:
        port = node.feedback.port
        factory = make_session_factory(config.database_url)
        with socket.create_connection(("127.0.0.1", port)) as sock:  # not MLLP at all
            sock.sendall(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
            assert _closed_by_peer(sock)
        with socket.create_connection(("127.0.0.1", port)) as sock:  # a frame over max_message_bytes
            sock.sendall(b"\x0bMSH|^~\\&|" + b"x" * 4000)
            assert _closed_by_peer(sock)
        with socket.create_connection(("127.0.0.1", port)) as sock:  # the sender gives up mid-message
            sock.sendall(b"\x0bMSH|^~\\&|RIS|HOSP")
        wait_until(lambda: len(audit_rows(factory)) == 3 and node.feedback.listener.active_connections == 0, 10,
                   what="three refusals audited, their connections gone")
        held = [socket.create_connection(("127.0.0.1", port)) for _ in range(2)]
        wait_until(lambda: node.feedback.listener.active_connections == 2, 10, what="two connections held")
        with socket.create_connection(("127.0.0.1", port)) as third:  # over max_connections
            assert _closed_by_peer(third)
        for sock in held:
            sock.close()
        reasons = wait_until(lambda: [a.detail["reason"] for a in audit_rows(factory)
                                      if a.kind == "feedback.refused"] if len(audit_rows(factory)) >= 4 else None,
                             10, what="four refusals audited")
        # the good connection still works after all that
        assert read_ack(send_with_python_hl7(port, [oru("MSG-OK", ACCESSION, *REPORT)])[0]).code == "AA"
    assert any(r.startswith("not an MLLP frame: b'GET / HTTP/1.1") for r in reasons), reasons
    assert any("more than 2048 bytes" in r for r in reasons), reasons
    assert any(r.startswith("closed in the middle of a message") for r in reasons), reasons
    assert any("too many connections (feedback.max_connections is 2)" in r for r in reasons), reasons
    assert len(messages(factory)) == 1


def test_hosts_outside_allowed_hosts_are_disconnected(data_dir: Path) -> None:
    config = feedback_config(data_dir, allowed_hosts=["10.255.0.0/16"])
    with running_node(config) as node:
        factory = make_session_factory(config.database_url)
        with socket.create_connection(("127.0.0.1", node.feedback.port)) as sock:
            sock.sendall(frame(oru("MSG-X", ACCESSION, *REPORT).encode()))
            assert _closed_by_peer(sock)
        refused = wait_until(lambda: audit_rows(factory), 10, what="refusal audited")
    assert [(a.kind, a.detail["reason"]) for a in refused] == [
        ("feedback.refused", "host 127.0.0.1 is not in feedback.allowed_hosts")]
    assert messages(factory) == []  # nothing read from a host that may not send


def test_tls_listener_takes_a_client_with_a_certificate(data_dir: Path, tmp_path: Path,
                                                        pki: dict[str, Path]) -> None:  # noqa: F811
    tls = {"enabled": True, "cert": str(pki["server_cert"]), "key": str(pki["server_key"]), "ca": str(pki["ca"]),
           "require_client_cert": True}
    config = feedback_config(data_dir, tls=tls)
    with running_node(config) as node:
        port = node.feedback.port
        factory = make_session_factory(config.database_url)
        acks = send_with_node_client(port, [oru("MSG-TLS", ACCESSION, *REPORT)], tmp_path,
                                     tls=(pki["ca"], pki["client_cert"], pki["client_key"]))
        assert read_ack(acks[0]).code == "AA"
        with socket.create_connection(("127.0.0.1", port)) as plain:  # MLLP without TLS: the handshake fails
            plain.sendall(frame(oru("MSG-PLAIN", ACCESSION, *REPORT).encode()))
            assert _closed_by_peer(plain)
        refused = wait_until(lambda: [a for a in audit_rows(factory) if a.kind == "feedback.refused"], 10,
                             what="plain connection audited")
    assert refused[0].detail["reason"].startswith("TLS handshake failed")
    assert [m.control_id for m in messages(factory)] == ["MSG-TLS"]


def test_a_message_that_cannot_be_stored_is_answered_ae(data_dir: Path) -> None:
    """The database is locked by another writer (a real SQLite lock, with a short busy timeout): AE, "send it
    again", and no row: the sender keeps the message."""
    config = feedback_config(data_dir)
    with running_node(config):  # creates and migrates the database
        pass
    path = data_dir / "cxr-node.sqlite"
    engine = create_engine(f"sqlite:///{path}", connect_args={"timeout": 0.2})

    @event.listens_for(engine, "connect")
    def _own_transactions(conn, _record):  # type: ignore[no-untyped-def]
        conn.isolation_level = None

    @event.listens_for(engine, "begin")
    def _immediate(conn):  # type: ignore[no-untyped-def]
        conn.exec_driver_sql("BEGIN IMMEDIATE")

    holder = sqlite3.connect(path, isolation_level=None)
    holder.execute("BEGIN IMMEDIATE")  # another process holds the write lock
    try:
        answer = Intake(config.feedback, sessionmaker(engine)).handle(oru("MSG-LOCK", ACCESSION, *REPORT).encode(),
                                                                      "127.0.0.1:1")
    finally:
        holder.rollback()
        holder.close()
    ack = read_ack(answer.ack)
    assert (ack.code, ack.error_code, answer.state, answer.message_id) == ("AE", "207", "not_stored", None)
    assert "send it again" in ack.text
    assert messages(make_session_factory(config.database_url)) == []
    engine.dispose()


def test_stop_closes_idle_connections(data_dir: Path) -> None:
    """An idle connection is closed at stop; the listener's threads are gone after it."""
    config = feedback_config(data_dir)
    node_ctx = running_node(config)
    node = node_ctx.__enter__()
    sock = socket.create_connection(("127.0.0.1", node.feedback.port))
    wait_until(lambda: node.feedback.listener.active_connections == 1, 10, what="connection registered")
    started = time.monotonic()
    node_ctx.__exit__(None, None, None)
    assert time.monotonic() - started < 15
    assert _closed_by_peer(sock, 5)
    assert node.feedback.listener.active_connections == 0
    sock.close()
