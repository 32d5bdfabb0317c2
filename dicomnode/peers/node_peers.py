"""The HL7 and FHIR peers on loopback, for the demo (``cxr-node demo --ris``) and the tests: Node.js scripts in
``dicomnode/peers/js/`` with their npm packages pinned in its ``package.json`` / ``package-lock.json`` and installed
beside them by ``scripts/bootstrap.sh`` (``npm ci``; ``node_modules`` is not in git nor in the wheel).

- :class:`MllpReceiver`: npm ``node-hl7-server`` on a free port; it parses each message with ``node-hl7-client`` and
  answers ``AA`` (or the ``ack`` asked for); MLLP over TLS with a key and certificate.
- :class:`FhirServer`: npm ``@medplum/fhir-router`` with its in-memory repository behind node's http server; every
  resource a request would store is checked with ``validateResource`` (``@medplum/core``) and refused with 400
  when it fails; optional bearer or basic auth.

Each logs what it received as JSON lines (``received()``) and stops what it started.
"""
from __future__ import annotations

import json
import os
import shutil
from pathlib import Path
from types import TracebackType
from typing import Any

from dicomnode.peers.ports import free_port
from dicomnode.peers.process import LoggedProcess

JS_DIR = Path(__file__).resolve().parent / "js"
START_SECONDS = 60.0


class NodePeerError(RuntimeError):
    """Node.js or the peers' npm packages are missing, or a peer did not start."""


def node_modules() -> Path:
    """The peers' installed npm packages (``CXR_PEERS_NODE_MODULES`` or ``dicomnode/peers/js/node_modules``)."""
    path = Path(os.environ.get("CXR_PEERS_NODE_MODULES") or JS_DIR / "node_modules")
    if not (path / "node-hl7-server").is_dir() or not (path / "@medplum" / "fhir-router").is_dir():
        raise NodePeerError(f"the HL7/FHIR peers' npm packages are not installed in {path}: run scripts/bootstrap.sh "
                            f"(npm ci in {JS_DIR})")
    return path


def node_binary() -> str:
    node = shutil.which("node")
    if node is None:
        raise NodePeerError("node (Node.js 20 or later) is not on PATH: scripts/bootstrap.sh installs it")
    return node


class _NodePeer:
    script = ""
    what = ""

    def __init__(self, directory: Path, port: int | None = None) -> None:
        self.directory = Path(directory)
        self.directory.mkdir(parents=True, exist_ok=True)
        self.port = port or free_port()
        self.log_file = self.directory / "received.jsonl"
        self.process = LoggedProcess(self.directory / f"{self.script}.log")

    def arguments(self) -> list[str]:
        return ["--port", str(self.port), "--log", str(self.log_file)]

    def start(self) -> None:
        modules = node_modules()
        script = JS_DIR / f"{self.script}.mjs"
        run_dir = modules.parent  # node resolves the packages from the script's folder: run a copy beside them
        if run_dir != JS_DIR:
            shutil.copyfile(script, run_dir / script.name)
            script = run_dir / script.name
        exited = self.process.start([node_binary(), str(script), *self.arguments()], self._ready, START_SECONDS,
                                    cwd=run_dir)
        if exited is not None:
            raise NodePeerError(f"{self.what} exited with {exited}: {self.process.tail()}")

    def _ready(self) -> bool:
        return f"listening {self.port}" in self.process.tail(4000)

    def stop(self) -> None:
        self.process.stop(10)

    def received(self) -> list[dict[str, Any]]:
        """What it logged, one dict per message or stored request, oldest first."""
        if not self.log_file.is_file():
            return []
        return [json.loads(line) for line in self.log_file.read_text(encoding="utf-8").splitlines() if line]

    def __enter__(self) -> _NodePeer:
        self.start()
        return self

    def __exit__(self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None) -> None:
        self.stop()


class MllpReceiver(_NodePeer):
    """npm node-hl7-server on 127.0.0.1:``port``, answering ``ack`` (AA, AE or AR); TLS with ``tls_key`` and
    ``tls_cert``."""

    script = "mllp_receiver"
    what = "the MLLP receiver (node-hl7-server)"

    def __init__(self, directory: Path, port: int | None = None, ack: str = "AA", tls_key: Path | None = None,
                 tls_cert: Path | None = None) -> None:
        super().__init__(directory, port)
        self.ack, self.tls_key, self.tls_cert = ack, tls_key, tls_cert

    def arguments(self) -> list[str]:
        tls = ["--key", str(self.tls_key), "--cert", str(self.tls_cert)] if self.tls_key and self.tls_cert else []
        return [*super().arguments(), "--ack", self.ack, *tls]

    def __enter__(self) -> MllpReceiver:
        self.start()
        return self


class FhirServer(_NodePeer):
    """@medplum/fhir-router (in-memory) on 127.0.0.1:``port``, validating what it stores; ``token`` (bearer) or
    ``basic`` ("user:password") make it refuse requests without them (401)."""

    script = "fhir_server"
    what = "the FHIR server (@medplum/fhir-router)"

    def __init__(self, directory: Path, port: int | None = None, token: str | None = None,
                 basic: str | None = None) -> None:
        super().__init__(directory, port)
        self.token, self.basic = token, basic

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/fhir/R4"

    def arguments(self) -> list[str]:
        auth = ["--token", self.token] if self.token else ["--basic", self.basic] if self.basic else []
        return [*super().arguments(), *auth]

    def __enter__(self) -> FhirServer:
        self.start()
        return self
