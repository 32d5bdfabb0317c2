"""Intake that no client can stall (issue 17): silent, slow-loris and idle-TLS clients against a real
``cxr-node serve``, with DCMTK as the valid sender.

Acceptance named by the issue: with the hostile clients connected, a valid sender is served within 5 s; SIGTERM
finishes in bounded time with them still connected; TLS failures are audit-logged with the peer and a reason.
"""
from __future__ import annotations

import socket
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
from ingest_support import NODE_AET, Db, NodeProcess, config_dict, store, wait_until, write_config
from sqlalchemy import select
from test_tls import _tls_args, pki  # noqa: F401 - the module-scoped PKI fixture

from dicomnode.db.models import AuditEvent
from dicomnode.demo.synthetic import StudySpec, write_study
from dicomnode.peers.dcmtk import echoscu

SMALL = {"rows": 64, "columns": 64}
SERVED_WITHIN_S = 5.0  # the acceptance
ASSOCIATE_RQ_HEADER = b"\x01\x00\x00\x00\x01\x00"  # A-ASSOCIATE-RQ, 256 bytes to follow


class HostileClients:
    """Idle TCP connections (send nothing) and slow-loris ones (an A-ASSOCIATE-RQ one byte every ``every`` s)."""

    def __init__(self, port: int):
        self.port = port
        self.sockets: list[socket.socket] = []
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []
        self.closed_by_node: list[float] = []  # seconds after connect at which the node closed a slow-loris
        self._lock = threading.Lock()

    def _connect(self) -> socket.socket:
        sock = socket.create_connection(("127.0.0.1", self.port), timeout=10)
        self.sockets.append(sock)
        return sock

    def idle(self, n: int) -> None:
        for _ in range(n):
            self._connect()

    def plain_associate(self) -> None:
        """A plain (non-TLS) DICOM client: the first bytes of an A-ASSOCIATE-RQ."""
        self._connect().sendall(ASSOCIATE_RQ_HEADER)

    def slow_loris(self, n: int, every: float) -> None:
        for _ in range(n):
            sock = self._connect()
            thread = threading.Thread(target=self._dribble, args=(sock, every), daemon=True)
            thread.start()
            self._threads.append(thread)

    def _dribble(self, sock: socket.socket, every: float) -> None:
        start = time.monotonic()
        payload = ASSOCIATE_RQ_HEADER + bytes(256)
        for byte in payload:
            if self._stop.wait(every):
                return
            try:
                sock.sendall(bytes([byte]))
            except OSError:
                break
            sock.settimeout(0.01)
            try:
                if sock.recv(1) == b"":
                    break
            except TimeoutError:
                continue
            except OSError:
                break
        with self._lock:
            self.closed_by_node.append(time.monotonic() - start)

    def close(self) -> None:
        self._stop.set()
        for sock in self.sockets:
            sock.close()
        for thread in self._threads:
            thread.join(timeout=5)


@contextmanager
def hostile(port: int) -> Iterator[HostileClients]:
    clients = HostileClients(port)
    try:
        yield clients
    finally:
        clients.close()


def _served(files: list[Path], port: int, extra: list[str] | None = None) -> tuple[list[int], float]:
    started = time.monotonic()
    run = store(files, port, extra=extra or [], timeout=60)
    return run.statuses, time.monotonic() - started


def _audits(db: Db, kind: str) -> list[AuditEvent]:
    with db.session_factory() as s:
        return list(s.scalars(select(AuditEvent).where(AuditEvent.kind == kind).order_by(AuditEvent.id)))


@pytest.fixture
def study(tmp_path: Path) -> list[Path]:
    return write_study(tmp_path / "in", StudySpec(views=("PA",), **SMALL))


def _node(tmp_path: Path, **node: object) -> NodeProcess:
    data = config_dict(tmp_path / "var", node={"max_associations": 4, "acse_timeout_seconds": 4,
                                                "shutdown_timeout_seconds": 3, **node})
    config_path = write_config(tmp_path / "node.yaml", data)
    return NodeProcess(config_path, data["node"]["port"], role="listener")


