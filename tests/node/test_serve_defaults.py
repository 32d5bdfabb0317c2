"""`serve` with the defaults: reasoning needs a model (refused naming the key); passthrough only when asked, and
then a WARNING at start-up."""
from __future__ import annotations

import json
import signal
import subprocess
import time
from pathlib import Path

import yaml
from ingest_support import CXR_NODE

from dicomnode.peers.ports import free_port, wait_for_port


def _write(path: Path, data: dict) -> Path:
    path.write_text(yaml.safe_dump(data), encoding="utf-8")
    return path


def test_serve_refuses_reasoning_without_a_model(tmp_path: Path) -> None:
    config = _write(tmp_path / "node.yaml", {"node": {"host": "127.0.0.1", "port": free_port()},
                                             "storage": {"data_dir": str(tmp_path / "var")}})
    result = subprocess.run([CXR_NODE, "serve", "--config", str(config)], capture_output=True, text=True,
                            timeout=120)
    assert result.returncode == 2
    assert "model.path: required when processing.processor is reasoning" in result.stderr
    assert not (tmp_path / "var").exists()  # refused before anything started


def test_passthrough_says_so_at_start_up(tmp_path: Path) -> None:
    port = free_port()
    config = _write(tmp_path / "node.yaml", {"node": {"host": "127.0.0.1", "port": port},
                                             "storage": {"data_dir": str(tmp_path / "var")},
                                             "processing": {"processor": "passthrough"}})
    log = tmp_path / "serve.log"
    with open(log, "w") as out:
        server = subprocess.Popen([CXR_NODE, "serve", "--config", str(config)], stdout=out, stderr=subprocess.STDOUT)
        try:
            assert wait_for_port(port, timeout=120), log.read_text()
            deadline = time.monotonic() + 30
            while "passthrough" not in log.read_text() and time.monotonic() < deadline:
                time.sleep(0.2)
        finally:
            server.send_signal(signal.SIGTERM)
            server.wait(timeout=60)
    lines = [json.loads(line) for line in log.read_text().splitlines() if line.startswith("{")]
    warnings = [entry for entry in lines if entry.get("level") == "WARNING" and "passthrough" in entry.get("msg", "")]
    assert warnings, log.read_text()
    assert "NOT processed" in warnings[0]["msg"]
