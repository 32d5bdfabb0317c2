"""Helpers for the ingest tests: configs, an in-process node, polling, DB look-ups, a subprocess node."""
from __future__ import annotations

import contextlib
import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import yaml
from sqlalchemy import select

from dicomnode.config import NodeConfig, config_from_dict
from dicomnode.db import Instance, Job, Study, make_engine, make_session_factory
from dicomnode.node import Node
from dicomnode.peers.dcmtk import storescu
from dicomnode.peers.ports import free_port, wait_for_port

T = TypeVar("T")
NODE_AET = "CXRNODE"
REPO = Path(__file__).resolve().parents[2]
CXR_NODE = str(Path(sys.executable).with_name("cxr-node"))


def config_dict(data_dir: Path, database_url: str | None = None, **sections: dict[str, Any]) -> dict[str, Any]:
    """A test config: loopback, free port, 1 s quiet time, passthrough processor, no destinations."""
    data: dict[str, Any] = {
        "node": {"ae_title": NODE_AET, "host": "127.0.0.1", "port": free_port(), "min_free_disk_mb": 1},
        "storage": {"data_dir": str(data_dir), "database_url": database_url},
        "study": {"quiet_seconds": 1.0},
        "processing": {"processor": "passthrough", "poll_seconds": 0.2},
        "logging": {"level": "INFO", "json": True},
    }
    for section, values in sections.items():
        if isinstance(values, dict):
            data.setdefault(section, {}).update(values)
        else:
            data[section] = values
    return data


def make_config(data_dir: Path, database_url: str | None = None, **sections: dict[str, Any]) -> NodeConfig:
    return config_from_dict(config_dict(data_dir, database_url, **sections), environ={})


def write_config(path: Path, data: dict[str, Any]) -> Path:
    path.write_text(yaml.safe_dump(data), encoding="utf-8")
    return path


@contextlib.contextmanager
def running_node(config: NodeConfig, role: str = "listener") -> Iterator[Node]:
    node = Node(config, role=role)  # type: ignore[arg-type]
    node.start()
    try:
        yield node
    finally:
        node.stop(timeout=30)


@contextlib.contextmanager
def node_with_db(config: NodeConfig) -> Iterator[tuple[Node, Db, NodeConfig]]:
    """A running listener node and read access to its database."""
    with running_node(config) as node:
        db = Db(config.database_url)
        try:
            yield node, db, config
        finally:
            db.close()


def wait_until(predicate: Callable[[], T], timeout: float = 60.0, interval: float = 0.1, what: str = "") -> T:
    """Poll ``predicate`` until truthy; return its value or fail after ``timeout`` s."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what or predicate}")
        time.sleep(interval)


class Db:
    """Read-only look-ups in a node's database."""

    def __init__(self, url: str):
        self.engine = make_engine(url)
        self.session_factory = make_session_factory(self.engine)

    def close(self) -> None:
        self.engine.dispose()

    def study(self, study_uid: str) -> Study | None:
        with self.session_factory() as s:
            return s.scalar(select(Study).where(Study.study_instance_uid == study_uid))

    def instances(self, study_uid: str | None = None) -> list[Instance]:
        with self.session_factory() as s:
            stmt = select(Instance).order_by(Instance.id)
            if study_uid:
                stmt = stmt.join(Study).where(Study.study_instance_uid == study_uid)
            return list(s.scalars(stmt))

    def jobs(self, study_uid: str) -> list[Job]:
        with self.session_factory() as s:
            return list(s.scalars(select(Job).join(Study).where(Study.study_instance_uid == study_uid)
                                  .order_by(Job.generation)))

    def study_state(self, study_uid: str) -> str | None:
        study = self.study(study_uid)
        return study.state if study else None


