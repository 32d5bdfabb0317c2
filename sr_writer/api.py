"""``build_result_objects``: record + source datasets in, validated SR and SC pages out."""
from __future__ import annotations

from collections.abc import Sequence
from concurrent.futures import Executor, Future, ThreadPoolExecutor
from dataclasses import dataclass, field

from PIL import Image
from pydicom.dataset import Dataset

from inference.record import ReasoningRecord
from sr_writer.options import OutputOptions
from sr_writer.page import render_pages
from sr_writer.sc import build_pages
from sr_writer.sr import build_sr
from sr_writer.validate import ValidationReport, ensure_valid_bytes, part10_bytes


@dataclass
class PageObjects:
    """The SC pages of one record, each with its Part-10 bytes and (when validated) dciodvfy's verdict."""

    pages: list[Dataset]
    encoded: list[bytes]
    reports: list[ValidationReport | None]
    images: list[Image.Image]  # empty when not asked for (a page process does not send them back)


@dataclass
class ResultObjects:
    sr: Dataset
    pages: list[Dataset]  # Secondary Capture, one per page
    page_images: list[Image.Image]  # empty when the pages were made in a page process
    reports: dict[str, ValidationReport] = field(default_factory=dict)  # SOP Instance UID -> dciodvfy verdict
    encoded: dict[str, bytes] = field(default_factory=dict)  # SOP Instance UID -> Part-10 bytes (as validated)

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
    keep_images: bool = True,
) -> PageObjects:
    """Render the reasoning pages, build their SC datasets, encode and validate each (``ExportRefused`` on errors).

    A top-level function of picklable arguments, so a node can run it in a page process beside the SR.
    """
    options = options or OutputOptions()
    images = render_pages(record, current, prior, options)
    pages = build_pages(record, images, current, options)
    with ThreadPoolExecutor(max_workers=2, thread_name_prefix="page-check") as pool:
        done = list(pool.map(lambda item: _encode_and_check(item[1], f"SC page {item[0]}", options.validate),
                             enumerate(pages, 1)))
    return PageObjects(pages, [data for data, _ in done], [report for _, report in done],
                       images if keep_images else [])


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

    With ``page_executor`` (a process pool) the pages are made there while this process builds the SR, so the two
    halves use two cores; page images then stay in that process. Without it everything runs here, one after the
    other: run in two threads instead, the GIL hand-offs between pure-Python SR building and Pillow's text drawing
    made both several times slower. dciodvfy (a subprocess) checks each object as soon as it is encoded.
    """
    options = options or OutputOptions()
    current, prior = list(current), list(prior)
    pages_future = (page_executor.submit(make_pages, record, current, prior, options, False)
                    if page_executor is not None else None)
    with ThreadPoolExecutor(max_workers=1, thread_name_prefix="sr-check") as pool:
        sr = build_sr(record, current, prior, options, predecessor)
        sr_data = part10_bytes(sr)
        sr_check: Future[ValidationReport] | None = (
            pool.submit(ensure_valid_bytes, sr_data, "SR") if options.validate else None)
        page_objects = (pages_future.result() if pages_future is not None
                        else make_pages(record, current, prior, options))
        sr_report = sr_check.result() if sr_check is not None else None  # a refusal raises ExportRefused
    result = ResultObjects(sr=sr, pages=page_objects.pages, page_images=page_objects.images)
    result.encoded[str(sr.SOPInstanceUID)] = sr_data
    if sr_report is not None:
        result.reports[str(sr.SOPInstanceUID)] = sr_report
    for page, data, report in zip(page_objects.pages, page_objects.encoded, page_objects.reports):
        result.encoded[str(page.SOPInstanceUID)] = data
        if report is not None:
            result.reports[str(page.SOPInstanceUID)] = report
    return result
