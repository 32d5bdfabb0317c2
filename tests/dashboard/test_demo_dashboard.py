"""`cxr-node demo --keep-running` serves the dashboard too and prints its URL and login token."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

from .conftest import ROOT

pytestmark = pytest.mark.slow
CXR_NODE = str(Path(sys.executable).with_name("cxr-node"))


def _get(url: str, token: str) -> str:
    request = urllib.request.Request(url, headers={"Authorization": f"Bearer {token}"})
    with urllib.request.urlopen(request, timeout=60) as response:
        return response.read().decode()


def test_demo_prints_a_working_dashboard_url(tmp_path: Path) -> None:
    log_path = tmp_path / "demo.log"
    with open(log_path, "wb") as log:
        process = subprocess.Popen([CXR_NODE, "demo", "--keep-running", "--workdir", str(tmp_path / "demo"),
                                    "--timeout", "600"], stdout=log, stderr=subprocess.STDOUT, cwd=ROOT,
                                   env={**os.environ, "PYTHONPATH": str(ROOT)}, start_new_session=True)
    try:
        deadline = time.monotonic() + 900
        while "keep running" not in (text := log_path.read_text(errors="replace")):
            assert process.poll() is None, f"demo exited {process.returncode}:\n{text[-3000:]}"
            assert time.monotonic() < deadline, f"demo not up after 900 s:\n{text[-3000:]}"
            time.sleep(1)
        lines = text.splitlines()
        url = next(line.split("node dashboard:", 1)[1].strip() for line in lines if "node dashboard:" in line)
        token = next(line.split("demo token", 1)[1].split(";", 1)[0].strip() for line in lines if "demo token" in line)
        study_uid = next(Path(line.split("SR file:", 1)[1].strip()).parts[-3] for line in lines if "SR file:" in line)
        assert url.startswith("http://127.0.0.1:")
        with pytest.raises(urllib.error.HTTPError) as refused:
            _get(url + "studies", "wrong-token-0123456789")
        assert refused.value.code == 401
        studies = _get(url + "studies", token)
        assert f'data-uid="{study_uid}"' in studies and "DELIVERED" in studies
        assert "reasoning page 1" in _get(f"{url}studies/{study_uid}", token)
        assert token not in (tmp_path / "demo" / "node").joinpath("cxr-node.sqlite").read_bytes().decode("latin-1")
    finally:
        if process.poll() is None:
            os.kill(process.pid, signal.SIGINT)
            try:
                process.wait(60)
            except subprocess.TimeoutExpired:
                os.killpg(process.pid, signal.SIGKILL)
