"""The reasoning page: header, frontal image with labelled boxes, findings table, stage-by-stage reasoning.

Pages are portrait RGB images (default 1536 x 2048, 24 px body text) meant to be read 1:1 on a diagnostic
monitor. Reasoning that does not fit continues on further pages; every page repeats the header (with
"page N of M"), the unverified statement and, for demo models, the DEMO banner. Layout is computed first
(lines of wrapped text with heights), then drawn, so nothing is cut off or overlaps.
"""
from __future__ import annotations

import copy
import re
from collections.abc import Collection, Sequence
from dataclasses import dataclass

from PIL import Image, ImageDraw
from pydicom.dataset import Dataset
from pydicom.tag import Tag

from inference.images import display_image
from inference.record import (
    DEMO_STATEMENT,
    UNVERIFIED_STATEMENT,
    Box,
    Finding,
    Presence,
    ReasoningRecord,
    StageStatus,
)
from inference.triage import assess_record
from sr_writer import provenance as prov
from sr_writer import triage as triage_marks
from sr_writer.fonts import Face
from sr_writer.options import OutputOptions
from sr_writer.sr import collect_boxes
from sr_writer.text import (
    dicom_text,
    findings_summary,
    operating_points_text,
    parsed_text,
    score_text,
    stage_status_text,
)

WHITE = (255, 255, 255)
INK = (20, 20, 20)
MUTED = (90, 90, 90)
RULE = (170, 170, 170)
RED = (190, 20, 20)
DEMO_BG = (200, 30, 30)
TRIAGE_BG = (150, 0, 90)  # the AI-triage banner: not the DEMO red
PRESENCE_COLOUR = {Presence.PRESENT: (200, 40, 20), Presence.UNCERTAIN: (190, 130, 0), Presence.ABSENT: (60, 110, 60)}
BOX_COLOURS = ((255, 80, 40), (40, 200, 255), (255, 220, 0), (120, 255, 80), (255, 90, 220), (255, 160, 40))
FRONTAL_VIEWS = ("PA", "AP")

_TOKEN = re.compile(
    r"[\u2e80-\u9fff\uac00-\ud7af\uf900-\ufaff\uff00-\uffef\u3000-\u303f]"  # CJK: break anywhere
    r"|[^\s\u2e80-\u9fff\uac00-\ud7af\uf900-\ufaff\uff00-\uffef\u3000-\u303f]+\s*"
    r"|\s+"
)


@dataclass(frozen=True)
class Line:
    text: str
    face: Face
    colour: tuple[int, int, int] = INK
    indent: int = 0
    space_before: int = 0
    continued: str | None = None  # heading to repeat when a page starts with this line ("Stage 2: ... (continued)")
    group: int = 0  # lines of one group (a question with its answer; a heading with the first question) stay together

    @property
    def height(self) -> int:
        return self.space_before + self.face.line_height


def wrap(text: str, face: Face, width: float) -> list[str]:
    """Wrap ``text`` to ``width`` pixels: at spaces, between CJK characters, inside over-long words.

    Token widths are summed (one measurement per token); each line made that way is measured once as a whole, and a
    paragraph whose line would still be too wide (kerning across tokens) is wrapped again measuring every candidate.
    """
    lines: list[str] = []
    for paragraph in text.splitlines() or [""]:
        fast = _wrap_paragraph(paragraph, face, width, summed=True)
        if all(face.width(line) <= width for line in fast):
            lines += fast
        else:
            lines += _wrap_paragraph(paragraph, face, width, summed=False)
    return lines


def _wrap_paragraph(paragraph: str, face: Face, width: float, summed: bool) -> list[str]:
    """Greedy wrapping; a token fits when the line's width stays within ``width``, taken as the sum of the token
    widths (``summed``) or measured on the whole candidate line."""
    lines: list[str] = []
    current, current_width = "", 0.0
    for token in _TOKEN.findall(paragraph):
        if summed:
            fits = current_width + face.width(token.rstrip()) <= width
        else:
            fits = face.width((current + token).rstrip()) <= width
        if fits:
            current += token
            current_width += face.width(token) if summed else 0.0
            continue
        if current.strip():
            lines.append(current.rstrip())
        current = token.lstrip() if token.isspace() else token
        while face.width(current.rstrip()) > width:  # a word longer than the line: split it
            cut = _fit(current, face, width)
            lines.append(current[:cut])
            current = current[cut:]
        current_width = face.width(current) if summed else 0.0
    lines.append(current.rstrip())
    return lines


