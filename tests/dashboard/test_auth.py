"""Who gets in, what a POST needs, what start-up refuses, what never reaches the log (no browser: real HTTP)."""
from __future__ import annotations

import base64
import logging
import os
import subprocess
import sys
from pathlib import Path

import pytest

from dicomnode.config import ConfigError, config_from_dict
from dicomnode.dashboard.auth import AuthSetupError
from dicomnode.node import Node

from .conftest import ROOT, SESSION_COOKIE_NAME, TOKEN, TOKEN_ENV, Client, csrf_of, dashboard_config

CXR_NODE = str(Path(sys.executable).with_name("cxr-node"))


def _client(node: Node) -> Client:
    return Client(node.dashboard.url.rstrip("/"))


def test_unauthenticated_requests_are_refused(token_node: Node) -> None:
    client = _client(token_node)
    for path in ("/", "/studies", "/failures", "/feedback", "/api/status", "/studies/1.2.3"):
        reply = client.get(path)
        assert reply.status == 401, (path, reply.status)
        assert "WWW-Authenticate".lower() in reply.headers
    page = client.get("/studies", headers={"Accept": "text/html"})  # a browser is sent to the login form
    assert page.status == 303 and page.headers["location"] == "/login?next=/studies"
    assert client.post("/jobs/1/retry", {"csrf_token": "x"}).status == 401
    assert client.get("/studies", headers={"Authorization": "Bearer wrong-token-0123456789"}).status == 401
    assert client.get("/studies", headers={"Authorization": f"Basic {base64.b64encode(b'a:b').decode()}"}).status == 401


def test_bearer_token_reads_every_page(token_node: Node) -> None:
    client = _client(token_node)
    bearer = {"Authorization": f"Bearer {TOKEN}"}
    for path in ("/", "/studies", "/failures", "/feedback"):
        reply = client.get(path, headers=bearer)
        assert reply.status == 200, path
        assert "signed in as token" in reply.body
    status = client.get("/api/status", headers=bearer)
    assert status.status == 200 and '"queue_depth"' in status.body
    assert not client.cookies  # a header-authenticated request gets no session


def test_login_form_then_session(token_node: Node) -> None:
    client = _client(token_node)
    wrong = client.login("not-the-token-at-all")
    assert wrong.status == 401 and "wrong credentials" in wrong.body
    assert SESSION_COOKIE_NAME not in client.cookies
    ok = client.login(TOKEN)
    assert ok.status == 303 and ok.headers["location"] == "/"
    (cookie,) = [c.lower() for c in ok.set_cookies if c.startswith(SESSION_COOKIE_NAME + "=")]
    assert "httponly" in cookie and "samesite=strict" in cookie
    page = client.get("/")
    assert page.status == 200 and "signed in as token" in page.body
    logout = client.post("/logout", {"csrf_token": csrf_of(page.body)})
    assert logout.status == 303
    assert client.get("/").status == 401


def test_login_needs_its_csrf_token(token_node: Node) -> None:
    client = _client(token_node)
    client.get("/login", headers={"Accept": "text/html"})
    reply = client.post("/login", {"secret": TOKEN, "next": "/"})
    assert reply.status == 403 and SESSION_COOKIE_NAME not in client.cookies
    forged = client.post("/login", {"secret": TOKEN, "csrf_token": "guessed", "next": "/"})
    assert forged.status == 403


def test_post_without_csrf_token_is_refused(token_node: Node) -> None:
    client = _client(token_node)
    assert client.login(TOKEN).status == 303
    page = client.get("/failures")
    token = csrf_of(page.body)
    assert client.post("/jobs/1/retry", {}).status == 403
    assert client.post("/jobs/1/retry", {"csrf_token": "0" * len(token)}).status == 403
    assert client.post("/studies/1.2.3/complete", {}).status == 403
    # with the token the action runs (job 1 does not exist: the answer says so, nothing breaks)
    done = client.post("/jobs/1/retry", {"csrf_token": token, "back": "/failures"})
    assert done.status == 303 and "does%20not%20exist" in done.headers["location"]
    # the right token from another site's page: refused by origin
    foreign = client.post("/jobs/1/retry", {"csrf_token": token}, headers={"Origin": "http://evil.example"})
    assert foreign.status == 403


def test_bearer_post_needs_no_token_but_the_same_origin(token_node: Node) -> None:
    client = _client(token_node)
    bearer = {"Authorization": f"Bearer {TOKEN}"}
    assert client.post("/jobs/1/retry", {}, headers=bearer).status == 303
    assert client.post("/jobs/1/retry", {}, headers={**bearer, "Origin": "http://evil.example"}).status == 403


def test_loopback_without_auth_hides_patient_data_and_still_checks_csrf(tmp_path: Path) -> None:
    with Node(dashboard_config(tmp_path / "node", None), role="dashboard") as node:
        client = _client(node)
        page = client.get("/studies")
        assert page.status == 200 and "anonymous" in page.body
        assert ">patient<" not in page.body
        assert client.post("/jobs/1/retry", {"csrf_token": "guess"}).status == 403
        assert client.post("/jobs/1/retry", {"csrf_token": csrf_of(page.body)}).status == 303
        assert client.get("/login").status == 303  # nothing to log in to


