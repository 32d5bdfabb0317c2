"""OHIF 3.13 (prebuilt, npm) in headless Debian Chromium opens our SR and SC pages from Orthanc over DICOMweb.

What a radiologist does: open the study, double-click the SR in the study browser (OHIF's SR viewport shows the
boxes on the referenced image), answer "Yes" to tracking (OHIF hydrates the SR into measurements, listed in the
Measurements panel by their coded Finding), then open the reasoning pages. The test checks what is drawn: box
outlines in the annotation colour where the record puts them and nowhere else, the findings' names in the panel,
the SC page's pixels in the viewport, and no page error in the console. Screenshots stay in ``out/viewer/``.

OHIF 3.13.2's SR viewport writes beside a TID 1410 box only its NUM measurements and its Finding Site (SCT
363698007), never its Finding: a box without anatomy shows an empty label there until tracking lists it by finding.
"""
from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from PIL import Image

from dicomnode.peers.ohif import OhifServer
from tests.viewer.browser import VIEWPORT, colour_mask, launch, open_page, rgb
from tests.viewer.conftest import ViewerStudy

pytestmark = pytest.mark.slow

EDGE_TOLERANCE_PX = 5  # how far a drawn edge may lie from where the record puts it (fit rounding, line width)


# -- page helpers ------------------------------------------------------------------------------------------
def _viewport_canvas(page: Any) -> Any:
    return page.locator('[data-cy="viewport-pane"] canvas').first


def _stable_screenshot(page: Any, path: Path, settle_ms: int = 600, timeout_s: float = 60.0) -> np.ndarray:
    """Screenshot of the viewport canvas area once two shots in a row are equal (rendering finished)."""
    deadline = time.monotonic() + timeout_s
    previous: bytes | None = None
    while True:
        box = _viewport_canvas(page).bounding_box()
        shot = page.screenshot(clip=box)
        if shot == previous or time.monotonic() > deadline:
            path.write_bytes(shot)
            print(f"screenshot: {path}")
            return rgb(shot)
        previous = shot
        page.wait_for_timeout(settle_ms)


def _image_rect(canvas_size: tuple[int, int], rows: int, columns: int) -> tuple[float, float, float]:
    """(left, top, scale) of an image shown whole and centred in a viewport (cornerstone's default fit)."""
    width, height = canvas_size
    scale = min(width / columns, height / rows)
    return (width - columns * scale) / 2, (height - rows * scale) / 2, scale


def _box_on_screen(normalized: tuple[float, float, float, float], rect: tuple[float, float, float],
                   rows: int, columns: int) -> tuple[int, int, int, int]:
    left, top, scale = rect
    x1, y1, x2, y2 = normalized
    return (round(left + x1 * columns * scale), round(top + y1 * rows * scale),
            round(left + x2 * columns * scale), round(top + y2 * rows * scale))


def _edge_coverage(mask: np.ndarray, box: tuple[int, int, int, int], tol: int = EDGE_TOLERANCE_PX,
                   along: int = 0) -> float:
    """Share of points along the box's four edges with an annotation-coloured pixel within ``tol`` px across
    (and ``along`` px along the edge: a dashed line has gaps)."""
    x1, y1, x2, y2 = box
    a = along
    hits = total = 0
    for t in np.linspace(0.05, 0.95, 60):
        x, y = round(x1 + t * (x2 - x1)), round(y1 + t * (y2 - y1))
        for window in (mask[y1 - tol:y1 + tol + 1, x - a:x + a + 1], mask[y2 - tol:y2 + tol + 1, x - a:x + a + 1],
                       mask[y - a:y + a + 1, x1 - tol:x1 + tol + 1], mask[y - a:y + a + 1, x2 - tol:x2 + tol + 1]):
            hits += bool(window.any())
            total += 1
    return hits / total