def start_cxr_node(args: Sequence[str], log_path: Path, port: int, timeout: float,
                   env: dict[str, str]) -> subprocess.Popen[bytes]:
    """``cxr-node <args>`` in a new session, its output appended to ``log_path``, once it listens on ``port``.
    RuntimeError (with the log's end) when it exits first; killed, and RuntimeError, when it does not listen within
    ``timeout`` s."""
    with open(log_path, "ab") as log:
        process = subprocess.Popen([CXR_NODE, *args], stdout=log, stderr=subprocess.STDOUT, env=env,
                                   start_new_session=True)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"cxr-node exited {process.returncode}: {log_path.read_text()[-3000:]}")
        if wait_for_port(port, timeout=0.2):
            return process
    process.kill()
    process.wait(30)
    raise RuntimeError("cxr-node did not listen in time")


class NodeProcess:
    """``cxr-node serve`` as a subprocess (real signals)."""

    def __init__(self, config_path: Path, port: int, role: str = "all", log_path: Path | None = None,
                 env: dict[str, str] | None = None):
        self.config_path = config_path
        self.port = port
        self.role = role
        self.log_path = log_path or config_path.with_suffix(".log")
        self.env = {**os.environ, **(env or {})}
        self.process: subprocess.Popen[bytes] | None = None

    def start(self, timeout: float = 120.0) -> NodeProcess:
        self.process = start_cxr_node(["serve", "--config", str(self.config_path), "--role", self.role],
                                      self.log_path, self.port, timeout, self.env)
        return self

    def terminate(self, timeout: float = 120.0) -> int:
        assert self.process is not None
        self.process.send_signal(signal.SIGTERM)
        return self.process.wait(timeout)

    def kill(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.kill()
            self.process.wait(30)

    def __enter__(self) -> NodeProcess:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.kill()


_STATUS_RE = re.compile(r"DIMSE Status\s*:\s*0x([0-9a-fA-F]{4})")


@dataclass
class StoreRun:
    returncode: int
    statuses: list[int]
    output: str


def store(files: Sequence[Path], port: int, calling_aet: str = "STORESCU", extra: Sequence[str] = (),
          ae: str = NODE_AET, timeout: float = 600.0) -> StoreRun:
    """Send ``files`` with DCMTK storescu (no halt on failures); return each C-STORE response status."""
    result = storescu(list(files), ae, "127.0.0.1", port, calling_aet=calling_aet,
                      extra_args=["-d", "-nh", *extra], timeout=timeout)
    text = result.stdout + result.stderr
    return StoreRun(result.returncode, [int(m, 16) for m in _STATUS_RE.findall(text)], text)


def send_raw(port: int, meta_source: Path, payload: bytes, workdir: Path, ae: str = NODE_AET) -> int | None:
    """C-STORE ``payload`` as the raw dataset bytes of one instance (pynetdicom SCU, chunked send).

    The file meta (SOP class/instance, transfer syntax) is taken from ``meta_source``. For inputs storescu itself
    refuses to send (non-DICOM bytes, truncated files). Returns the response status (None: no response).
    """
    from pydicom import dcmread
    from pydicom.filewriter import write_file_meta_info
    from pynetdicom import AE, _config

    meta = dcmread(meta_source, stop_before_pixels=True).file_meta
    path = workdir / f"raw-{time.monotonic_ns()}.dcm"
    with open(path, "wb") as f:
        f.write(b"\x00" * 128 + b"DICM")
        write_file_meta_info(f, meta, enforce_standard=True)
        f.write(payload)
    scu = AE(ae_title="RAWSCU")
    scu.add_requested_context(meta.MediaStorageSOPClassUID, [meta.TransferSyntaxUID])
    previous = _config.STORE_SEND_CHUNKED_DATASET
    _config.STORE_SEND_CHUNKED_DATASET = True
    try:
        assoc = scu.associate("127.0.0.1", port, ae_title=ae)
        assert assoc.is_established, "association refused"
        try:
            status = assoc.send_c_store(path)
        finally:
            assoc.release()
    finally:
        _config.STORE_SEND_CHUNKED_DATASET = previous
    return int(status.Status) if "Status" in status else None


def dataset_payload(path: Path) -> bytes:
    """The bytes of a Part-10 file after its file meta information."""
    from pydicom import dcmread

    ds = dcmread(path, stop_before_pixels=True)
    data = path.read_bytes()
    offset = 132 + 12 + int(ds.file_meta.FileMetaInformationGroupLength)
    return data[offset:]
