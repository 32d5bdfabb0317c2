"""An Orthanc PACS on loopback with its own JSON config, for tests, benchmarks and the demo."""
from __future__ import annotations

import base64
import json
import os
import shutil
import subprocess
import time
import urllib.error
import urllib.request
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from dicomnode.peers.ports import free_port
from dicomnode.peers.process import LoggedProcess, ProcessPeer

ORTHANC_BINARY = os.environ.get("CXR_ORTHANC_BINARY", "Orthanc")
DICOMWEB_PACKAGE = "orthanc-dicomweb"
_DICOMWEB_PLUGIN_NAMES = ("libOrthancDicomWeb.so",)


class OrthancError(RuntimeError):
    """Orthanc did not start or a REST call failed."""


def dicomweb_plugin_path() -> Path:
    """The DICOMweb plugin's shared library (``CXR_ORTHANC_DICOMWEB`` or the Debian package's file)."""
    override = os.environ.get("CXR_ORTHANC_DICOMWEB")
    if override:
        return Path(override)
    try:
        listed = subprocess.run(["dpkg", "-L", DICOMWEB_PACKAGE], capture_output=True, text=True, check=False).stdout
    except OSError:
        listed = ""
    for line in listed.splitlines():
        if Path(line).name in _DICOMWEB_PLUGIN_NAMES and Path(line).exists():
            return Path(line)
    raise OrthancError(f"Orthanc's DICOMweb plugin not found (Debian package '{DICOMWEB_PACKAGE}')")


def dicomweb_config(plugin: Path) -> dict[str, Any]:
    """Config keys that load the DICOMweb plugin: QIDO/WADO-RS/STOW under /dicom-web/, WADO-URI at /wado."""
    return {
        "Plugins": [str(plugin)],
        "DicomWeb": {"Enable": True, "Root": "/dicom-web/", "EnableWado": True, "WadoRoot": "/wado",
                     "Ssl": False, "StudiesMetadata": "Full", "SeriesMetadata": "Full"},
    }


