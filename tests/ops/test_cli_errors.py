"""Operations (issue 17): ``status``, ``serve`` and ``retry`` print one clear line, not a traceback, when the
database cannot be used; ``config check`` refuses a malformed database URL and a log file in a missing directory."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from dicomnode.peers.ports import free_port

CXR_NODE = str(Path(sys.executable).with_name("cxr-node"))


def _config(tmp_path: Path, **storage_or_logging: dict[str, object]) -> Path:
    data: dict[str, object] = {"node": {"host": "127.0.0.1", "port": free_port()},
                               "storage": {"data_dir": str(tmp_path / "var")},
                               "processing": {"processor": "passthrough"}}  # no model needed for these errors
    for section, values in storage_or_logging.items():
        data.setdefault(section, {}).update(values)  # type: ignore[union-attr]
    path = tmp_path / "node.yaml"
    path.write_text(yaml.safe_dump(data), encoding="utf-8")
    return path


def _run(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([CXR_NODE, *args], capture_output=True, text=True, timeout=120, check=False)


@pytest.mark.parametrize("command", [["status"], ["retry", "1"], ["serve", "--role", "listener"]])
def test_unreachable_database_is_one_line(tmp_path: Path, command: list[str]) -> None:
    url = f"postgresql+psycopg://cxr:s3cret@127.0.0.1:{free_port()}/cxr"  # nothing listens there
    config = _config(tmp_path, storage={"database_url": url})
    result = _run(*command, "--config", str(config))
    assert result.returncode == 1, result.stdout + result.stderr
    lines = [line for line in result.stderr.splitlines() if line.strip() and not line.startswith("{")]
    assert "Traceback" not in result.stderr
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith(f"{command[0]}: database error on postgresql+psycopg://cxr:***@127.0.0.1")
    assert "OperationalError" in lines[0] and "s3cret" not in result.stderr


@pytest.mark.parametrize("url, reason", [
    ("not a url", "not a database URL"),
    ("postgresql+nosuchdriver://u@127.0.0.1/db", "unknown database driver 'postgresql+nosuchdriver'"),
    ("mysql://u@127.0.0.1/db", "database 'mysql' is not supported"),
    ("postgresql+psycopg://u@127.0.0.1:5432", "PostgreSQL URL names no database"),
])
def test_config_check_refuses_bad_database_url(tmp_path: Path, url: str, reason: str) -> None:
    result = _run("config", "check", str(_config(tmp_path, storage={"database_url": url})))
    assert result.returncode == 1
    assert "storage.database_url" in result.stderr and reason in result.stderr, result.stderr


def test_config_check_refuses_log_file_in_missing_directory(tmp_path: Path) -> None:
    missing = tmp_path / "no" / "such" / "node.log"
    result = _run("config", "check", str(_config(tmp_path, logging={"file": str(missing)})))
    assert result.returncode == 1
    assert "logging.file" in result.stderr and f"directory {missing.parent} does not exist" in result.stderr
    ok = _run("config", "check", str(_config(tmp_path, logging={"file": str(tmp_path / "node.log")},
                                             storage={"database_url": "postgresql+psycopg://u@h/db"})))
    assert ok.returncode == 0, ok.stderr
