"""The reasoning page: fonts, wrapping, pagination, boxes drawn; nothing cut off or overlapping."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageDraw, ImageFont
from pydicom.dataset import Dataset

from dicomnode.demo.records import make_record
from sr_writer.fonts import Face, FontMissing, fallback_path
from sr_writer.options import OutputOptions
from sr_writer.page import BOX_COLOURS, PageRenderer, render_pages, wrap


@pytest.fixture(scope="module")
def face() -> Face:
    return Face.make(24)


@pytest.mark.parametrize(
    "text",
    [
        "A short line.",
        "word " * 200,
        "x" * 500,  # one word longer than the line
        "除所列发现外，双肺清晰。心影大小正常。" * 20,
        "Οι πνεύμονες είναι καθαροί εκτός από τα ευρήματα. " * 10,
        "first paragraph\n\nsecond paragraph " * 5,
    ],
)
def test_wrap_keeps_every_character_within_width(face: Face, text: str) -> None:
    width = 700
    lines = wrap(text, face, width)
    assert all(face.width(line) <= width for line in lines)
    assert "".join("".join(lines).split()) == "".join(text.split())


@pytest.mark.parametrize("text", ["Q: Is there any evidence of pleural effusion?  A: no", "Lung 肺 clear, 心影 normal"])
def test_drawn_word_by_word_as_pillow_draws_the_line(face: Face, text: str) -> None:
    """Words are rasterised once and blitted; the line looks as Pillow draws it whole (glyphs may move by
    less than a pixel: sub-pixel starts are not kept)."""
    ours, pillows = (Image.new("L", (1100, 60), 255) for _ in range(2))
    end = face.draw(ImageDraw.Draw(ours), (10, 5), text, 0)  # type: ignore[arg-type]
    pillow_draw, x = ImageDraw.Draw(pillows), 10.0
    for path, run in face.runs(text):
        font = ImageFont.truetype(path, face.size)
        pillow_draw.text((x, 5 + round(face.size * 1.05)), run, font=font, fill=0, anchor="ls")
        x += font.getlength(run)
    a, b = (255 - np.asarray(image, dtype=np.int64) for image in (ours, pillows))
    assert abs(a.sum() - b.sum()) < 0.02 * b.sum()  # the same ink
    assert all(abs(p - q) <= 1 for p, q in zip(ours.point(lambda v: 255 - v).getbbox(),
                                                 pillows.point(lambda v: 255 - v).getbbox(), strict=False))
    assert abs(end - x) < 2 and abs(end - 10 - face.width(text)) < 2
    again = Image.new("L", (1100, 60), 255)
    face.draw(ImageDraw.Draw(again), (10, 5), text, 0)  # type: ignore[arg-type]
    assert again.tobytes() == ours.tobytes()  # from the word cache: the same pixels


def test_cjk_uses_a_fallback_font_with_real_glyphs(face: Face) -> None:
    assert fallback_path() is not None, "Debian fonts-droid-fallback is needed for CJK text"
    runs = list(face.runs("Lung 肺 clear"))
    assert [text for _, text in runs] == ["Lung ", "肺", " clear"]
    assert runs[0][0] == runs[2][0] != runs[1][0]  # the font of each run


def test_missing_font_fails_clearly(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("CXR_FONT_DIR", str(tmp_path))
    with pytest.raises(FontMissing, match="fonts-dejavu-core"):
        Face.make(24)


def _check_layout(renderer: PageRenderer) -> None:
    plan = renderer.layout()
    for page in plan.pages:
        previous_bottom = 0
        for y, line in page:
            assert y >= previous_bottom, "lines overlap"
            assert y + line.face.line_height <= plan.bottom, "line runs into the footer"
            assert line.indent + line.face.width(line.text) <= renderer.inner
            previous_bottom = y + line.face.line_height
    first = plan.pages[0]
    if first:
        assert first[0][0] >= plan.first_text_top  # text starts below the image panel and the findings table


def test_long_reasoning_continues_on_numbered_pages(study: list[Dataset]) -> None:
    short = make_record(study, positive=("pneumothorax",))
    long = make_record(study, positive=("pneumothorax",), long_text=150, language="zh")
    short_renderer = PageRenderer(short, study, (), OutputOptions())
    long_renderer = PageRenderer(long, study, (), OutputOptions())
    _check_layout(short_renderer)
    _check_layout(long_renderer)
    n_short, n_long = len(short_renderer.layout().pages), len(long_renderer.layout().pages)
    assert n_long > n_short >= 1
    # every reasoning line is placed exactly once
    placed = [line.text for page in long_renderer.layout().pages for _, line in page if "(continued)" not in line.text]
    assert placed == [line.text for line in long_renderer.reasoning_lines()]
    images, _ = long_renderer.render()
    assert len(images) == n_long
    assert {im.size for im in images} == {(1536, 2048)}


def test_boxes_are_drawn_on_the_frontal_image(study: list[Dataset]) -> None:
    record = make_record(study, positive=("pneumothorax", "pleural_effusion"), anatomy_boxes=False)
    empty = make_record(study, positive=(), anatomy_boxes=False)
    page = np.asarray(render_pages(record, study)[0]).astype(int)
    plain = np.asarray(render_pages(empty, study)[0]).astype(int)
    for colour in BOX_COLOURS[:2]:
        hits = np.all(np.abs(page - colour) <= 2, axis=-1).sum()
        base = np.all(np.abs(plain - colour) <= 2, axis=-1).sum()
        assert hits > base + 200, colour


def test_demo_banner_only_for_demo_models(study: list[Dataset]) -> None:
    red = (200, 30, 30)
    demo = np.asarray(render_pages(make_record(study, demo=True), study)[0]).astype(int)
    real = np.asarray(render_pages(make_record(study, demo=False), study)[0]).astype(int)
    count = lambda a: np.all(a == red, axis=-1).sum()  # noqa: E731
    assert count(demo) > 20000 and count(real) == 0


def test_no_finding_is_claimed_only_when_every_finding_is_absent(study: list[Dataset]) -> None:
    from sr_writer.text import findings_summary

    assert findings_summary(make_record(study)) == "No finding: yes (every checklist finding absent)"
    assert findings_summary(make_record(study, uncertain=("edema",))).startswith("No finding: not established")
    assert findings_summary(make_record(study, positive=("edema",), uncertain=("fracture",))) == (
        "Positive: 1 of 18, 1 uncertain")


def test_finding_labels_never_run_into_their_badges(study: list[Dataset]) -> None:
    """Every finding present with a box: the longest bold labels ("Other pleural abnormality  [box 11]") wrap before
    the presence badges, leaving the 12 px gap clear, instead of running under them (they were measured in the
    regular face and drawn in bold, so "[box" disappeared under the badge)."""
    from dicomnode.demo.records import FINDING_LABELS

    record = make_record(study, positive=tuple(FINDING_LABELS), anatomy_boxes=False)
    renderer = PageRenderer(record, study, (), OutputOptions())
    plan = renderer.layout()
    page = np.asarray(renderer.render(only={1})[0][0]).astype(int)
    status_x = renderer.width - renderer.margin - 190  # the badges' left edge
    gap_x = slice(status_x - 10, status_x)
    table_y = slice(plan.header_bottom + renderer.faces.heading.line_height + 6, plan.first_text_top - 24)
    ink = np.all(page[table_y, gap_x] < 70, axis=-1)  # label text is near-black
    assert not ink.any(), f"{int(ink.sum())} label pixels in the gap before the badges"


def test_the_model_and_the_page_see_the_same_window() -> None:
    """One display rule (inference.images.display_image): a 12-bit image with a 4096-wide window and values
    1000-2000 is grey 62-125 for the model and on the page alike (the page stretched it to 0-255 before)."""
    import copy

    from dicomnode.demo.synthetic import make_study
    from inference.images import prepare_images
    from sr_writer.page import panel_image
    from tests.sr.conftest import small_spec

    study = make_study(small_spec(views=("PA",)))
    source = copy.deepcopy(study[0])
    rows, columns = int(source.Rows), int(source.Columns)
    source.BitsStored, source.HighBit = 12, 11
    source.PixelData = np.tile(np.linspace(1000, 2000, columns).astype(np.uint16), (rows, 1)).tobytes()
    source.WindowCenter, source.WindowWidth, source.RescaleSlope, source.RescaleIntercept = 2048, 4096, 1, 0
    record = make_record([source])
    model = np.asarray(prepare_images([source])[0].image)
    panel = panel_image(record, [source], [], OutputOptions())
    assert panel is not None and panel.image.size == (columns, rows)  # small enough for the panel at 1:1
    page = np.asarray(panel.image)
    assert (model.min(), model.max()) == (62, 125)
    assert np.array_equal(model, page)
