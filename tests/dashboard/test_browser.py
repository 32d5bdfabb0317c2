"""The dashboard in headless Debian Chromium (Playwright), against the real node: DCMTK storescu -> node (tiny NF4
demo model) -> SR + SC for a PACS (Orthanc) that is down at first, so the deliveries are dead-lettered; the admin
logs in, finds the study with its reasoning pages, starts nothing but the PACS, presses Retry and watches the
deliveries turn SENT and the study DELIVERED; then re-sends to the PACS. Screenshots stay in out/dashboard/."""
from __future__ import annotations

import io
import os
import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from ingest_support import wait_until
from PIL import Image

from dicomnode.config import NodeConfig, config_from_dict
from dicomnode.demo.run import results_of_study
from dicomnode.demo.synthetic import StudySpec, write_study
from dicomnode.node import Node
from dicomnode.peers.dcmtk import storescu
from dicomnode.peers.orthanc import OrthancServer
from tests.viewer.browser import ConsoleLog, launch

from .conftest import TOKEN, TOKEN_ENV

pytestmark = pytest.mark.slow


@dataclass
class DownSite:
    orthanc: OrthancServer  # constructed (ports chosen) but not started: the PACS is down
    node: Node
    config: NodeConfig
    spec: StudySpec


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory, qwen_demo_dir: Path) -> Iterator[DownSite]:
    workdir = tmp_path_factory.mktemp("dashboard-site")
    orthanc = OrthancServer(workdir / "orthanc", aet="ORTHANC", stable_age=1)
    config = config_from_dict({
        "node": {"ae_title": "CXRNODE", "host": "127.0.0.1", "port": 0, "min_free_disk_mb": 16},
        "storage": {"data_dir": str(workdir / "node")},
        "study": {"quiet_seconds": 1},
        "destinations": [{"name": "pacs", "ae_title": orthanc.aet, "host": "127.0.0.1", "port": orthanc.dicom_port,
                          "retry": {"max_attempts": 2, "initial_seconds": 0.2, "max_seconds": 0.5}}],
        "processing": {"processor": "reasoning", "poll_seconds": 0.2},
        "model": {"path": str(qwen_demo_dir), "quantization": "nf4", "device": "auto"},
        "reasoning": {"max_new_tokens": 8},
        "dashboard": {"enabled": True, "port": 0, "auth": {"type": "token", "token_env": TOKEN_ENV}},
    }, environ={})
    previous = os.environ.get(TOKEN_ENV)
    os.environ[TOKEN_ENV] = TOKEN
    spec = StudySpec(patient_name="Dashboard^Dora", patient_id="DASH0001", accession_number="DASH1",
                     rows=256, columns=208)
    try:
        with Node(config, role="all") as node:
            files = write_study(workdir / "study", spec)
            sent = storescu(files, "CXRNODE", "127.0.0.1", node.port, calling_aet="MODALITY")
            assert sent.returncode == 0, sent.stderr
            yield DownSite(orthanc, node, config, spec)
            orthanc.stop()
    finally:
        if previous is None:
            os.environ.pop(TOKEN_ENV, None)
        else:
            os.environ[TOKEN_ENV] = previous


def _reload_until(page: Any, check: Callable[[], Any], timeout: float, what: str) -> Any:
    def attempt() -> Any:
        page.reload()
        return check()
    return wait_until(attempt, timeout=timeout, interval=1.0, what=what)


def _drawn(png: bytes) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(png)).convert("L"), dtype=float)


