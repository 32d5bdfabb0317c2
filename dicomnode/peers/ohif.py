"""OHIF Viewer on loopback: its prebuilt ``dist/`` and Orthanc's DICOMweb behind one same-origin proxy.

The dist comes from npm (``npm pack @ohif/app@OHIF_VERSION``, no build), unpacked by ``scripts/bootstrap.sh`` into
``.cache/ohif/app/``. ``OhifServer`` serves it with an ``app-config.js`` of its own (one DICOMweb data source),
falls back to ``index.html`` for the single-page app's routes, and forwards ``/dicom-web`` and ``/wado`` to an
Orthanc started with ``dicomweb=True``. Python standard library only; one thread per request.
"""
from __future__ import annotations

import http.client
import json
import mimetypes
import os
import shutil
import urllib.parse
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

from dicomnode.background import ServerHost
from dicomnode.peers.ports import free_port

OHIF_VERSION = "3.13.2"  # scripts/bootstrap.sh pins the same version
OHIF_CACHE = Path(".cache") / "ohif" / "app"  # relative to the repository root
FORWARDED_PREFIXES = ("/dicom-web", "/wado")
_HOP_BY_HOP = {"connection", "keep-alive", "proxy-authenticate", "proxy-authorization", "te", "trailers",
               "transfer-encoding", "upgrade", "host"}
_TYPES = {".js": "application/javascript", ".mjs": "application/javascript", ".wasm": "application/wasm",
          ".css": "text/css", ".html": "text/html; charset=utf-8", ".json": "application/json",
          ".svg": "image/svg+xml", ".woff2": "font/woff2", ".png": "image/png", ".ico": "image/x-icon"}


class OhifError(RuntimeError):
    """The OHIF dist is missing or the proxy could not start."""


def find_ohif_dist(explicit: Path | str | None = None) -> Path:
    """OHIF's ``dist/``: ``explicit``, ``CXR_OHIF_DIST``, or ``.cache/ohif/app/dist`` in the cwd or the repo."""
    candidates: list[Path] = []
    if explicit:
        candidates.append(Path(explicit))
    elif os.environ.get("CXR_OHIF_DIST"):
        candidates.append(Path(os.environ["CXR_OHIF_DIST"]))
    else:
        candidates += [Path.cwd() / OHIF_CACHE / "dist", Path(__file__).resolve().parents[2] / OHIF_CACHE / "dist"]
    for path in candidates:
        if (path / "index.html").is_file():
            return path.resolve()
    raise OhifError(f"OHIF's prebuilt viewer not found in {', '.join(map(str, candidates))}: run "
                    f"scripts/bootstrap.sh (it unpacks `npm pack @ohif/app@{OHIF_VERSION}` into {OHIF_CACHE})")


def app_config(title: str = "Orthanc (loopback)") -> str:
    """``app-config.js``: one DICOMweb data source on the same origin (QIDO/WADO-RS ``/dicom-web``, WADO-URI
    ``/wado``)."""
    source = {
        "namespace": "@ohif/extension-default.dataSourcesModule.dicomweb",
        "sourceName": "orthanc",
        "configuration": {
            "friendlyName": title,
            "name": "orthanc",
            "qidoRoot": "/dicom-web",
            "wadoRoot": "/dicom-web",
            "wadoUriRoot": "/wado",
            "qidoSupportsIncludeField": False,
            "imageRendering": "wadors",
            "thumbnailRendering": "wadors",
            "enableStudyLazyLoad": True,
            "supportsFuzzyMatching": False,
            "supportsWildcard": True,
            "omitQuotationForMultipartRequest": True,
            "bulkDataURI": {"enabled": True},
        },
    }
    config = {
        "routerBasename": "/",
        "extensions": [],
        "modes": [],
        "showStudyList": True,
        "maxNumberOfWebWorkers": 2,
        "showWarningMessageForCrossOrigin": False,
        "showCPUFallbackMessage": True,
        "showLoadingIndicator": True,
        "investigationalUseDialog": {"option": "never"},
        "defaultDataSourceName": "orthanc",
        "dataSources": [source],
    }
    return f"window.config = {json.dumps(config, indent=2)};\n"


