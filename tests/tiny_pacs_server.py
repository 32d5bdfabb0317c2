"""PyPI ``tiny-pacs`` (pure Python, on pynetdicom2) as a second PACS on loopback, with ``tiny-pacs-dicomweb``.

C-STORE, C-FIND, C-MOVE, C-GET on its DIMSE port, STOW-RS / WADO-RS / QIDO-RS under ``/dicomweb`` on its HTTP port.
Files and an SQLite database in ``workdir``. Its DIMSE server binds every interface and has no setting for that:
this module's ``__main__`` runs it with the listening socket bound to ``127.0.0.1`` instead
(``python tests/tiny_pacs_server.py CONFIG``). From the ``test`` extra; imported only in that process.
"""
from __future__ import annotations

import json
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from dicomnode.peers.ports import free_port, port_open
from dicomnode.peers.process import LoggedProcess, ProcessPeer

LOOPBACK = "127.0.0.1"


def tiny_pacs_config(workdir: Path, aet: str, port: int, http_port: int,
                     move_destinations: Mapping[str, tuple[str, int]]) -> dict[str, Any]:
    """Its configuration: on-disk files and database, known C-MOVE destinations, DICOMweb on loopback."""
    devices = {dest_aet: {"aet": dest_aet, "address": host, "port": dest_port}
               for dest_aet, (host, dest_port) in move_destinations.items()}
    return {
        "ae": {"ae_title": [aet], "port": port, "dump_ds": False},
        "log": {"version": 1, "disable_existing_loggers": False,
                "formatters": {"plain": {"format": "%(asctime)s %(levelname)s %(name)s %(message)s"}},
                "handlers": {"console": {"class": "logging.StreamHandler", "level": "INFO", "formatter": "plain",
                                         "stream": "ext://sys.stdout"}},
                "root": {"level": "INFO", "handlers": ["console"]}},
        "components": {
            "Database": {"on": True, "driver": "sqlite", "db_name": str(workdir / "pacs.db"), "mode": "rwc"},
            "Devices": {"on": True, "devices": devices, "auto_add": False},
            "PACS": {"on": True},
            "InMemoryStorage": {"on": False},
            "FileStorage": {"on": True, "storage_dir": str(workdir / "files")},
            "HttpServer": {"on": True, "host": LOOPBACK, "port": http_port, "allow_remote": False},
            "DICOMWeb": {"on": True, "prefix": "/dicomweb", "auth": "none"},
        },
    }


class TinyPacs(ProcessPeer):
    """``tiny-pacs`` with DICOMweb in ``workdir`` on free loopback ports; a context manager.

    ``move_destinations`` maps an AE title to (host, port): the C-MOVE destinations it knows."""

    def __init__(self, workdir: Path | str, aet: str = "TINYPACS",
                 move_destinations: Mapping[str, tuple[str, int]] | None = None) -> None:
        self.workdir = Path(workdir)
        self.aet = aet
        self.dicom_port = free_port()
        self.http_port = free_port()
        self.move_destinations = dict(move_destinations or {})
        self._process = LoggedProcess(self.workdir / "tiny-pacs.log")

    @property
    def dicomweb_url(self) -> str:
        return f"http://{LOOPBACK}:{self.http_port}/dicomweb"

    def start(self, timeout: float = 60.0) -> TinyPacs:
        self.workdir.mkdir(parents=True, exist_ok=True)
        (self.workdir / "files").mkdir(exist_ok=True)
        config = self.workdir / "tiny-pacs.json"
        config.write_text(json.dumps(tiny_pacs_config(self.workdir, self.aet, self.dicom_port, self.http_port,
                                                      self.move_destinations), indent=1))
        command = [sys.executable, str(Path(__file__).resolve()), str(config)]
        self._process.launch(command, lambda: port_open(self.dicom_port) and port_open(self.http_port), timeout,
                             name="tiny-pacs", not_ready="did not listen", cwd=self.workdir)
        return self


def _serve(config_path: str, host: str = LOOPBACK) -> None:
    """Run tiny-pacs with its DIMSE listener bound to ``host`` (it binds every interface otherwise)."""
    from tiny_pacs import ae, config, server

    def bound_to_host(cls: Any) -> Any:
        class OnHost(cls):  # type: ignore[misc, valid-type]
            def server_bind(self) -> None:
                self.server_address = (host, self.server_address[1])  # type: ignore[has-type]
                super().server_bind()

        return OnHost

    ae._ThreadingTCPServer = bound_to_host(ae._ThreadingTCPServer)  # type: ignore[misc]
    ae._TLSThreadingTCPServer = bound_to_host(ae._TLSThreadingTCPServer)  # type: ignore[misc]
    settings = config.Config()
    settings.update_config(config_path)
    server.Server(settings).start_with_block()


if __name__ == "__main__":
    _serve(sys.argv[1])