def test_slow_loris_and_silent_clients_do_not_stall_a_sender(tmp_path: Path, study: list[Path]) -> None:
    """12 slow-loris connections plus more silent ones than max_associations: a sender is served at once, the
    hostile connections are dropped by the ARTIM budget, and SIGTERM ends the node with them connected."""
    with _node(tmp_path) as node, hostile(node.port) as clients:
        clients.slow_loris(12, every=1.0)
        clients.idle(8)  # > max_associations (4)
        time.sleep(1.5)
        statuses, seconds = _served(study, node.port)
        assert statuses == [0]
        assert seconds < SERVED_WITHIN_S, f"valid sender took {seconds:.1f} s"
        # the slow-loris connections are cut by the negotiation budget (4 s); their A-ASSOCIATE-RQ would take
        # 262 s to dribble in (the margin is for a loaded CI machine)
        wait_until(lambda: len(clients.closed_by_node) == 12, timeout=40, what="slow-loris connections closed")
        assert max(clients.closed_by_node) < 4 + 30
        # new hostile clients, then SIGTERM: bounded by shutdown_timeout (3 s), not by the clients
        clients.slow_loris(12, every=1.0)
        clients.idle(8)
        time.sleep(1.0)
        started = time.monotonic()
        assert node.terminate(timeout=60) == 0
        assert time.monotonic() - started < 15
    log = node.log_path.read_text()
    assert "negotiation_timeout" in log


def test_idle_established_association_is_aborted_and_counted(tmp_path: Path, study: list[Path]) -> None:
    """An association that negotiates and then sends nothing is aborted after network_timeout_seconds."""
    from pynetdicom import AE

    with _node(tmp_path, network_timeout_seconds=2, max_associations=1) as node:
        ae = AE(ae_title="IDLER")
        ae.add_requested_context("1.2.840.10008.1.1")
        assoc = ae.associate("127.0.0.1", node.port, ae_title=NODE_AET)
        assert assoc.is_established
        wait_until(lambda: not assoc.is_established, timeout=15, what="idle association aborted by the node")
        assert assoc.is_aborted
        statuses, seconds = _served(study, node.port)  # its slot is free again
        assert statuses == [0] and seconds < SERVED_WITHIN_S
        node.terminate(timeout=60)
    assert '"reason": "idle_timeout"' in node.log_path.read_text()


def test_wrong_called_ae_title_is_rejected(tmp_path: Path, study: list[Path]) -> None:
    with _node(tmp_path) as node:
        wrong = echoscu("ANY-SCP", "127.0.0.1", node.port, timeout=30)
        assert wrong.returncode != 0
        right = echoscu(NODE_AET, "127.0.0.1", node.port, timeout=30)
        assert right.returncode == 0, right.stdout + right.stderr
        node.terminate(timeout=60)
    db = Db(f"sqlite:///{tmp_path / 'var' / 'cxr-node.sqlite'}")
    try:
        rejected = _audits(db, "association.rejected")
        assert [r.detail["reason"] for r in rejected] == ["called AE title not recognized"]
        assert rejected[0].called_aet == "ANY-SCP"
    finally:
        db.close()


def test_called_ae_check_can_be_turned_off(tmp_path: Path) -> None:
    with _node(tmp_path, check_called_aet=False) as node:
        assert echoscu("ANY-SCP", "127.0.0.1", node.port, timeout=30).returncode == 0
        node.terminate(timeout=60)
    assert "called AE title check is off" in node.log_path.read_text()


def test_idle_tls_clients_do_not_stall_a_tls_node(tmp_path: Path, study: list[Path],
                                                  pki: dict[str, Path]) -> None:  # noqa: F811
    """Idle TCP clients and a plain DICOM client on a TLS-only node: a TLS sender is served within 5 s, each
    failure is audit-logged with the peer address and a reason, and SIGTERM is bounded."""
    tls = {"enabled": True, "cert": str(pki["server_cert"]), "key": str(pki["server_key"]), "ca": str(pki["ca"]),
           "require_client_cert": True}
    with _node(tmp_path, tls=tls, tls_handshake_timeout_seconds=2) as node, hostile(node.port) as clients:
        clients.idle(12)
        clients.plain_associate()
        time.sleep(0.5)
        statuses, seconds = _served(study, node.port, extra=_tls_args(pki))
        assert statuses == [0]
        assert seconds < SERVED_WITHIN_S, f"TLS sender took {seconds:.1f} s"
        local_ports = {f"127.0.0.1:{s.getsockname()[1]}": s for s in clients.sockets}
        db = Db(f"sqlite:///{tmp_path / 'var' / 'cxr-node.sqlite'}")
        try:
            def ours() -> dict[str, str] | None:
                rows = {f.peer: f.detail["reason"] for f in _audits(db, "tls.handshake_failed")}
                return {p: r for p, r in rows.items() if p in local_ports} if set(local_ports) <= set(rows) else None
            reasons = wait_until(ours, timeout=15, what="a TLS failure audit row for each hostile client")
        finally:
            db.close()
        plain = f"127.0.0.1:{clients.sockets[-1].getsockname()[1]}"
        assert reasons.pop(plain) == "plain (non-TLS) DICOM connection to the TLS-only listener"
        assert set(reasons.values()) == {"no TLS handshake within 2 s"}
        clients.idle(12)  # still connected at SIGTERM
        started = time.monotonic()
        assert node.terminate(timeout=60) == 0
        assert time.monotonic() - started < 15


