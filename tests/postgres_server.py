"""A throw-away PostgreSQL 15 server on 127.0.0.1 (run as the ``postgres`` user when we are root)."""
from __future__ import annotations

import os
import pwd
import shutil
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Any

from dicomnode.peers.ports import free_port

PG_BIN_DIRS = ("/usr/lib/postgresql/15/bin", "/usr/lib/postgresql/16/bin", "/usr/lib/postgresql/17/bin")


def _pg_bin(tool: str) -> str:
    for directory in (os.environ.get("CXR_PG_BIN", ""), *PG_BIN_DIRS):
        candidate = Path(directory) / tool
        if directory and candidate.exists():
            return str(candidate)
    found = shutil.which(tool)
    if found is None:
        raise FileNotFoundError(f"{tool} not found (Debian package 'postgresql')")
    return found


class PostgresServer:
    """initdb + pg_ctl in a fresh directory, trust auth for user ``postgres``, TCP on 127.0.0.1 only, fsync off
    (a throw-away server for tests and benchmarks).

    PostgreSQL refuses to run as root, so as root the cluster lives in a temp dir owned by ``postgres`` and the
    tools run as that user; ``workdir`` keeps only the server log then.
    """

    def __init__(self, workdir: Path | str, port: int | None = None) -> None:
        self.workdir = Path(workdir)
        self.port = port or free_port()
        self._as_root = os.geteuid() == 0
        self._cluster_dir: Path | None = None

    @property
    def url(self) -> str:
        return f"postgresql+psycopg://postgres@127.0.0.1:{self.port}/postgres"

    def url_for(self, database: str) -> str:
        return f"postgresql+psycopg://postgres@127.0.0.1:{self.port}/{database}"

    @property
    def log_path(self) -> Path:
        return self.workdir / "postgres.log"

    def _run(self, cmd: list[str], timeout: float = 180.0) -> subprocess.CompletedProcess[str]:
        kwargs: dict[str, Any] = {}
        if self._as_root:
            entry = pwd.getpwnam("postgres")
            kwargs = {"user": entry.pw_uid, "group": entry.pw_gid, "extra_groups": [], "cwd": "/"}
        result = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, check=False, **kwargs)
        if result.returncode != 0:
            raise RuntimeError(f"{' '.join(cmd)} failed ({result.returncode}): {result.stdout}{result.stderr}")
        return result

    def start(self, timeout: float = 120.0) -> PostgresServer:
        self.workdir.mkdir(parents=True, exist_ok=True)
        if self._as_root:
            cluster = Path(tempfile.mkdtemp(prefix="cxr-pg-"))
            entry = pwd.getpwnam("postgres")
            os.chown(cluster, entry.pw_uid, entry.pw_gid)
        else:
            cluster = self.workdir / "pg"
            cluster.mkdir(parents=True, exist_ok=True)
        self._cluster_dir = cluster
        data = cluster / "data"
        log = cluster / "server.log"
        try:
            self._run([_pg_bin("initdb"), "-D", str(data), "-A", "trust", "-U", "postgres", "-E", "UTF8",
                       "--no-sync"])
            options = f"-p {self.port} -k {cluster} -c listen_addresses=127.0.0.1 -c fsync=off -c max_connections=200"
            self._run([_pg_bin("pg_ctl"), "-D", str(data), "-o", options, "-l", str(log), "-w", "-t",
                       str(int(timeout)), "start"], timeout=timeout + 30)
            self._wait_ready(timeout)
        except BaseException:
            self.stop()
            raise
        return self

    def _wait_ready(self, timeout: float) -> None:
        import psycopg

        deadline = time.monotonic() + timeout
        last: Exception | None = None
        while time.monotonic() < deadline:
            try:
                with psycopg.connect(self.dsn("postgres"), connect_timeout=5):
                    return
            except psycopg.Error as exc:
                last = exc
                time.sleep(0.2)
        raise RuntimeError(f"PostgreSQL did not accept connections: {last}")

    def dsn(self, database: str = "postgres") -> str:
        """A libpq connection string (for psycopg directly)."""
        return f"host=127.0.0.1 port={self.port} user=postgres dbname={database}"

    def create_database(self, name: str) -> str:
        """CREATE DATABASE ``name`` (letters, digits, underscore); return its SQLAlchemy URL."""
        import psycopg

        if not name.replace("_", "").isalnum():
            raise ValueError(f"bad database name {name!r}")
        with psycopg.connect(self.dsn("postgres"), autocommit=True) as conn:
            conn.execute(f'CREATE DATABASE "{name}"')
        return self.url_for(name)

    def stop(self) -> None:
        cluster, self._cluster_dir = self._cluster_dir, None
        if cluster is None:
            return
        data = cluster / "data"
        try:
            if (data / "postmaster.pid").exists():
                self._run([_pg_bin("pg_ctl"), "-D", str(data), "-m", "fast", "-w", "-t", "60", "stop"], timeout=90)
        finally:
            server_log = cluster / "server.log"
            if server_log.exists() and self.workdir.exists():
                shutil.copyfile(server_log, self.log_path)
            shutil.rmtree(cluster, ignore_errors=True)

    def __enter__(self) -> PostgresServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
