"""Fixtures for node tests: real peers (Orthanc, PostgreSQL), databases, data dirs and synthetic studies."""
from __future__ import annotations

import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pydicom
import pytest
from sqlalchemy.orm import Session, sessionmaker

from dicomnode.db import make_engine, make_session_factory, upgrade_database
from dicomnode.demo import synthetic
from dicomnode.peers.orthanc import OrthancServer
from dicomnode.peers.ports import free_port
from tests.postgres_server import PostgresServer


@dataclass
class SyntheticStudy:
    study_instance_uid: str
    files: list[Path]


@pytest.fixture(scope="session")
def pg_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[PostgresServer]:
    """One PostgreSQL server for the session (started on first use)."""
    server = PostgresServer(tmp_path_factory.mktemp("postgres"))
    server.start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def postgres_url(pg_server: PostgresServer) -> str:
    """A fresh, empty PostgreSQL database for this test."""
    return pg_server.create_database("t_" + uuid.uuid4().hex[:16])


@pytest.fixture
def data_dir(tmp_path: Path) -> Path:
    path = tmp_path / "var"
    path.mkdir()
    return path


@pytest.fixture
def sqlite_url(data_dir: Path) -> str:
    return f"sqlite:///{data_dir / 'cxr-node.sqlite'}"


@pytest.fixture(params=["sqlite", "postgresql"])
def database_url(request: pytest.FixtureRequest, sqlite_url: str) -> str:
    """The test runs once on SQLite and once on a fresh PostgreSQL database."""
    if request.param == "postgresql":
        return str(request.getfixturevalue("postgres_url"))
    return sqlite_url


def _migrated(url: str) -> Iterator[sessionmaker[Session]]:
    engine = make_engine(url)
    upgrade_database(engine)
    try:
        yield make_session_factory(engine)
    finally:
        engine.dispose()


@pytest.fixture
def session_factory(database_url: str) -> Iterator[sessionmaker[Session]]:
    """A migrated database (see ``database_url``) and a session factory on it."""
    yield from _migrated(database_url)


@pytest.fixture
def sqlite_session_factory(sqlite_url: str) -> Iterator[sessionmaker[Session]]:
    """``session_factory`` on SQLite only (``sqlite_url``)."""
    yield from _migrated(sqlite_url)


@pytest.fixture
def port() -> int:
    return free_port()


@pytest.fixture
def orthanc(tmp_path: Path) -> Iterator[OrthancServer]:
    """A running Orthanc (AE ``ORTHANC``) with storage in the test's tmp dir; killed afterwards (the archive goes
    with the test: no clean stop, which takes Orthanc 2-4 s)."""
    server = OrthancServer(tmp_path / "orthanc", aet="ORTHANC").start()
    try:
        yield server
    finally:
        server.kill()


@pytest.fixture
def study_factory(tmp_path: Path) -> Callable[..., SyntheticStudy]:
    """``make(**StudySpec fields)`` writes a small synthetic study (64x64 by default) and returns it."""
    counter = iter(range(1, 10_000))

    def make(**fields: object) -> SyntheticStudy:
        n = next(counter)
        fields.setdefault("rows", 64)
        fields.setdefault("columns", 64)
        fields.setdefault("seed", n)
        fields.setdefault("accession_number", f"ACC{n:04d}")
        spec = synthetic.StudySpec(**fields)  # type: ignore[arg-type]
        files = synthetic.write_study(tmp_path / "studies" / f"study{n}", spec)
        uid = str(pydicom.dcmread(files[0], stop_before_pixels=True).StudyInstanceUID)
        return SyntheticStudy(uid, files)

    return make