def _band(shape: tuple[int, ...], box: tuple[int, int, int, int], tol: int) -> np.ndarray:
    """Pixels within ``tol`` of the box outline."""
    x1, y1, x2, y2 = box
    yy, xx = np.mgrid[0:shape[0], 0:shape[1]]
    outer = (xx >= x1 - tol) & (xx <= x2 + tol) & (yy >= y1 - tol) & (yy <= y2 + tol)
    inner = (xx > x1 + tol) & (xx < x2 - tol) & (yy > y1 + tol) & (yy < y2 - tol)
    return outer & ~inner


_COUNT_ANNOTATIONS = """new Set([...document.querySelectorAll('[data-cy="viewport-pane"] svg [data-annotation-uid]')]
    .map(e => e.getAttribute('data-annotation-uid'))).size"""


def _wait_for_annotations(page: Any, count: int, what: str, timeout_ms: int = 60_000) -> None:
    """Until the viewport's SVG layer holds ``count`` annotations (drawing lags the prompt on a busy machine)."""
    from playwright.sync_api import TimeoutError as PlaywrightTimeout

    try:
        page.wait_for_function(f"n => ({_COUNT_ANNOTATIONS}) >= n", arg=count, timeout=timeout_ms)
    except PlaywrightTimeout as exc:
        drawn = page.evaluate(f"() => {_COUNT_ANNOTATIONS}")
        raise AssertionError(f"{what}: OHIF drew {drawn} of {count} annotations in {timeout_ms / 1000:.0f} s") from exc


def _pointer_to_image_foot(page: Any) -> None:
    """Move the mouse into the viewport, near its bottom edge (no box lies there), in a few steps."""
    box = _viewport_canvas(page).bounding_box()
    page.mouse.move(box["x"] + box["width"] * 0.5, box["y"] + box["height"] * 0.95, steps=5)
    page.mouse.move(box["x"] + box["width"] * 0.45, box["y"] + box["height"] * 0.96, steps=5)


def _svg_text(page: Any) -> list[dict[str, float | str]]:
    """Every SVG text the viewport's annotation layer draws, with its box relative to the canvas."""
    return page.evaluate("""() => {
        const pane = document.querySelector('[data-cy="viewport-pane"]');
        const canvas = pane.querySelector('canvas').getBoundingClientRect();
        return [...pane.querySelectorAll('svg text')].map(t => {
            const r = t.getBoundingClientRect();
            return {text: t.textContent, x: r.x - canvas.x, y: r.y - canvas.y, w: r.width, h: r.height};
        });
    }""")


def _text_mask(shape: tuple[int, ...], texts: list[dict[str, Any]], pad: int = 4) -> np.ndarray:
    mask = np.zeros(shape[:2], dtype=bool)
    for t in texts:
        x0, y0 = max(0, int(t["x"]) - pad), max(0, int(t["y"]) - pad)
        mask[y0:int(t["y"] + t["h"]) + pad, x0:int(t["x"] + t["w"]) + pad] = True
    return mask


def _assert_boxes_drawn(image: np.ndarray, colours: tuple[str, ...], study: ViewerStudy, texts: list[dict[str, Any]],
                        what: str, dash_gap: int = 0, min_coverage: float = 0.9) -> dict[str, float]:
    """Each record box is outlined in an annotation colour; that colour appears nowhere but on boxes and labels."""
    mask = np.zeros(image.shape[:2], dtype=bool)
    for colour in colours:
        mask |= colour_mask(image, colour)
    rows, columns = int(study.frontal.Rows), int(study.frontal.Columns)
    rect = _image_rect((image.shape[1], image.shape[0]), rows, columns)
    coverage: dict[str, float] = {}
    expected = np.zeros_like(mask)
    for label, normalized in study.boxes.items():
        box = _box_on_screen(normalized, rect, rows, columns)
        coverage[label] = _edge_coverage(mask, box, along=dash_gap)
        expected |= _band(mask.shape, box, EDGE_TOLERANCE_PX + 2)
        # the same box shifted by a tenth of the image is not there: the outline is where the record says
        shift = round(columns * rect[2] / 10)
        shifted = (box[0] + shift, box[1] + shift, box[2] + shift, box[3] + shift)
        assert _edge_coverage(mask, shifted, tol=1, along=dash_gap) < 0.35, \
            f"{what}: a box outline also lies at {shifted}"
    assert all(c >= min_coverage for c in coverage.values()), f"{what}: box edges covered {coverage}"
    stray = mask & ~expected & ~_text_mask(mask.shape, texts)
    print(f"{what}: {mask.sum()} annotation pixels, {stray.sum()} away from boxes and labels")
    # the dashed leader line from each box to its label is the only other drawing
    assert stray.sum() < 0.05 * mask.sum() + 50, f"{what}: {stray.sum()} annotation pixels away from boxes"
    return coverage


