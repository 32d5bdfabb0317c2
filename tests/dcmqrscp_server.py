"""DCMTK ``dcmqrscp``: a real Query/Retrieve archive (C-STORE, C-FIND, C-MOVE, C-GET) on loopback, for tests.

Configured with a generated ``dcmqrscp.cfg`` (one storage area, the C-MOVE destinations it may send to). It keeps
what it receives in the negotiated transfer syntax and cannot transcode JPEG 2000: ``transfer_options`` such as
``+xw -xw`` make it accept JPEG 2000 lossy on C-STORE and propose it (with the uncompressed syntaxes) on C-MOVE.
It runs forking (its single-process mode crashes after the first association in DCMTK 3.6.7), so it is stopped as a
process group.
"""
from __future__ import annotations

import shutil
from collections.abc import Mapping, Sequence
from pathlib import Path

from dicomnode.peers.ports import free_port, port_open
from dicomnode.peers.process import LoggedProcess, ProcessPeer

DCMQRSCP = "dcmqrscp"


def _config_text(aet: str, port: int, storage: Path, move_destinations: Mapping[str, tuple[str, int]]) -> str:
    hosts = "\n".join(f"dest{i} = ({dest_aet}, {host}, {dest_port})"
                      for i, (dest_aet, (host, dest_port)) in enumerate(move_destinations.items()))
    return (f"NetworkTCPPort  = {port}\nMaxPDUSize      = 16384\nMaxAssociations = 16\n\n"
            f"HostTable BEGIN\n{hosts}\nHostTable END\n\n"
            "VendorTable BEGIN\nVendorTable END\n\n"
            f"AETable BEGIN\n{aet}  {storage}  RW  (200, 1024mb)  ANY\nAETable END\n")


class DcmQRSCP(ProcessPeer):
    """``dcmqrscp`` with its archive in ``workdir``; a context manager.

    ``move_destinations`` maps an AE title to (host, port): where it may send C-MOVE sub-operations."""

    def __init__(self, workdir: Path | str, aet: str = "DCMQRSCP", port: int | None = None,
                 move_destinations: Mapping[str, tuple[str, int]] | None = None,
                 transfer_options: Sequence[str] = ()) -> None:
        self.workdir = Path(workdir)
        self.aet = aet
        self.port = port or free_port()
        self.move_destinations = dict(move_destinations or {})
        self.transfer_options = list(transfer_options)
        self.storage = self.workdir / "archive"
        self.config_path = self.workdir / "dcmqrscp.cfg"
        self._process = LoggedProcess(self.workdir / "dcmqrscp.log", group=True)

    def start(self, timeout: float = 60.0) -> DcmQRSCP:
        binary = shutil.which(DCMQRSCP)
        if binary is None:
            raise FileNotFoundError(f"{DCMQRSCP} not found (Debian package 'dcmtk')")
        self.storage.mkdir(parents=True, exist_ok=True)
        self.config_path.write_text(_config_text(self.aet, self.port, self.storage, self.move_destinations))
        command = [binary, "-c", str(self.config_path), "-v", *self.transfer_options, str(self.port)]
        self._process.launch(command, lambda: port_open(self.port), timeout, name="dcmqrscp",
                             not_ready=f"did not listen on {self.port}")
        return self

    def archived(self) -> list[Path]:
        """The files in its archive (its index file excluded)."""
        return sorted(p for p in self.storage.iterdir() if p.is_file() and p.name != "index.dat")