def test_start_up_refuses_open_dashboard_off_loopback(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as excinfo:
        config_from_dict({"processing": {"processor": "passthrough"},
                          "dashboard": {"enabled": True, "host": "0.0.0.0"}}, environ={})
    assert "dashboard: auth: required when host is 0.0.0.0" in str(excinfo.value)
    config = config_from_dict({"processing": {"processor": "passthrough"},
                               "dashboard": {"enabled": True, "host": "0.0.0.0",
                                             "auth": {"type": "token", "token_env": TOKEN_ENV}}}, environ={})
    assert config.dashboard.auth is not None


def test_start_up_refuses_a_missing_token(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(TOKEN_ENV, raising=False)
    config = dashboard_config(tmp_path / "node", {"type": "token", "token_env": TOKEN_ENV})
    with pytest.raises(AuthSetupError, match=f"{TOKEN_ENV} must hold the token"):
        Node(config, role="dashboard").start()
    yaml_path = tmp_path / "node.yaml"
    yaml_path.write_text(config.model_dump_json(by_alias=True))  # JSON is YAML
    serve = subprocess.run([CXR_NODE, "serve", "--config", str(yaml_path), "--role",
                            "dashboard"], capture_output=True, text=True, timeout=120,
                           env={"PATH": "/usr/bin:/bin", "PYTHONPATH": str(ROOT)})
    assert serve.returncode == 2 and f"{TOKEN_ENV} must hold the token" in serve.stderr


def test_users_file_with_basic_auth(tmp_path: Path) -> None:
    made = subprocess.run([CXR_NODE, "dashboard", "hash-password", "admin", "--stdin"],
                          input="correct horse battery\n", capture_output=True, text=True, timeout=60,
                          env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert made.returncode == 0, made.stderr
    assert "correct horse" not in made.stdout
    users = tmp_path / "users"
    users.write_text("# dashboard users\n" + made.stdout)
    config = dashboard_config(tmp_path / "node", {"type": "basic", "users_file": str(users)})
    with Node(config, role="dashboard") as node:
        client = _client(node)
        good = {"Authorization": "Basic " + base64.b64encode(b"admin:correct horse battery").decode()}
        bad = {"Authorization": "Basic " + base64.b64encode(b"admin:wrong").decode()}
        assert client.get("/studies", headers=good).status == 200
        assert client.get("/studies", headers=bad).status == 401
        assert client.login("wrong", user="admin").status == 401
        assert client.login("correct horse battery", user="admin").status == 303
        assert "signed in as admin" in client.get("/").body


def test_secrets_and_sessions_are_never_logged(tmp_path: Path, token_env: str,
                                               caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    config = dashboard_config(tmp_path / "node", {"type": "token", "token_env": TOKEN_ENV})
    with Node(config, role="all") as node:
        client = _client(node)
        client.login("wrong-guess-0123456789")
        client.login(TOKEN)
        page = client.get("/failures")
        client.post("/jobs/7/retry", {"csrf_token": csrf_of(page.body)})
        client.post("/jobs/7/retry", {"csrf_token": "nope"})
        client.get("/", headers={"Authorization": f"Bearer {TOKEN}"})
        session_id = client.cookies[SESSION_COOKIE_NAME]
        csrf = csrf_of(page.body)
    text = caplog.text + "".join(str(r.__dict__) for r in caplog.records)
    assert "logged in" in text  # the log does say what happened
    for secret in (TOKEN, session_id, csrf, "wrong-guess-0123456789"):
        assert secret not in text


def test_serve_role_dashboard(tmp_path: Path) -> None:
    """`cxr-node serve --role dashboard`: only the dashboard, from the node's database; stops on SIGTERM."""
    import signal
    import urllib.request

    from dicomnode.peers.ports import free_port, wait_for_port

    port = free_port()
    config = dashboard_config(tmp_path / "node", {"type": "token", "token_env": TOKEN_ENV})
    config.dashboard.port = port
    config.logging.json_ = False
    yaml_path = tmp_path / "node.yaml"
    yaml_path.write_text(config.model_dump_json(by_alias=True))
    log = tmp_path / "serve.log"
    with open(log, "w") as out:
        server = subprocess.Popen([CXR_NODE, "serve", "--config", str(yaml_path), "--role", "dashboard"],
                                  stdout=out, stderr=subprocess.STDOUT,
                                  env={**os.environ, "PYTHONPATH": str(ROOT), TOKEN_ENV: TOKEN})
    try:
        assert wait_for_port(port, timeout=60), log.read_text()
        request = urllib.request.Request(f"http://127.0.0.1:{port}/", headers={"Authorization": f"Bearer {TOKEN}"})
        with urllib.request.urlopen(request, timeout=30) as response:
            page = response.read().decode()
        assert "not in this process" in page  # no listener in this role
        assert "<td>dashboard</td>" in page  # the node processes, from the audit trail
    finally:
        server.send_signal(signal.SIGTERM)
        server.wait(timeout=60)
    assert server.returncode == 0, log.read_text()
    assert TOKEN not in log.read_text()
