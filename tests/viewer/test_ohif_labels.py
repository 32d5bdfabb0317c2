"""What OHIF 3.13.2 writes beside each of our boxes and in its Measurements panel (DOM text, headless Chromium).

A study with finding boxes (one with a coded site) and anatomy boxes (heart, right and left lung), and a prior
that stage 5 cites in the SR's content tree. How OHIF 3.13.2 labels a TID 1410 group (read from its prebuilt
bundle, ``cornerstone-dicom-sr``'s ``_processTID1410Measurement`` and the adapters' ``getSetupMeasurementData``):

- the SR viewport (before tracking) writes one line per NUM measurement and one for the first Finding Site,
  ``363698007: <its code meaning>``; it never shows the Finding, a laterality modifier, a Comment or the tracking
  identifier. So the lungs are coded with their side (SCT 3341006 Right lung, 44029006 Left lung) and read
  ``363698007: Right lung``; a finding box shows its finding's coded site where the table has one
  (lung lesion: ``363698007: Lung``) and no line where it has none (pneumothorax);
- hydrated (after "Yes") a measurement is labelled with the group's Comment (DCM 121106): the Measurements panel
  lists every box by its finding or by its anatomy and side. (The tracked viewport's text box holds the tool's
  statistics only: OHIF's PlanarFreehandROI text lines carry no label.)
"""
from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from dicomnode.demo.records import make_record
from dicomnode.demo.synthetic import StudySpec, make_study, prior_spec
from dicomnode.peers.ohif import OhifServer
from dicomnode.peers.orthanc import OrthancServer
from sr_writer import build_result_objects
from sr_writer.codes import load_table
from sr_writer.validate import part10_bytes
from tests.viewer.browser import VIEWPORT, launch, open_page

pytestmark = pytest.mark.slow

POSITIVE = ("pneumothorax", "lung_lesion")
FINDING_SITE = "363698007"
_SVG_TEXTS = """() => [...document.querySelectorAll('[data-cy="viewport-pane"] svg text')]
    .map(t => t.textContent.trim()).filter(Boolean)"""
_ANNOTATIONS = """() => new Set([...document.querySelectorAll('[data-cy="viewport-pane"] svg [data-annotation-uid]')]
    .map(e => e.getAttribute('data-annotation-uid'))).size"""


@dataclass
class LabelStudy:
    study_instance_uid: str
    sr_series_number: int
    labels: list[str]  # every box's name: its finding, or its anatomy with side
    sr_viewport_lines: list[str]  # what OHIF's SR viewport must write (the boxes' first Finding Site)


@pytest.fixture(scope="module")
def label_study(orthanc: OrthancServer) -> LabelStudy:
    spec = StudySpec(seed=5, patient_name="Labels^Test", patient_id="LABEL001")
    current, prior = make_study(spec), make_study(prior_spec(spec))
    record = make_record(current, prior, positive=POSITIVE, anatomy_boxes=True)
    result = build_result_objects(record, current, prior)
    for ds in [*prior, *current]:
        orthanc.rest_post("/instances", part10_bytes(ds))
    for ds in result.datasets:
        orthanc.rest_post("/instances", result.encoded[str(ds.SOPInstanceUID)])
    table = load_table()
    labels = [f.label for f in record.findings if f.boxes] + [table.anatomy[k].label for k in table.anatomy]
    sites = [table.findings[k].site for k in POSITIVE if table.findings[k].site is not None]
    lines = [f"{FINDING_SITE}: {code.meaning}" for code in [*sites, *(a.code for a in table.anatomy.values())]]
    assert {"Right lung", "Left lung", "Heart", "Pneumothorax", "Lung lesion"} == set(labels)
    return LabelStudy(str(current[0].StudyInstanceUID), int(result.sr.SeriesNumber), labels, lines)


def _wait_for(page: Any, script: str, count: int, what: str, timeout_ms: int = 60_000) -> None:
    from playwright.sync_api import TimeoutError as PlaywrightTimeout

    try:
        page.wait_for_function(f"n => ({script})() >= n", arg=count, timeout=timeout_ms)
    except PlaywrightTimeout as exc:
        raise AssertionError(f"{what}: {page.evaluate(script)} of {count} after {timeout_ms / 1000:.0f} s") from exc


def test_each_box_is_labelled_by_finding_or_anatomy_and_side(ohif: OhifServer, label_study: LabelStudy,
                                                             artefacts: Path) -> None:
    from playwright.sync_api import sync_playwright

    boxes = len(label_study.labels)
    with sync_playwright() as playwright:
        browser = launch(playwright)
        try:
            page, log = open_page(browser)
            page.goto(ohif.viewer_url(label_study.study_instance_uid))
            page.get_by_text("Skip all").click()
            page.locator('[data-cy="viewport-overlay-top-left"]', has_text="CHEST PA").wait_for()
            page.wait_for_load_state("networkidle")

            # the SR viewport: a line per box where OHIF has something to write
            page.locator(f'[data-cy^="study-browser-thumbnail"][data-series="{label_study.sr_series_number}"]').dblclick()
            prompt = page.get_by_text("Do you want to continue tracking measurements for this study?")
            prompt.wait_for(timeout=60_000)
            box = page.locator('[data-cy="viewport-pane"] canvas').first.bounding_box()
            page.mouse.move(box["x"] + box["width"] * 0.5, box["y"] + box["height"] * 0.95, steps=5)
            try:
                _wait_for(page, _ANNOTATIONS, boxes, "SR viewport annotations", timeout_ms=15_000)
            except AssertionError:  # drawn at the next render on a loaded machine (see test_ohif.py)
                page.set_viewport_size({"width": VIEWPORT["width"] - 40, "height": VIEWPORT["height"]})
                page.wait_for_timeout(500)
                page.set_viewport_size(VIEWPORT)
                _wait_for(page, _ANNOTATIONS, boxes, "SR viewport annotations after a re-render")
            deadline = time.monotonic() + 30
            while sorted(page.evaluate(_SVG_TEXTS)) != sorted(label_study.sr_viewport_lines) and \
                    time.monotonic() < deadline:
                page.wait_for_timeout(500)
            sr_lines = page.evaluate(_SVG_TEXTS)
            page.screenshot(path=artefacts / "labels-sr-viewport.png")
            print("SR viewport lines:", sr_lines)
            assert sorted(sr_lines) == sorted(label_study.sr_viewport_lines), sr_lines
            for side in ("Right lung", "Left lung"):
                assert f"{FINDING_SITE}: {side}" in sr_lines  # anatomy with its side, not "363698007: Lung"

            # tracked: the Measurements panel lists every box by its finding, or its anatomy and side
            page.get_by_role("button", name="Yes").click()
            prompt.wait_for(state="hidden")
            _wait_for(page, _ANNOTATIONS, boxes, "tracked measurements")
            page.locator('[data-cy="side-panel-header-right"]').click()
            page.locator('[data-cy="trackedMeasurements-btn"]').click()
            page.get_by_text(f"Measurements ({boxes})").wait_for()
            titles = [t.strip() for t in page.locator('[data-cy="data-row-title"]').all_inner_texts()]
            page.screenshot(path=artefacts / "labels-panel.png")
            print("Measurements panel:", titles)
            assert sorted(titles) == sorted(label_study.labels), titles
        finally:
            browser.close()
    assert not log.problems, "errors in the browser console:\n" + "\n".join(log.problems)
