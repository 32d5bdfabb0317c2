"""The peers package starts real Orthanc, PostgreSQL and DCMTK storescp on loopback."""
from __future__ import annotations

from pathlib import Path

import pytest
from sqlalchemy import create_engine, text

from dicomnode.demo import synthetic
from dicomnode.peers.dcmtk import StoreSCP, echoscu, storescu
from dicomnode.peers.orthanc import OrthancServer
from dicomnode.peers.ports import free_port, port_open
from tests.postgres_server import PostgresServer


def _study_uid(path: Path) -> str:
    import pydicom

    return str(pydicom.dcmread(path, stop_before_pixels=True).StudyInstanceUID)


def test_free_port_is_unused() -> None:
    a, b = free_port(), free_port()
    assert a != b
    assert not port_open(a)


def test_orthanc_receives_storescu_and_survives_restart(tmp_path: Path) -> None:
    files = synthetic.write_study(tmp_path / "in", synthetic.StudySpec(rows=64, columns=64))
    with OrthancServer(tmp_path / "orthanc", aet="PACS") as orthanc:
        assert echoscu("PACS", "127.0.0.1", orthanc.dicom_port).returncode == 0
        result = storescu(files, "PACS", "127.0.0.1", orthanc.dicom_port)
        assert result.returncode == 0, result.stderr
        uids = orthanc.wait_for_instances(2, timeout=60)
        assert sorted(uids) == sorted(p.stem for p in files)
        assert len(orthanc.instances_of_study(_study_uid(files[0]))) == 2
        orthanc.restart()
        assert sorted(orthanc.sop_instance_uids()) == sorted(p.stem for p in files)
    assert not port_open(orthanc.http_port)


def test_storescp_writes_received_files(tmp_path: Path) -> None:
    files = synthetic.write_study(tmp_path / "in", synthetic.StudySpec(rows=32, columns=32, views=("PA",)))
    with StoreSCP(tmp_path / "scp") as scp:
        assert storescu(files, "STORESCP", "127.0.0.1", scp.port).returncode == 0
        assert len(scp.received()) == 1


def test_postgres_starts_and_creates_databases(tmp_path: Path) -> None:
    pytest.importorskip("psycopg")
    with PostgresServer(tmp_path / "pg") as pg:
        url = pg.create_database("peer_test")
        engine = create_engine(url)
        with engine.connect() as conn:
            assert conn.execute(text("select current_database()")).scalar() == "peer_test"
        engine.dispose()


def test_a_peer_that_exits_at_start_is_reported_with_its_log(tmp_path: Path) -> None:
    from dicomnode.peers.orthanc import OrthancError

    broken = OrthancServer(tmp_path / "orthanc", extra_config={"HttpPort": "not a port"})
    with pytest.raises(OrthancError, match=r"Orthanc exited with \d+: .+"):
        broken.start(timeout=30)
    assert not broken.running
    broken.stop()  # nothing left to stop


def test_logged_process_timeout_stops_the_process_group(tmp_path: Path) -> None:
    import os
    import time

    from dicomnode.peers.process import LoggedProcess

    child_pid_file = tmp_path / "child.pid"
    peer = LoggedProcess(tmp_path / "logs" / "peer.log", group=True)
    script = f"sleep 300 & echo $! > {child_pid_file}; echo started; wait"
    with pytest.raises(TimeoutError):
        peer.start(["sh", "-c", script], ready=lambda: False, timeout=1.0)
    assert not peer.running and peer.process is None
    child = int(child_pid_file.read_text())
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline and _alive(child):
        time.sleep(0.1)
    assert not _alive(child)  # the group went, the shell's child too
    assert "started" in peer.tail()
    peer.log_path.write_text("x" * 50)
    assert peer.tail(10) == "x" * 10
    os.remove(peer.log_path)
    assert peer.tail() == ""


def _alive(pid: int) -> bool:
    import os

    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    try:  # a zombie (exited, not yet reaped by init) counts as gone
        return Path(f"/proc/{pid}/stat").read_text().split()[2] != "Z"
    except OSError:
        return False


def _held(lock: Path) -> bool:
    """Someone else holds an exclusive flock on ``lock``."""
    import fcntl

    if not lock.exists():
        return False
    with open(lock, "rb") as handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_SH | fcntl.LOCK_NB)
        except BlockingIOError:
            return True
        fcntl.flock(handle, fcntl.LOCK_UN)
        return False


def test_vllm_engine_waits_for_the_venv_build_lock(tmp_path: Path) -> None:
    """An engine start waits while scripts/vllm_venv.sh holds its flock (scripts/test.sh builds the venv beside the
    tests), and gives up with a clear error after its timeout."""
    import subprocess
    import time

    from tests.vllm_engine import VllmError, build_lock, wait_for_build

    venv = tmp_path / "vllm-venv"
    assert wait_for_build(venv, timeout=0.1) == 0.0  # no build ever ran here
    lock = build_lock(venv)
    holder = subprocess.Popen(["flock", str(lock), "sleep", "1.5"])  # as the script holds it
    try:
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline and not _held(lock):
            time.sleep(0.02)
        with pytest.raises(VllmError, match="still being built"):
            wait_for_build(venv, timeout=0.2)
        assert wait_for_build(venv, timeout=30) > 0.5
        assert holder.wait(10) == 0
    finally:
        holder.kill()
    assert wait_for_build(venv, timeout=0.1) < 0.1  # the file stays, nobody holds it