class OrthancServer(ProcessPeer):
    """Runs ``Orthanc`` with storage in ``workdir``; ``restart()`` keeps storage and ports.

    ``modalities`` maps a name to (AE title, host, port) for Orthanc's DicomModalities. ``dicomweb`` loads the
    DICOMweb plugin (``/dicom-web/`` and WADO-URI ``/wado`` on the HTTP port). ``http_user`` (user, password)
    turns on HTTP basic authentication. ``stop()`` keeps storage in ``workdir``; ``kill()`` is a crash, or an
    archive thrown away with its directory (a clean stop takes Orthanc 2-4 s).
    """

    def __init__(
        self,
        workdir: Path | str,
        aet: str = "ORTHANC",
        modalities: Mapping[str, tuple[str, str, int]] | None = None,
        lua_scripts: Sequence[Path | str] = (),
        dicom_port: int | None = None,
        http_port: int | None = None,
        stable_age: int = 60,
        extra_config: Mapping[str, Any] | None = None,
        dicomweb: bool = False,
        http_user: tuple[str, str] | None = None,
    ) -> None:
        self.workdir = Path(workdir)
        self.aet = aet
        self.modalities = dict(modalities or {})
        self.lua_scripts = [Path(p) for p in lua_scripts]
        self.dicom_port = dicom_port or free_port()
        self.http_port = http_port or free_port()
        self.stable_age = stable_age
        self.extra_config = dict(extra_config or {})
        self.dicomweb = dicomweb
        self.http_user = http_user  # (user, password): HTTP basic authentication required, REST calls use it
        self._process = LoggedProcess(self.workdir / "orthanc.log")

    # -- lifecycle -----------------------------------------------------------------------------------------
    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.http_port}"

    def config(self) -> dict[str, Any]:
        """The JSON configuration Orthanc is started with."""
        config: dict[str, Any] = {
            "Name": f"cxr-test-{self.aet}",
            "StorageDirectory": str(self.workdir / "storage"),
            "IndexDirectory": str(self.workdir / "index"),
            "HttpServerEnabled": True,
            "HttpPort": self.http_port,
            "RemoteAccessAllowed": False,
            "AuthenticationEnabled": False,
            "DicomServerEnabled": True,
            "DicomAet": self.aet,
            "DicomPort": self.dicom_port,
            "DicomCheckCalledAet": False,
            "DicomModalities": {name: list(v) for name, v in self.modalities.items()},
            "LuaScripts": [str(p) for p in self.lua_scripts],
            "StableAge": self.stable_age,
            "Plugins": [],
            "SaveJobs": False,
            "StorageCompression": False,
            "DicomScpTimeout": 30,
        }
        if self.dicomweb:
            config.update(dicomweb_config(dicomweb_plugin_path()))
        if self.http_user:
            config.update({"AuthenticationEnabled": True, "RegisteredUsers": {self.http_user[0]: self.http_user[1]}})
        config.update(self.extra_config)
        return config

    def start(self, timeout: float = 90.0) -> OrthancServer:
        """Start Orthanc and wait until its REST API answers."""
        if self.running:
            return self
        if shutil.which(ORTHANC_BINARY) is None:
            raise OrthancError(f"{ORTHANC_BINARY} not found (Debian package 'orthanc')")
        self.workdir.mkdir(parents=True, exist_ok=True)
        config_path = self.workdir / "orthanc.json"
        config_path.write_text(json.dumps(self.config(), indent=2))
        self._process.launch([ORTHANC_BINARY, str(config_path)], self._answers, timeout, name="Orthanc",
                             not_ready="REST did not answer", error=OrthancError, interval=0.2, cwd=self.workdir)
        return self

    def _answers(self) -> bool:
        try:
            self.rest_get("/system", timeout=2.0)
            return True
        except (OSError, OrthancError):
            return False

    def restart(self, timeout: float = 90.0) -> OrthancServer:
        self.stop()
        return self.start(timeout)

    # -- REST ----------------------------------------------------------------------------------------------
    def _request(self, method: str, path: str, body: Any = None, timeout: float = 30.0) -> bytes:
        data: bytes | None
        if body is None:
            data = None
        elif isinstance(body, bytes):
            data = body
        elif isinstance(body, str):
            data = body.encode()
        else:
            data = json.dumps(body).encode()
        request = urllib.request.Request(self.url + path, data=data, method=method)
        if self.http_user:
            token = base64.b64encode(f"{self.http_user[0]}:{self.http_user[1]}".encode()).decode()
            request.add_header("Authorization", f"Basic {token}")
        try:
            with urllib.request.urlopen(request, timeout=timeout) as response:
                return response.read()
        except urllib.error.HTTPError as exc:
            raise OrthancError(f"{method} {path}: HTTP {exc.code} {exc.read()[:500]!r}") from exc

    @staticmethod
    def _decode(raw: bytes) -> Any:
        if not raw:
            return None
        try:
            return json.loads(raw)
        except ValueError:
            return raw.decode(errors="replace")

    def rest_get(self, path: str, timeout: float = 30.0) -> Any:
        return self._decode(self._request("GET", path, timeout=timeout))

    def rest_get_bytes(self, path: str, timeout: float = 60.0) -> bytes:
        return self._request("GET", path, timeout=timeout)

    def rest_post(self, path: str, body: Any = None, timeout: float = 60.0) -> Any:
        return self._decode(self._request("POST", path, body if body is not None else b"", timeout=timeout))

    def rest_delete(self, path: str, timeout: float = 30.0) -> Any:
        return self._decode(self._request("DELETE", path, timeout=timeout))

    # -- helpers -------------------------------------------------------------------------------------------
    def find(self, level: str, query: Mapping[str, str]) -> list[dict[str, Any]]:
        """``/tools/find`` with Expand: main DICOM tags and Orthanc ids of matching resources."""
        return list(self.rest_post("/tools/find", {"Level": level, "Query": dict(query), "Expand": True}))

    def instances_of_study(self, study_uid: str) -> list[dict[str, Any]]:
        """Every instance Orthanc holds for a study (expanded, see ``find``)."""
        return self.find("Instance", {"StudyInstanceUID": study_uid})

    def sop_instance_uids(self, study_uid: str | None = None) -> list[str]:
        """SOP Instance UIDs held (of one study, or all); one entry per stored copy."""
        query = {"StudyInstanceUID": study_uid} if study_uid else {}
        return [i["MainDicomTags"]["SOPInstanceUID"] for i in self.find("Instance", query)]

    def statistics(self) -> dict[str, Any]:
        return dict(self.rest_get("/statistics"))

    def wait_for_instances(self, count: int, study_uid: str | None = None, timeout: float = 60.0) -> list[str]:
        """Poll until at least ``count`` instances (of a study, or in total) are stored; return their UIDs."""
        deadline = time.monotonic() + timeout
        uids: list[str] = []
        while time.monotonic() < deadline:
            uids = self.sop_instance_uids(study_uid)
            if len(uids) >= count:
                return uids
            time.sleep(0.2)
        raise TimeoutError(f"Orthanc holds {len(uids)} instances, expected {count}")
