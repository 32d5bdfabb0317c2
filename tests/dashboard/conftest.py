"""A node on loopback with the dashboard on, and a small HTTP client that shows redirects and keeps cookies."""
from __future__ import annotations

import http.client
import re
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlencode, urlsplit

import pytest

from dicomnode.config import NodeConfig, config_from_dict
from dicomnode.dashboard.auth import SESSION_COOKIE as SESSION_COOKIE_NAME  # noqa: F401 - for the tests
from dicomnode.node import Node

ROOT = Path(__file__).resolve().parents[2]
ARTEFACTS = ROOT / "out" / "dashboard"  # git-ignored; screenshots stay here after the run
TOKEN_ENV = "CXR_TEST_DASHBOARD_TOKEN"
TOKEN = "test-token-0123456789-abcdef"


@dataclass
class Reply:
    status: int
    headers: dict[str, str]
    body: str
    set_cookies: list[str] = field(default_factory=list)  # every Set-Cookie header, as sent


@dataclass
class Client:
    """HTTP/1.1 to the dashboard: no redirect following, cookies kept (``cookies``), extra headers per call."""

    base: str
    cookies: dict[str, str] = field(default_factory=dict)

    def request(self, method: str, path: str, form: dict[str, Any] | None = None,
                headers: dict[str, str] | None = None) -> Reply:
        parts = urlsplit(self.base)
        conn = http.client.HTTPConnection(parts.hostname, parts.port, timeout=30)
        sent = {"Accept": "text/plain", **(headers or {})}
        if self.cookies:
            sent["Cookie"] = "; ".join(f"{k}={v}" for k, v in self.cookies.items())
        body = None
        if form is not None:
            body = urlencode(form)
            sent["Content-Type"] = "application/x-www-form-urlencoded"
        conn.request(method, path, body=body, headers=sent)
        response = conn.getresponse()
        text = response.read().decode("utf-8", "replace")
        set_cookies = [v for k, v in response.getheaders() if k.lower() == "set-cookie"]
        for value in set_cookies:
            if True:
                key, _, rest = value.partition("=")
                val = rest.split(";", 1)[0].strip('"')
                if val and "max-age=0" not in value.lower():
                    self.cookies[key] = val
                else:
                    self.cookies.pop(key, None)
        conn.close()
        return Reply(response.status, {k.lower(): v for k, v in response.getheaders()}, text, set_cookies)

    def get(self, path: str, **kw: Any) -> Reply:
        return self.request("GET", path, **kw)

    def post(self, path: str, form: dict[str, Any] | None = None, **kw: Any) -> Reply:
        return self.request("POST", path, form=form or {}, **kw)

    def login(self, secret: str, user: str = "") -> Reply:
        page = self.get("/login", headers={"Accept": "text/html"})
        assert page.status == 200, page
        return self.post("/login", {"csrf_token": csrf_of(page.body), "secret": secret, "user": user, "next": "/"})


def csrf_of(html: str) -> str:
    found = (re.search(r'name="csrf_token" value="([^"]+)"', html)
             or re.search(r'name="csrf-token" content="([^"]+)"', html))
    assert found, "no CSRF token in the page"
    return found.group(1)


def dashboard_config(data_dir: Path, auth: dict[str, Any] | None = None, **extra: Any) -> NodeConfig:
    """Loopback node, passthrough processor, dashboard on a free port."""
    data = {
        "node": {"ae_title": "CXRNODE", "host": "127.0.0.1", "port": 0, "min_free_disk_mb": 16},
        "storage": {"data_dir": str(data_dir), "fsync": False},
        "study": {"quiet_seconds": 3600},
        "processing": {"processor": "passthrough", "poll_seconds": 0.2},
        "dashboard": {"enabled": True, "host": "127.0.0.1", "port": 0, "auth": auth},
        "logging": {"level": "DEBUG"},
    }
    data.update(extra)
    return config_from_dict(data, environ={})


@pytest.fixture()
def token_env(monkeypatch: pytest.MonkeyPatch) -> str:
    monkeypatch.setenv(TOKEN_ENV, TOKEN)
    return TOKEN


@pytest.fixture()
def token_node(tmp_path: Path, token_env: str) -> Iterator[Node]:
    config = dashboard_config(tmp_path / "node", {"type": "token", "token_env": TOKEN_ENV})
    with Node(config, role="all") as node:
        yield node


@pytest.fixture(scope="module")
def artefacts() -> Path:
    ARTEFACTS.mkdir(parents=True, exist_ok=True)
    return ARTEFACTS
