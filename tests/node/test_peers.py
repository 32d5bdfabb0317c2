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