def _fit(text: str, face: Face, width: float) -> int:
    """The longest prefix length (at least 1) of ``text`` that fits in ``width``."""
    low, high = 1, len(text)
    while low < high:
        middle = (low + high + 1) // 2
        if face.width(text[:middle]) <= width:
            low = middle
        else:
            high = middle - 1
    return low


class Faces:
    def __init__(self, body: int) -> None:
        self.body = Face.make(body)
        self.bold = Face.make(body, bold=True)
        self.small = Face.make(max(18, body - 4))
        self.heading = Face.make(body + 6, bold=True)
        self.title = Face.make(body + 12, bold=True)


@dataclass(frozen=True)
class Panel:
    """The first page's image, decoded once: the frontal source as ``inference.images.display_image`` shows it (the
    window the model sees too), no larger than a panel can be.

    Pages are drawn from this, not from the source's pixels, so page processes get headers only (a 200 MB source is
    decoded once, in the caller, instead of once per page process)."""

    sop_instance_uid: str
    image: Image.Image


def panel_image(record: ReasoningRecord, current: Sequence[Dataset], prior: Sequence[Dataset],
                options: OutputOptions) -> Panel | None:
    """The first page's panel (see ``Panel``); None when the record has no current image among the sources."""
    sources = {str(ds.SOPInstanceUID): ds for ds in [*current, *prior]}
    index = _frontal_index(record, sources)
    if index is None:
        return None
    ref = record.images[index]
    source = sources[ref.sop_instance_uid]
    rows, cols = int(source.Rows), int(source.Columns)
    scale = min(1.0, options.page_width * PANEL_WIDTH_SHARE / cols, options.page_height / rows)
    size = (max(1, round(cols * scale)), max(1, round(rows * scale)))
    return Panel(ref.sop_instance_uid, display_image(source, ref.frame, size))  # the model's rule (inference.images)


PANEL_WIDTH_SHARE = 0.55  # of the page's inner width: the image panel's; the findings table has the rest


def without_pixels(ds: Dataset) -> Dataset:
    """A copy of ``ds`` sharing its header elements but with no pixel data (nor a cached decoded array)."""
    copy_ = copy.copy(ds)  # keeps how the header was read (raw elements convert on access)
    copy_._dict = {tag: element for tag, element in ds._dict.items() if tag not in PIXEL_TAGS}
    copy_._pixel_array, copy_._pixel_id = None, {}
    return copy_


PIXEL_TAGS = frozenset({Tag(0x7FE0, 0x0008), Tag(0x7FE0, 0x0009), Tag(0x7FE0, 0x0010)})  # float, double, pixel data


def _frontal_index(record: ReasoningRecord, sources: dict[str, Dataset]) -> int | None:
    current = [r for r in record.images if r.role == "current" and r.sop_instance_uid in sources]
    for ref in current:
        if ref.view.upper() in FRONTAL_VIEWS:
            return ref.index
    return current[0].index if current else None


def _person_name(ds: Dataset) -> str:
    name = str(ds.get("PatientName", "") or "")
    return " ".join(part for part in name.replace("^", " ").split()) or "(no name)"


def _date(value: str) -> str:
    return f"{value[:4]}-{value[4:6]}-{value[6:8]}" if len(value) == 8 and value.isdigit() else value or "-"