def test_find_study_retry_dead_letters_and_resend(site: DownSite, artefacts: Path) -> None:
    from playwright.sync_api import sync_playwright

    uid = site.spec.study_instance_uid
    base = site.node.dashboard.url.rstrip("/")
    console = ConsoleLog()
    with sync_playwright() as playwright:
        browser = launch(playwright)
        try:
            page = browser.new_page(viewport={"width": 1280, "height": 900})
            console.attach(page)

            # not logged in: the browser is sent to the login form; a wrong token is refused there
            page.goto(f"{base}/studies")
            assert page.url.startswith(f"{base}/login")
            page.fill("input[name=secret]", "not-the-token-0123456789")
            page.click("#login")
            assert page.locator("#login-error").inner_text() == "wrong credentials"
            # the refused login is answered 401, which the browser reports; that one line is expected
            assert [e for e in console.console_errors if "401" not in e] == [] and not console.page_errors
            console.console_errors.clear()
            page.goto(f"{base}/studies")
            page.fill("input[name=secret]", TOKEN)
            page.click("#login")
            page.wait_for_url(f"{base}/studies")
            assert "signed in as token" in page.inner_text("header")

            # the study sent through the node is listed, with the patient name (an authenticated admin)
            row = f"#studies tr[data-uid='{uid}']"
            _reload_until(page, lambda: page.locator(row).count() == 1, 120, "the study in the list")
            assert "Dashboard^Dora" in page.locator(f"{row} td.patient").inner_text()
            page.fill("input[name=q]", site.spec.accession_number)
            page.click("#filters button")
            page.wait_for_url(re.compile(r".*[?&]q=DASH1"))
            assert page.locator("#studies tr[data-uid]").count() == 1

            # processed, the PACS down: its reasoning pages are there, every delivery dead-lettered
            page.click(f"{row} a")
            page.wait_for_url(f"{base}/studies/{uid}")
            _reload_until(page, lambda: page.inner_text("#study-state") == "FAILED", 600,
                          "the results dead-lettered (PACS down)")
            states = page.eval_on_selector_all("#deliveries tr[data-state]", "rows => rows.map(r => r.dataset.state)")
            assert states and set(states) == {"DEAD"}, states
            images = page.locator("#pages img.page")
            assert images.count() >= 1
            page.wait_for_function("() => [...document.querySelectorAll('#pages img.page')]"
                                   ".every(i => i.complete && i.naturalWidth > 300)")
            drawn = _drawn(images.first.screenshot())
            assert drawn.std() > 20, "the reasoning page is drawn blank"
            assert page.locator("#findings tr").count() >= 2  # header + the checklist's findings
            kinds = page.eval_on_selector_all("#timeline tr[data-kind]", "rows => rows.map(r => r.dataset.kind)")
            assert {"job.queued", "job.processing", "delivery.dead", "job.failed"} <= set(kinds), kinds
            page.screenshot(path=str(artefacts / "study-dead-lettered.png"), full_page=True)

            page.goto(f"{base}/failures")
            group = page.locator("details.dead summary").first.inner_text()
            assert "pacs:" in group
            page.screenshot(path=str(artefacts / "failures.png"), full_page=True)

            # the PACS comes back; Retry from the study page; the deliveries turn SENT, the study DELIVERED
            site.orthanc.start()
            page.goto(f"{base}/studies/{uid}")
            page.click("button.retry")
            page.wait_for_url(re.compile(r".*\?msg=.*"))
            assert "dead-lettered deliveries back to PENDING" in page.inner_text("#message")
            _reload_until(page, lambda: page.inner_text("#study-state") == "DELIVERED", 120,
                          "the retried deliveries to arrive")
            states = page.eval_on_selector_all("#deliveries tr[data-state]", "rows => rows.map(r => r.dataset.state)")
            assert set(states) == {"SENT"}, states
            srs, pages = results_of_study(site.orthanc, uid)
            assert len(srs) == 1 and len(pages) == images.count()
            page.screenshot(path=str(artefacts / "study-delivered.png"), full_page=True)

            # re-send to the PACS: rows go back to PENDING and are sent again
            job = page.locator("#jobs tr[data-job]").last.get_attribute("data-job")
            page.click(f"#resend-{job}")
            page.wait_for_url(re.compile(r".*\?msg=.*"))
            assert "queued for pacs" in page.inner_text("#message")
            _reload_until(page, lambda: page.inner_text("#study-state") == "DELIVERED" and set(
                page.eval_on_selector_all("#deliveries tr[data-state]", "rs => rs.map(r => r.dataset.state)"))
                == {"SENT"}, 120, "the re-sent objects to arrive")
            kinds = page.eval_on_selector_all("#timeline tr[data-kind]", "rows => rows.map(r => r.dataset.kind)")
            assert kinds.count("dashboard.retry") == 1 and kinds.count("dashboard.resend") == 1

            # the overview: the destination is up, the study counted as delivered, the plot drawn
            page.goto(f"{base}/")
            destination = page.locator("#destinations tr[data-destination='pacs']").inner_text()
            assert "up" in destination and "down" not in destination
            assert page.locator("svg.plot rect.bar-received").count() >= 1
            assert page.locator("#listener").inner_text().count("accepting on CXRNODE@127.0.0.1") == 1
            page.screenshot(path=str(artefacts / "overview.png"), full_page=True)
            page.goto(f"{base}/studies")
            page.screenshot(path=str(artefacts / "studies.png"), full_page=True)
        finally:
            (artefacts / "console.log").write_text("\n".join(console.lines))
            browser.close()
    assert console.problems == []