class OhifServer(ServerHost[ThreadingHTTPServer]):
    """Serves OHIF's dist and forwards DICOMweb to ``orthanc_url``, on ``http://127.0.0.1:PORT``."""

    def __init__(self, orthanc_url: str, dist: Path | str | None = None, port: int | None = None) -> None:
        self.dist = find_ohif_dist(dist)
        target = urllib.parse.urlsplit(orthanc_url)
        self.orthanc_host = target.hostname or "127.0.0.1"
        self.orthanc_port = target.port or 80
        self.port = port or free_port()
        self.config_js = app_config().encode()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def viewer_url(self, study_instance_uid: str) -> str:
        """The page that opens one study in OHIF's basic viewer."""
        return f"{self.url}/viewer?StudyInstanceUIDs={urllib.parse.quote(study_instance_uid)}"

    def start(self) -> OhifServer:
        if self._server is not None:
            return self
        handler = type("Handler", (_Handler,), {"server_info": self})
        try:
            httpd = ThreadingHTTPServer(("127.0.0.1", self.port), handler)
        except OSError as exc:
            raise OhifError(f"cannot listen on 127.0.0.1:{self.port}: {exc}") from exc
        httpd.daemon_threads = True
        self._serve(httpd, "ohif-proxy")
        return self



class _Handler(BaseHTTPRequestHandler):
    server_info: OhifServer
    protocol_version = "HTTP/1.1"

    def log_message(self, format: str, *args: object) -> None:  # quiet: a viewer makes many requests
        pass

    def do_GET(self) -> None:
        self._dispatch()

    def do_HEAD(self) -> None:
        self._dispatch()

    def do_POST(self) -> None:
        self._dispatch()

    def do_PUT(self) -> None:
        self._dispatch()

    def do_DELETE(self) -> None:
        self._dispatch()

    def _dispatch(self) -> None:
        path = urllib.parse.urlsplit(self.path).path
        if any(path == p or path.startswith(p + "/") for p in FORWARDED_PREFIXES):
            self._forward()
        elif self.command in ("GET", "HEAD"):
            self._static(path)
        else:
            self._send(405, b"method not allowed", "text/plain")

    # -- static files --------------------------------------------------------------------------------------
    def _static(self, path: str) -> None:
        info = self.server_info
        if path == "/app-config.js":
            self._send(200, info.config_js, "application/javascript")
            return
        relative = urllib.parse.unquote(path).lstrip("/")
        file = (info.dist / relative).resolve() if relative else info.dist / "index.html"
        if not file.is_relative_to(info.dist):
            self._send(404, b"not found", "text/plain")
            return
        if file.is_dir():
            file = file / "index.html"
        if not file.is_file():
            if Path(relative).suffix:  # a missing asset stays a 404; routes of the app get index.html
                self._send(404, b"not found", "text/plain")
                return
            file = info.dist / "index.html"
        content_type = _TYPES.get(file.suffix) or mimetypes.guess_type(file.name)[0] or "application/octet-stream"
        size = file.stat().st_size
        self.send_response(200)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(size))
        self.send_header("Cache-Control", "no-cache")
        self.end_headers()
        if self.command != "HEAD":
            with open(file, "rb") as handle:
                shutil.copyfileobj(handle, self.wfile, 1 << 20)

    def _send(self, status: int, body: bytes, content_type: str) -> None:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    # -- DICOMweb ------------------------------------------------------------------------------------------
    def _forward(self) -> None:
        info = self.server_info
        length = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(length) if length else None
        headers = {k: v for k, v in self.headers.items() if k.lower() not in _HOP_BY_HOP}
        headers["Host"] = self.headers.get("Host", f"127.0.0.1:{info.port}")  # Orthanc builds BulkDataURIs from it
        connection = http.client.HTTPConnection(info.orthanc_host, info.orthanc_port, timeout=300)
        try:
            connection.request(self.command, self.path, body=body, headers=headers)
            response = connection.getresponse()
            data = response.read()
        except OSError as exc:
            self._send(502, f"Orthanc unreachable: {exc}".encode(), "text/plain")
            return
        finally:
            connection.close()
        self.send_response(response.status, response.reason)
        for key, value in response.getheaders():
            if key.lower() not in _HOP_BY_HOP and key.lower() != "content-length":
                self.send_header(key, value)
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(data)
