"""`cxr-node demo --viewer`: the demo's own results, served by OHIF in front of the demo's Orthanc."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

from tests.viewer.browser import ConsoleLog, launch

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[2]
CXR_NODE = str(Path(sys.executable).with_name("cxr-node"))


def _get(url: str, accept: str = "*/*") -> bytes:
    with urllib.request.urlopen(urllib.request.Request(url, headers={"Accept": accept}), timeout=60) as response:
        return response.read()


def test_demo_viewer_prints_a_viewer_url_that_shows_the_results(tmp_path: Path) -> None:
    log_path = tmp_path / "demo.log"
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    with open(log_path, "wb") as log:
        process = subprocess.Popen([CXR_NODE, "demo", "--viewer", "--workdir", str(tmp_path / "demo"),
                                    "--timeout", "600"], stdout=log, stderr=subprocess.STDOUT, cwd=ROOT, env=env,
                                   start_new_session=True)
    try:
        deadline = time.monotonic() + 900
        url = ""
        while not url:
            text = log_path.read_text(errors="replace")
            url = next((line.split("OHIF viewer:", 1)[1].strip() for line in text.splitlines()
                        if "OHIF viewer:" in line), "")
            assert process.poll() is None or url, f"demo exited {process.returncode}:\n{text[-3000:]}"
            assert time.monotonic() < deadline, f"no viewer URL after 900 s:\n{text[-3000:]}"
            time.sleep(1)
        assert "keep running" in log_path.read_text()  # --viewer implies --keep-running
        origin, study_uid = url.split("/viewer?StudyInstanceUIDs=")[0], url.split("=", 1)[1]

        # The same origin serves OHIF and proxies Orthanc's DICOMweb: the study holds images, SR and SC pages.
        assert b"<html" in _get(url).lower()
        assert b"/dicom-web" in _get(origin + "/app-config.js")
        series = json.loads(_get(f"{origin}/dicom-web/studies/{study_uid}/series", "application/dicom+json"))
        modalities = sorted(s["00080060"]["Value"][0] for s in series)
        assert "SR" in modalities and "OT" in modalities and "DX" in modalities, modalities

        from playwright.sync_api import sync_playwright

        with sync_playwright() as playwright:
            browser = launch(playwright)
            try:
                page = browser.new_page(viewport={"width": 1600, "height": 1000})
                page.set_default_timeout(120_000)
                console = ConsoleLog().attach(page)
                page.goto(url)
                page.get_by_text("Skip all").click()
                page.locator('[data-cy="study-browser-thumbnail-no-image"]', has_text="SR").first.wait_for()
                page.locator('[data-cy="viewport-overlay-top-left"]', has_text="CHEST PA").wait_for()
                shot = ROOT / "out" / "viewer" / "demo-study.png"
                shot.parent.mkdir(parents=True, exist_ok=True)
                page.wait_for_timeout(1000)
                page.screenshot(path=shot)
                print(f"screenshot: {shot}")
            finally:
                browser.close()
        assert not console.problems, console.problems
    finally:
        if process.poll() is None:
            os.kill(process.pid, signal.SIGINT)  # the demo stops Orthanc, the node and OHIF on Ctrl-C
            try:
                process.wait(60)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait(30)
    assert process.returncode == 0, log_path.read_text()[-3000:]
