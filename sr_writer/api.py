"""``build_result_objects``: record + source datasets in, validated SR and SC pages out."""
from __future__ import annotations

import datetime as dt
import time
from collections.abc import Collection, Sequence
from concurrent.futures import Executor, Future, ThreadPoolExecutor
from dataclasses import dataclass, field

from PIL import Image
from pydicom.dataset import Dataset
from pydicom.uid import generate_uid

from inference.record import ReasoningRecord
from sr_writer.options import OutputOptions
from sr_writer.page import render_some_pages
from sr_writer.sc import build_page_datasets, page_pixels
from sr_writer.sr import build_sr
from sr_writer.validate import ValidationReport, ensure_valid_bytes, part10_bytes


@dataclass
class PageObjects:
    """The SC pages of one record, each with its Part-10 bytes and (when validated) dciodvfy's verdict."""

    pages: list[Dataset]
    encoded: list[bytes]
    reports: list[ValidationReport | None]
    images: list[Image.Image]  # empty when the pages were rendered in a page process
    seconds: dict[str, float] = field(default_factory=dict)  # render, build, check: where the time went


@dataclass
class ResultObjects:
    sr: Dataset
    pages: list[Dataset]  # Secondary Capture, one per page
    page_images: list[Image.Image]  # empty when the pages were made in a page process
    reports: dict[str, ValidationReport] = field(default_factory=dict)  # SOP Instance UID -> dciodvfy verdict
    encoded: dict[str, bytes] = field(default_factory=dict)  # SOP Instance UID -> Part-10 bytes (as validated)
    seconds: dict[str, float] = field(default_factory=dict)  # sr, pages (and the pages' render/build/check)

    @property
    def datasets(self) -> list[Dataset]:
        return [self.sr, *self.pages]


def _encode_and_check(ds: Dataset, what: str, validate: bool) -> tuple[bytes, ValidationReport | None]:
    data = part10_bytes(ds)
    return data, ensure_valid_bytes(data, what) if validate else None


def make_pages(
    record: ReasoningRecord,
    current: Sequence[Dataset],
    prior: Sequence[Dataset] = (),
    options: OutputOptions | None = None,
) -> PageObjects:
    """Render the reasoning pages, build their SC datasets, encode and validate each (``ExportRefused`` on errors)."""
    return make_some_pages(record, current, prior, options, None, keep_images=True)[0]


FIRST_PAGE, OTHER_PAGES = range(1, 2), range(2, 1_000_000)  # the image page, and the text pages after it


def make_some_pages(
    record: ReasoningRecord,
    current: Sequence[Dataset],
    prior: Sequence[Dataset] = (),
    options: OutputOptions | None = None,
    only: Collection[int] | None = None,
    series_uid: str | None = None,
    made_at: dt.datetime | None = None,
    keep_images: bool = False,
) -> tuple[PageObjects, int]:
    """The pages numbered in ``only`` (None: all) as validated SC objects, and the number of pages in all.

    What a page process does: picklable in and out, so pages of one study can be made by several processes (they
    share ``series_uid`` and ``made_at``)."""
    options = options or OutputOptions()
    started = time.perf_counter()
    images, total = render_some_pages(record, current, prior, options, only)
    rendered = time.perf_counter()
    pixels = [page_pixels(image, options.page_transfer_syntax) for image in images]
    encoded = time.perf_counter()
    first = next((n for n in range(1, total + 1) if only is None or n in only), 1)  # number of the first page made
    pages = build_page_datasets(record, pixels, current, options, series_uid=series_uid, first_number=first,
                                total=total, made_at=made_at)
    built = time.perf_counter()
    with ThreadPoolExecutor(max_workers=2, thread_name_prefix="page-check") as pool:
        done = list(pool.map(lambda page: _encode_and_check(page, f"SC page {page.InstanceNumber}",
                                                            options.validate), pages))
    seconds = {"render": rendered - started, "encode": encoded - rendered, "build": built - encoded,
               "check": time.perf_counter() - built}
    objects = PageObjects(pages, [data for data, _ in done], [report for _, report in done],
                          images if keep_images else [], seconds)
    return objects, total


def warm_up() -> None:
    """Import and load what page making needs (fonts), so a fresh page process answers its first study fast."""
    from sr_writer.page import Faces

    Faces(OutputOptions().body_font_px)


def build_result_objects(
    record: ReasoningRecord,
    current: Sequence[Dataset],
    prior: Sequence[Dataset] = (),
    options: OutputOptions | None = None,
    predecessor: Dataset | None = None,
    page_executor: Executor | None = None,
) -> ResultObjects:
    """The SR and the SC reasoning pages of ``record``; each validated (``ExportRefused`` when one fails).

    With ``page_executor`` (a pool of page processes) the pages are made there (rendered, encoded, built and
    validated), in two tasks, while this process builds the SR, so the work spreads over the cores; page images then
    stay in those processes. Without it everything runs here, one step after the other (in two threads instead, the
    GIL hand-offs between pure-Python SR building and Pillow's text drawing made both several times slower).
    dciodvfy (a subprocess) checks each object as soon as it is encoded.
    """
    options = options or OutputOptions()
    current, prior = list(current), list(prior)
    # Two tasks: the image page (frontal image, table, the costliest page to encode) and the text pages, so that
    # two page processes share the work while this one builds the SR.
    series_uid, made_at = generate_uid(), dt.datetime.now(dt.timezone.utc)
    parts = ([page_executor.submit(make_some_pages, record, current, prior, options, part, series_uid, made_at)
              for part in (FIRST_PAGE, OTHER_PAGES)] if page_executor is not None else None)
    started = time.perf_counter()
    with ThreadPoolExecutor(max_workers=1, thread_name_prefix="sr-check") as pool:
        sr = build_sr(record, current, prior, options, predecessor)
        sr_data = part10_bytes(sr)
        sr_check: Future[ValidationReport] | None = (
            pool.submit(ensure_valid_bytes, sr_data, "SR") if options.validate else None)
        sr_built = time.perf_counter()
        if parts is not None:
            (first, total), (others, _) = (part.result() for part in parts)
            page_objects = PageObjects(first.pages + others.pages, first.encoded + others.encoded,
                                       first.reports + others.reports, [],
                                       {**{f"first_{k}": v for k, v in first.seconds.items()},
                                        **{f"others_{k}": v for k, v in others.seconds.items()}})
            if [p.InstanceNumber for p in page_objects.pages] != list(range(1, total + 1)):
                raise RuntimeError(f"page processes returned {len(page_objects.pages)} of {total} pages")
        else:
            page_objects = make_pages(record, current, prior, options)
        sr_report = sr_check.result() if sr_check is not None else None  # a refusal raises ExportRefused
    result = ResultObjects(sr=sr, pages=page_objects.pages, page_images=page_objects.images,
                           seconds={"sr": sr_built - started, "all": time.perf_counter() - started,
                                    **{f"pages_{k}": v for k, v in page_objects.seconds.items()}})
    result.encoded[str(sr.SOPInstanceUID)] = sr_data
    if sr_report is not None:
        result.reports[str(sr.SOPInstanceUID)] = sr_report
    for page, data, report in zip(page_objects.pages, page_objects.encoded, page_objects.reports):
        result.encoded[str(page.SOPInstanceUID)] = data
        if report is not None:
            result.reports[str(page.SOPInstanceUID)] = report
    return result