def _correlation(a: Image.Image, b: Image.Image, size: tuple[int, int] = (96, 128)) -> float:
    x = np.asarray(a.convert("L").resize(size), dtype=float).ravel()
    y = np.asarray(b.convert("L").resize(size), dtype=float).ravel()
    return float(np.corrcoef(x, y)[0, 1])


# -- the test ----------------------------------------------------------------------------------------------
def test_ohif_draws_sr_boxes_labelled_with_findings_and_shows_pages(
    ohif: OhifServer, viewer_study: ViewerStudy, artefacts: Path
) -> None:
    from playwright.sync_api import TimeoutError as PlaywrightTimeout
    from playwright.sync_api import sync_playwright

    timings: dict[str, float] = {}
    rerendered = False
    started = time.perf_counter()
    with sync_playwright() as playwright:
        browser = launch(playwright)
        try:
            page, log = open_page(browser)

            # 1. The study opens on the PA image, without annotations.
            page.goto(ohif.viewer_url(viewer_study.study_instance_uid))
            page.get_by_text("Skip all").click()  # OHIF's first-visit tour
            page.locator('[data-cy="viewport-overlay-top-left"]', has_text="CHEST PA").wait_for()
            # let the study finish loading (every thumbnail drawn, no request pending) before the reader acts
            page.wait_for_function(
                """n => [...document.querySelectorAll('[data-cy="study-browser-thumbnail"] img')]
                        .filter(img => img.complete && img.naturalWidth > 0).length >= n""", arg=3)
            page.wait_for_load_state("networkidle")
            plain = _stable_screenshot(page, artefacts / "1-study-pa.png")
            page.screenshot(path=artefacts / "1-study-page.png")
            timings["study open"] = time.perf_counter() - started
            assert plain.std() > 10, "the PA image is not drawn"
            assert not (colour_mask(plain, "yellow") | colour_mask(plain, "green")).any(), \
                "annotation colours on the image before the SR is opened"

            # 2. Double-click the SR: OHIF's SR viewport draws its boxes on the referenced PA image.
            t = time.perf_counter()
            sr_thumb = page.locator(
                f'[data-cy^="study-browser-thumbnail"][data-series="{viewer_study.sr_series_number}"]')
            sr_thumb.dblclick()
            prompt = page.get_by_text("Do you want to continue tracking measurements for this study?")
            try:
                prompt.wait_for(timeout=60_000)  # OHIF asks only when it read the SR as TID 1500 measurements
            except PlaywrightTimeout:
                page.screenshot(path=artefacts / "2-sr-not-measurements.png")
                pytest.fail("OHIF did not open the SR as measurements (no tracking prompt); see "
                            f"{artefacts / '2-sr-not-measurements.png'}; console: {log.problems}")
            # As a reader does, move the pointer onto the image (away from the boxes). On a slow machine the SR
            # viewport may add its annotations after its last render; cornerstone draws them on the next one.
            _pointer_to_image_foot(page)
            try:
                try:
                    _wait_for_annotations(page, len(viewer_study.boxes), "SR viewport", timeout_ms=15_000)
                except AssertionError as undrawn:
                    # Seen on the loaded 2-core machine, about one run in two: OHIF 3.13.2 adds the SR's annotations
                    # (console: "Measurement is preview, skipping...") after the viewport's last render and draws
                    # them at the next one. A window resize renders again, as any change of the reader's window does.
                    print(f"{undrawn}; re-rendering the viewport by resizing the window")
                    rerendered = True
                    page.set_viewport_size({"width": VIEWPORT["width"] - 40, "height": VIEWPORT["height"]})
                    page.wait_for_timeout(500)
                    page.set_viewport_size(VIEWPORT)
                    _wait_for_annotations(page, len(viewer_study.boxes), "SR viewport after a re-render")
            finally:
                sr_view = _stable_screenshot(page, artefacts / "2-sr-viewport.png")
            page.screenshot(path=artefacts / "2-sr-page.png")
            sr_texts = _svg_text(page)
            timings["SR viewport"] = time.perf_counter() - t
            print("SR viewport labels:", [x["text"] for x in sr_texts])
            coverage_sr = _assert_boxes_drawn(sr_view, ("yellow", "green"), viewer_study, sr_texts,
                                              "SR viewport (dashed outlines)", dash_gap=4)

            # 3. "Yes": OHIF hydrates the SR into tracked measurements, drawn solid, listed by finding.
            t = time.perf_counter()
            page.get_by_role("button", name="Yes").click()
            prompt.wait_for(state="hidden")
            _wait_for_annotations(page, len(viewer_study.boxes), "tracked measurements")
            tracked = _stable_screenshot(page, artefacts / "3-tracked.png")
            tracked_texts = _svg_text(page)
            coverage_tracked = _assert_boxes_drawn(tracked, ("yellow", "green"), viewer_study, tracked_texts,
                                                   "tracked measurements (solid outlines)")
            page.locator('[data-cy="side-panel-header-right"]').click()
            page.locator('[data-cy="trackedMeasurements-btn"]').click()
            panel = page.get_by_text(f"Measurements ({len(viewer_study.boxes)})")
            panel.wait_for()
            titles = [t.strip() for t in page.locator('[data-cy="data-row-title"]').all_inner_texts()]
            print("Measurements panel:", titles)
            assert sorted(titles) == sorted(viewer_study.boxes), f"measurements are not labelled by finding: {titles}"
            page.wait_for_timeout(500)
            page.screenshot(path=artefacts / "3-tracked-with-panel.png")
            print(f"screenshot: {artefacts / '3-tracked-with-panel.png'}")
            timings["hydrate + panel"] = time.perf_counter() - t

            # 4. The reasoning pages (Secondary Capture) display as rendered.
            t = time.perf_counter()
            page.locator(f'[data-cy="study-browser-thumbnail"][data-series="{viewer_study.sc_series_number}"]').dblclick()
            page.locator('[data-cy="viewport-overlay-bottom-right"]',
                         has_text=f"1/{len(viewer_study.page_images)}").wait_for()
            sc_view = _stable_screenshot(page, artefacts / "4-sc-page-1.png")
            timings["SC page"] = time.perf_counter() - t
            first = viewer_study.page_images[0]
            rect = _image_rect((sc_view.shape[1], sc_view.shape[0]), first.height, first.width)
            left, top, scale = rect
            shown = Image.fromarray(sc_view).crop((round(left), round(top), round(left + first.width * scale),
                                                   round(top + first.height * scale)))
            likeness = _correlation(shown, first)
            assert sc_view.std() > 20 and likeness > 0.8, f"SC page not shown as rendered (correlation {likeness:.2f})"
        finally:
            browser.close()
            (artefacts / "console.log").write_text("\n".join(log.lines + [f"pageerror: {e}" for e in log.page_errors]))
            print(f"console log: {artefacts / 'console.log'}")

    timings["total"] = time.perf_counter() - started
    print("coverage SR viewport:", coverage_sr, "tracked:", coverage_tracked, f"SC likeness {likeness:.3f}")
    print("SR boxes needed a re-render to appear:", rerendered)
    print("timings (s):", {k: round(v, 1) for k, v in timings.items()})
    print(f"console: {len(log.page_errors)} page errors, {len(log.console_errors)} console errors, "
          f"{len(log.warnings)} warnings")
    assert not log.problems, "errors in the browser console:\n" + "\n".join(log.problems)