def test_sigterm_bounded_with_an_established_association_held_open(tmp_path: Path) -> None:
    """An association that negotiated and then just sits there does not hold SIGTERM beyond
    shutdown_timeout_seconds (3 s here; the network timeout, 60 s, never comes into it)."""
    from pynetdicom import AE

    with _node(tmp_path) as node:
        ae = AE(ae_title="HOLDER")
        ae.add_requested_context("1.2.840.10008.1.1")
        assoc = ae.associate("127.0.0.1", node.port, ae_title=NODE_AET)
        assert assoc.is_established
        try:
            started = time.monotonic()
            assert node.terminate(timeout=60) == 0
            assert time.monotonic() - started < 3 + 10
        finally:
            assoc.abort()
    assert '"reason": "shutdown"' in node.log_path.read_text()


def test_dribbling_inside_an_established_association_is_aborted(tmp_path: Path, study: list[Path]) -> None:
    """An association that negotiates, then dribbles a P-DATA-TF PDU one byte every 0.5 s: each byte is network
    activity, but no PDU ever completes, so the idle timer (network_timeout_seconds, 2 s) still ends it and the one
    association slot is free for a valid sender."""
    from pynetdicom import AE

    with _node(tmp_path, network_timeout_seconds=2, max_associations=1) as node:
        ae = AE(ae_title="DRIBBLER")
        ae.add_requested_context("1.2.840.10008.1.1")
        assoc = ae.associate("127.0.0.1", node.port, ae_title=NODE_AET)
        assert assoc.is_established
        raw = assoc.dul.socket.socket  # the TCP socket under the association
        pdu = b"\x04\x00" + (1000).to_bytes(4, "big") + bytes(1000)  # P-DATA-TF, 1000 bytes announced
        started, cut_after = time.monotonic(), None
        for byte in pdu:
            try:
                raw.send(bytes([byte]))
            except OSError:
                cut_after = time.monotonic() - started
                break
            if not assoc.is_established:
                cut_after = time.monotonic() - started
                break
            time.sleep(0.5)
        assert cut_after is not None and cut_after < 2 + 15, "the dribbling association was not ended"
        statuses, seconds = _served(study, node.port)  # its slot is free again
        assert statuses == [0] and seconds < SERVED_WITHIN_S
        node.terminate(timeout=60)
    assert '"reason": "idle_timeout"' in node.log_path.read_text()


def test_sigterm_while_a_study_is_processed_is_bounded_and_the_job_runs_again(tmp_path: Path,
                                                                             study: list[Path]) -> None:
    """SIGTERM while a job is processing (the test processor takes 600 s): the node stops within
    shutdown_timeout_seconds (3 s) plus a margin, the job goes back to QUEUED with the reason, and after a restart it
    runs again and finishes (one process call per run, the same job)."""
    from cxr_test_processors import CALLS_LOG, read_calls

    data = config_dict(tmp_path / "var", node={"shutdown_timeout_seconds": 3},
                       processing={"processor": "cxr_test_processors:sc", "poll_seconds": 0.2})
    config_path = write_config(tmp_path / "node.yaml", data)
    var = tmp_path / "var"
    here = str(Path(__file__).parent)  # the test processors
    slow = NodeProcess(config_path, data["node"]["port"], role="all",
                       env={"CXR_TEST_PROCESS_SECONDS": "600", "PYTHONPATH": here})
    with slow as node:
        assert _served(study, node.port)[0] == [0]
        wait_until(lambda: (var / CALLS_LOG).exists(), timeout=60, what="the job being processed")
        started = time.monotonic()
        assert node.terminate(timeout=60) == 0
        assert time.monotonic() - started < 3 + 10
    db = Db(f"sqlite:///{var / 'cxr-node.sqlite'}")
    try:
        requeued = _audits(db, "job.requeued")
        assert [r.detail["reason"] for r in requeued] == ["the node stopped before the job finished"]
        with db.session_factory() as s:
            from dicomnode.db.models import Job

            [job] = list(s.scalars(select(Job)))
            assert job.state == "QUEUED" and job.claimed_by is None
    finally:
        db.close()
    with NodeProcess(config_path, data["node"]["port"], role="all", log_path=tmp_path / "again.log",
                     env={"PYTHONPATH": here}) as node:
        def finished() -> bool:
            check = Db(f"sqlite:///{var / 'cxr-node.sqlite'}")
            try:
                with check.session_factory() as s:
                    from dicomnode.db.models import Job

                    return [j.state for j in s.scalars(select(Job))] == ["DELIVERED"]
            finally:
                check.close()
        wait_until(finished, timeout=60, what="the re-queued job run again")
        node.terminate(timeout=60)
    calls = read_calls(var)
    assert len(calls) == 2 and calls[0][0] == calls[1][0]  # the same job, once per run