class PageRenderer:
    """Lays out and draws all pages of one record."""

    def __init__(self, record: ReasoningRecord, current: Sequence[Dataset], prior: Sequence[Dataset],
                 options: OutputOptions, panel: Panel | None = None) -> None:
        self.record = record
        self.panel = panel  # None: made from the sources when the first page is drawn
        self.options = options
        self.sources = {str(ds.SOPInstanceUID): ds for ds in [*current, *prior]}
        self.first = current[0]
        self.faces = Faces(options.body_font_px)
        self.width, self.height = options.page_width, options.page_height
        self.margin = max(32, self.width // 32)
        self.inner = self.width - 2 * self.margin
        self.boxes = [(b, f) for b, f in collect_boxes(record)]
        self._layout: Layout | None = None

    # -- header and footer -------------------------------------------------------------------------------
    def _header_lines(self) -> list[Line]:
        p, ds, f = self.record.provenance, self.first, self.faces
        lines = [
            Line(f"Patient: {_person_name(ds)}   ID: {ds.get('PatientID', '') or '-'}", f.bold),
            Line(f"Study date: {_date(str(ds.get('StudyDate', '')))}   "
                 f"Accession: {ds.get('AccessionNumber', '') or '-'}   "
                 f"Study: {ds.get('StudyDescription', '') or '-'}", f.body),
            Line(f"Model: {prov.model_title(p)}   quantization {p.quantization}   "
                 f"{prov.served_by(p) or f'weights {p.weights_sha256[:16]}'}   cxr-node {p.software_version}",
                 f.body, MUTED),
        ]
        wrapped: list[Line] = []
        for line in lines:
            wrapped += [Line(t, line.face, line.colour) for t in wrap(line.text, line.face, self.inner)]
        wrapped += [Line(t, f.bold, RED) for t in wrap(UNVERIFIED_STATEMENT, f.bold, self.inner)]
        failed = [s.number for s in self.record.stages if s.status is StageStatus.FAILED]
        unparsed = len(self.record.unparsed_questions)
        if failed or unparsed:
            parts = ([f"stage {', '.join(map(str, failed))} failed"] if failed else []) + (
                [f"{unparsed} answer(s) not parsed"] if unparsed else [])
            text = "Incomplete: " + ", ".join(parts) + " (marked in red below)"
            wrapped += [Line(t, f.small, RED) for t in wrap(text, f.small, self.inner)]
        return wrapped

    def _demo_lines(self) -> list[Line]:
        if not self.record.provenance.demo_model:
            return []
        return [Line(t, self.faces.bold, WHITE) for t in wrap(DEMO_STATEMENT, self.faces.bold, self.inner - 32)]

    def _triage_lines(self) -> list[Line]:
        """The AI-triage banner (sr_writer/triage.py), when a triage rule raised the priority."""
        text = triage_marks.statement(assess_record(self.record, self.options.triage_rules))
        return [Line(t, self.faces.bold, WHITE) for t in wrap(text, self.faces.bold, self.inner - 32)] if text else []

    def _draw_header(self, draw: ImageDraw.ImageDraw, page: int, pages: int) -> int:
        f, y = self.faces, self.margin
        title = ("DEMO - " if self.record.provenance.demo_model else "") + "AI chest X-ray reasoning"
        f.title.draw(draw, (self.margin, y), title, INK)
        numbering = f"page {page} of {pages}"
        f.heading.draw(draw, (self.width - self.margin - f.heading.width(numbering), y + 6), numbering, INK)
        y += f.title.line_height + 8
        for banner, colour in ((self._demo_lines(), DEMO_BG), (self._triage_lines(), TRIAGE_BG)):
            if not banner:
                continue
            band = sum(line.height for line in banner) + 24
            draw.rectangle([self.margin, y, self.width - self.margin, y + band], fill=colour)
            yy = y + 12
            for line in banner:
                line.face.draw(draw, (self.margin + 16, yy), line.text, line.colour)
                yy += line.height
            y += band + 12
        for line in self._header_lines():
            line.face.draw(draw, (self.margin, y), line.text, line.colour)
            y += line.height
        y += 8
        draw.line([self.margin, y, self.width - self.margin, y], fill=RULE, width=2)
        return y + 16

    def _footer_height(self) -> int:
        return self.faces.small.line_height + 24

    def _draw_footer(self, draw: ImageDraw.ImageDraw, page: int, pages: int) -> None:
        f = self.faces.small
        y = self.height - self.margin - f.line_height
        draw.line([self.margin, y - 10, self.width - self.margin, y - 10], fill=RULE, width=1)
        ds = self.first
        text = f"{UNVERIFIED_STATEMENT}   {ds.get('PatientID', '') or ''}   {_date(str(ds.get('StudyDate', '')))}"
        f.draw(draw, (self.margin, y), wrap(text, f, self.inner - 200)[0], MUTED)
        numbering = f"page {page} of {pages}"
        f.draw(draw, (self.width - self.margin - f.width(numbering), y), numbering, MUTED)

    # -- first-page panels --------------------------------------------------------------------------------
    def _draw_image_panel(self, canvas: Image.Image, draw: ImageDraw.ImageDraw, top: int, width: int,
                          max_height: int) -> int:
        f = self.faces
        index = _frontal_index(self.record, self.sources)
        if index is None:
            f.body.draw(draw, (self.margin, top), "(no current image available)", MUTED)
            return top + f.body.line_height
        caption_lines, scale, size = self._panel_geometry(index, width, max_height)
        panel = self.panel or panel_image(self.record, list(self.sources.values()), (), self.options)
        assert panel is not None and panel.sop_instance_uid == self.record.images[index].sop_instance_uid
        image = panel.image.resize(size, Image.Resampling.LANCZOS)
        for text in caption_lines:
            f.small.draw(draw, (self.margin, top), text, MUTED)
            top += f.small.line_height
        top += 4
        canvas.paste(image, (self.margin, top))
        overlay = ImageDraw.Draw(canvas)
        label_face = f.small
        placed: list[tuple[float, float, float, float]] = []
        for number, (box, finding) in enumerate(self._boxes_on(index), start=1):
            colour = BOX_COLOURS[(number - 1) % len(BOX_COLOURS)]
            x1, y1, x2, y2 = (v * scale for v in box.pixels)
            x1, x2 = sorted((min(max(x1, 0), size[0] - 1), min(max(x2, 0), size[0] - 1)))
            y1, y2 = sorted((min(max(y1, 0), size[1] - 1), min(max(y2, 0), size[1] - 1)))
            left, upper = self.margin + x1, top + y1
            overlay.rectangle([left, upper, self.margin + x2, top + y2], outline=colour, width=4)
            label = f"{number} {self._box_label(box, finding)}"
            lw, lh = label_face.width(label) + 12, label_face.line_height
            lx = min(left, self.margin + size[0] - lw)
            ly = upper - lh if upper - lh >= top else upper + 4
            while any(lx < r[2] and r[0] < lx + lw and ly < r[3] and r[1] < ly + lh for r in placed):
                ly += lh + 2  # stack labels of coinciding boxes instead of hiding one under another
            placed.append((lx, ly, lx + lw, ly + lh))
            overlay.rectangle([lx, ly, lx + lw, ly + lh], fill=(0, 0, 0))
            label_face.draw(overlay, (lx + 6, ly - 2), label, colour)
        return top + size[1]

    def _panel_geometry(self, index: int, width: int, max_height: int) -> tuple[list[str], float, tuple[int, int]]:
        """Caption lines, scale and displayed size of image ``index`` in a ``width`` x ``max_height`` panel."""
        ref = self.record.images[index]
        source = self.sources[ref.sop_instance_uid]
        caption = f"Image {index + 1}: {ref.view} (current)   boxes: model output, unverified"
        elsewhere = len(self.boxes) - len(self._boxes_on(index))
        if elsewhere:
            caption += f"   (+{elsewhere} on other images: see stage 3)"
        lines = wrap(caption, self.faces.small, width)
        rows, cols = int(source.Rows), int(source.Columns)
        scale = min(width / cols, (max_height - 4 - self.faces.small.line_height * len(lines)) / rows)
        return lines, scale, (max(1, int(cols * scale)), max(1, int(rows * scale)))

    def _panel_height(self, width: int, max_height: int) -> int:
        index = _frontal_index(self.record, self.sources)
        if index is None:
            return self.faces.body.line_height
        lines, _, size = self._panel_geometry(index, width, max_height)
        return len(lines) * self.faces.small.line_height + 4 + size[1]

    def _boxes_on(self, index: int) -> list[tuple[Box, Finding | None]]:
        return [(b, f) for b, f in self.boxes if b.image_index == index]

    def _box_label(self, box: Box, finding: Finding | None) -> str:
        return finding.label if finding is not None else box.target.replace("_", " ")

    def _draw_findings_table(self, draw: ImageDraw.ImageDraw, left: int, top: int, width: int) -> int:
        f = self.faces
        f.heading.draw(draw, (left, top), "Findings (stage 2 checklist)", INK)
        y = top + f.heading.line_height + 6
        status_x = left + width - 190
        scores = [score_text(finding) for finding in self.record.findings]
        score_width = max((f.small.width(text) for text in scores), default=0.0)
        label_right = status_x - (score_width + 24 if score_width else 12)
        frontal = _frontal_index(self.record, self.sources)
        numbers = {id(b): n for n, (b, _) in enumerate(self._boxes_on(frontal), start=1)} if frontal is not None else {}
        for finding, score in zip(self.record.findings, scores, strict=True):
            colour = PRESENCE_COLOUR[finding.presence]
            box_numbers = [str(numbers[id(b)]) for b in finding.boxes if id(b) in numbers]
            label = finding.label + (f"  [box {', '.join(box_numbers)}]" if box_numbers else "")
            face = f.bold if finding.presence is not Presence.ABSENT else f.body
            label_lines = wrap(label, face, label_right - left)  # measured in the face it is drawn in
            for i, text in enumerate(label_lines):
                face.draw(draw, (left, y + i * f.body.line_height), text, INK)
            if score:  # the probability of presence (and the threshold that decided), beside the badge
                f.small.draw(draw, (status_x - 12 - f.small.width(score), y + 3), score, MUTED)
            draw.rounded_rectangle([status_x, y + 3, status_x + 180, y + f.body.line_height - 3], radius=8, fill=colour)
            status = finding.presence.value.upper()
            f.bold.draw(draw, (status_x + (180 - f.bold.width(status)) / 2, y + 1), status, WHITE)
            y += f.body.line_height * len(label_lines) + 4
        y += 6
        summary = findings_summary(self.record)
        for text in wrap(summary, f.bold, width):
            f.bold.draw(draw, (left, y), text, INK)
            y += f.bold.line_height
        if self.record.findings:  # what the percentages are and what decided presence
            for text in wrap(operating_points_text(self.record), f.small, width):
                f.small.draw(draw, (left, y), text, MUTED)
                y += f.small.line_height
        return y

    # -- reasoning text -----------------------------------------------------------------------------------
    def reasoning_lines(self) -> list[Line]:
        f, width = self.faces, self.inner
        out: list[Line] = []

        heading: str | None = None
        group = 0
        keep_with_next = False

        def add(text: str, face: Face, colour: tuple[int, int, int] = INK, indent: int = 0, space: int = 0) -> None:
            for i, t in enumerate(wrap(dicom_text(text), face, width - indent)):
                out.append(Line(t, face, colour, indent, space if i == 0 else 0, heading, group))

        def new_group(keep: bool = False) -> None:
            nonlocal group, keep_with_next
            if not keep_with_next:
                group += 1
            keep_with_next = keep

        new_group(keep=True)
        add("Stage-by-stage reasoning", f.title, INK, 0, 4)
        for stage in sorted(self.record.stages, key=lambda s: s.number):
            colour = RED if stage.status is StageStatus.FAILED else INK
            heading = None
            new_group(keep=True)
            add(f"Stage {stage.number}: {stage.title}", f.heading, colour, 0, 18)
            heading = f"Stage {stage.number}: {stage.title} (continued)"
            if stage.status is not StageStatus.COMPLETED or stage.reason:
                add(f"Status: {stage_status_text(stage)}", f.body, MUTED if stage.status is StageStatus.NOT_APPLICABLE
                    else RED, 24)
            if stage.status is not StageStatus.COMPLETED and not stage.questions:
                keep_with_next = False
            for question in stage.questions:
                new_group()
                add(f"Q: {question.question}", f.bold, INK, 24, 8)
                if question.options and not all(o in question.question for o in question.options):
                    add("Options: " + " | ".join(question.options), f.body, MUTED, 56)
                if question.parsed.think:
                    add(f"Reasoning: {question.parsed.think}", f.body, MUTED, 56)
                add(f"A: {question.raw_answer}", f.body, INK, 56)
                value = parsed_text(question)
                if value:
                    add(f"Parsed: {value}", f.small, MUTED, 56)
                if not question.parsed.ok:
                    add(f"Not parsed: {question.parsed.error or 'unknown reason'}", f.small, RED, 56)
            if stage.number == 8:
                if self.record.report.findings:
                    new_group()
                    add("Findings:", f.bold, INK, 24, 8)
                    add(self.record.report.findings, f.body, INK, 56)
                if self.record.report.impression:
                    new_group()
                    add("Impression:", f.bold, INK, 24, 8)
                    add(self.record.report.impression, f.body, INK, 56)
        return out

    # -- pages ----------------------------------------------------------------------------------------------
    def layout(self) -> Layout:
        """Where everything goes: panel geometry and, per page, each reasoning line with its top y (worked out
        once per renderer)."""
        if self._layout is None:
            self._layout = self._make_layout()
        return self._layout

    def _make_layout(self) -> Layout:
        probe = Image.new("RGB", (self.width, self.height), WHITE)
        header_bottom = self._draw_header(ImageDraw.Draw(probe), 1, 1)
        bottom = self.height - self.margin - self._footer_height()
        image_width = int(self.inner * PANEL_WIDTH_SHARE)
        table_left = self.margin + image_width + 32
        table_width = self.width - self.margin - table_left
        table_bottom = self._draw_findings_table(ImageDraw.Draw(probe), table_left, header_bottom, table_width)
        image_max_height = max(400, min(int((bottom - header_bottom) * 0.6), table_bottom - header_bottom + 200))
        panel_bottom = header_bottom + self._panel_height(image_width, image_max_height)
        first_text_top = max(panel_bottom, table_bottom) + 24

        pages: list[list[tuple[int, Line]]] = [[]]
        y = first_text_top
        lines = self.reasoning_lines()
        group_height: dict[int, int] = {}
        for line in lines:
            group_height[line.group] = group_height.get(line.group, 0) + line.height
        fresh_page = bottom - header_bottom - 2 * self.faces.heading.line_height
        previous_group: int | None = None
        for line in lines:
            starts_group = line.group != previous_group
            previous_group = line.group
            # a group that fits on a fresh page is not split: it moves to the next page whole
            move = starts_group and y + group_height[line.group] > bottom and group_height[line.group] <= fresh_page
            if (move or y + line.height > bottom) and pages[-1]:
                pages.append([])
                y = header_bottom
                if line.continued:
                    for head in wrap(line.continued, self.faces.heading, self.inner):
                        pages[-1].append((y, Line(head, self.faces.heading, MUTED)))
                        y += self.faces.heading.line_height
                line = Line(line.text, line.face, line.colour, line.indent, 0, line.continued)
            pages[-1].append((y + line.space_before, line))
            y += line.height
        return Layout(header_bottom, bottom, image_width, image_max_height, table_left, table_width,
                      first_text_top, pages)

    def render(self, only: Collection[int] | None = None) -> tuple[list[Image.Image], int]:
        """The page images (all, or the page numbers in ``only``) and the number of pages in all."""
        plan = self.layout()
        total = len(plan.pages)
        images = []
        for number, page_lines in enumerate(plan.pages, start=1):
            if only is not None and number not in only:
                continue
            canvas = Image.new("RGB", (self.width, self.height), WHITE)
            draw = ImageDraw.Draw(canvas)
            self._draw_header(draw, number, total)
            if number == 1:
                self._draw_findings_table(draw, plan.table_left, plan.header_bottom, plan.table_width)
                self._draw_image_panel(canvas, draw, plan.header_bottom, plan.image_width, plan.image_max_height)
                draw = ImageDraw.Draw(canvas)
                rule = plan.first_text_top - 12
                draw.line([self.margin, rule, self.width - self.margin, rule], fill=RULE, width=2)
            for y, line in page_lines:
                line.face.draw(draw, (self.margin + line.indent, y), line.text, line.colour)
            self._draw_footer(draw, number, total)
            images.append(canvas)
        return images, total


@dataclass(frozen=True)
class Layout:
    header_bottom: int
    bottom: int  # reasoning text ends above this y (footer below)
    image_width: int
    image_max_height: int
    table_left: int
    table_width: int
    first_text_top: int
    pages: list[list[tuple[int, Line]]]  # per page: (top y, line)


def render_pages(record: ReasoningRecord, current: Sequence[Dataset], prior: Sequence[Dataset] = (),
                 options: OutputOptions | None = None) -> list[Image.Image]:
    """The reasoning pages of ``record`` as RGB images."""
    return PageRenderer(record, current, prior, options or OutputOptions()).render()[0]


def render_some_pages(record: ReasoningRecord, current: Sequence[Dataset], prior: Sequence[Dataset],
                      options: OutputOptions, only: Collection[int] | None,
                      panel: Panel | None = None) -> tuple[list[Image.Image], int]:
    """The pages numbered in ``only`` (1-based, those that exist; None: all) and the number of pages in all.
    With ``panel`` the sources need no pixel data."""
    return PageRenderer(record, current, prior, options, panel).render(only)
