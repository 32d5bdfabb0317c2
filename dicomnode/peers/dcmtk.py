"""Thin wrappers around DCMTK command-line tools (storescu, echoscu, storescp) for tests and benchmarks."""
from __future__ import annotations

import shutil
import subprocess
from collections.abc import Sequence
from pathlib import Path

from dicomnode.peers.ports import free_port, port_open
from dicomnode.peers.process import LoggedProcess, ProcessPeer


def _require(tool: str) -> str:
    path = shutil.which(tool)
    if path is None:
        raise FileNotFoundError(f"{tool} not found (Debian package 'dcmtk')")
    return path


def _scu(tool: str, ae: str, host: str, port: int, calling_aet: str, extra_args: Sequence[str], timeout: float,
         operands: Sequence[str] = ()) -> subprocess.CompletedProcess[str]:
    """Run the DCMTK SCU ``tool`` (``-aet calling_aet -aec ae``) against ``host:port``; never raises on failure."""
    cmd = [_require(tool), "-aet", calling_aet, "-aec", ae, *extra_args, host, str(port), *operands]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, check=False)


def storescu(files: Sequence[Path | str], ae: str, host: str, port: int, calling_aet: str = "STORESCU",
             extra_args: Sequence[str] = (), timeout: float = 600.0) -> subprocess.CompletedProcess[str]:
    """Send ``files`` in one association (``storescu -aec ae -aet calling_aet``); never raises on failure."""
    return _scu("storescu", ae, host, port, calling_aet, extra_args, timeout, [str(f) for f in files])


def acknowledged(output: str) -> list[str]:
    """SOP Instance UIDs (file stems) that ``storescu -v`` got a success response for, from its output."""
    acked, current = [], None
    for line in output.splitlines():
        if "Sending file:" in line:
            current = Path(line.split("Sending file:", 1)[1].strip()).stem
        elif "Received Store Response (Success" in line and current:
            acked.append(current)
            current = None
    return acked


def echoscu(ae: str, host: str, port: int, calling_aet: str = "ECHOSCU", extra_args: Sequence[str] = (),
            timeout: float = 60.0) -> subprocess.CompletedProcess[str]:
    """One C-ECHO; returncode 0 means the peer answered success."""
    return _scu("echoscu", ae, host, port, calling_aet, extra_args, timeout)


class StoreSCP(ProcessPeer):
    """DCMTK ``storescp`` writing into ``directory`` on a free port; a context manager."""

    def __init__(
        self,
        directory: Path | str,
        aet: str = "STORESCP",
        port: int | None = None,
        extra_args: Sequence[str] = (),
    ) -> None:
        self.directory = Path(directory)
        self.aet = aet
        self.port = port or free_port()
        self.extra_args = list(extra_args)
        self._process = LoggedProcess(self.directory.parent / f"storescp-{self.port}.log")

    def start(self, timeout: float = 60.0) -> StoreSCP:
        self.directory.mkdir(parents=True, exist_ok=True)
        cmd = [_require("storescp"), "-aet", self.aet, "-od", str(self.directory), *self.extra_args, str(self.port)]
        self._process.launch(cmd, lambda: port_open(self.port), timeout, name="storescp",
                             not_ready=f"did not listen on {self.port}")
        return self

    def received(self) -> list[Path]:
        """Files storescp has written so far."""
        return sorted(p for p in self.directory.iterdir() if p.is_file())
