"""``build_result_objects``: record + source datasets in, validated SR and SC pages out."""
from __future__ import annotations

import datetime as dt
import io
import time
from collections.abc import Collection, Generator, Sequence
from concurrent.futures import BrokenExecutor, Executor, Future, ThreadPoolExecutor, as_completed
from dataclasses import dataclass, field
from typing import Any

from PIL import Image
from pydicom import dcmread
from pydicom.dataset import Dataset
from pydicom.uid import PYDICOM_ROOT_UID, generate_uid

from inference.record import ReasoningRecord
from sr_writer.hygiene import clean_sources, describe, invalid_reference_uids
from sr_writer.options import OutputOptions
from sr_writer.page import Panel, panel_image, render_some_pages, without_pixels
from sr_writer.sc import build_page_datasets, page_pixels
from sr_writer.sr import build_sr
from sr_writer.tree_bytes import tree_part10_bytes
from sr_writer.validate import ValidationReport, ensure_valid_bytes


@dataclass(frozen=True)
class ResultUids:
    """The UIDs of one result set, chosen by the caller: each is derived from ``seed`` and the object's role (SR
    series, SR instance, SC series, page N), so the same seed gives the same UIDs again. A caller that passes the
    same seed for a re-run gets objects that replace the earlier ones in a PACS instead of adding to them."""

    seed: str
    root: str = PYDICOM_ROOT_UID

    def uid(self, role: str) -> str:
        return generate_uid(prefix=self.root, entropy_srcs=[self.seed, role])

    @property
    def sr_series(self) -> str:
        return self.uid("sr-series")

    @property
    def sr_instance(self) -> str:
        return self.uid("sr-instance")

    @property
    def sc_series(self) -> str:
        return self.uid("sc-series")

    def page(self, number: int) -> str:
        return self.uid(f"sc-page-{number}")


def _set_uids(ds: Dataset, series_uid: str, sop_uid: str) -> None:
    ds.SeriesInstanceUID = series_uid
    ds.SOPInstanceUID = sop_uid
    ds.file_meta.MediaStorageSOPInstanceUID = sop_uid


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
    page_executor_lost: bool = False  # a page process died: some pages were made here instead
    repairs: list[str] = field(default_factory=list)  # header hygiene: what was done to copied attributes (no values)

    @property
    def datasets(self) -> list[Dataset]:
        return [self.sr, *self.pages]


def _encode_and_check(ds: Dataset, what: str, validate: bool,
                      inherited: frozenset[str] = frozenset()) -> tuple[bytes, ValidationReport | None]:
    data = tree_part10_bytes(ds)  # pydicom's bytes (an SR quickly; a page goes to pydicom whole)
    return data, ensure_valid_bytes(data, what, inherited) if validate else None


def make_pages(
    record: ReasoningRecord,
    current: Sequence[Dataset],
    prior: Sequence[Dataset] = (),
    options: OutputOptions | None = None,
    uids: ResultUids | None = None,
    panel: Panel | None = None,
) -> PageObjects:
    """Render the reasoning pages, build their SC datasets, encode and validate each (``ExportRefused`` on errors)."""
    series_uid = uids.sc_series if uids is not None else None
    return make_some_pages(record, current, prior, options, None, series_uid, keep_images=True, uids=uids,
                           panel=panel)[0]


# What each page-process task makes: single pages first, so each is ready (and can be sent) as soon as it is made,
# then every page after them in one task. The image page (frontal image, box table) is the first.
PAGE_TASKS: tuple[range, ...] = (range(1, 2), range(2, 3), range(3, 4), range(4, 1_000_000))

FinishedObject = tuple[Dataset, bytes]  # a result object, validated and final, and its Part-10 bytes


def make_some_pages(
    record: ReasoningRecord,
    current: Sequence[Dataset],
    prior: Sequence[Dataset] = (),
    options: OutputOptions | None = None,
    only: Collection[int] | None = None,
    series_uid: str | None = None,
    made_at: dt.datetime | None = None,
    keep_images: bool = False,
    uids: ResultUids | None = None,
    panel: Panel | None = None,
) -> tuple[PageObjects, int]:
    """The pages numbered in ``only`` (None: all) as validated SC objects, and the number of pages in all.

    What a page process does: picklable in and out, so pages of one study can be made by several processes (they
    share ``series_uid`` and ``made_at``). With ``uids`` page N gets ``uids.page(N)``. With ``panel`` (the first
    page's image, see ``sr_writer.page.Panel``) the sources need no pixel data."""
    options = options or OutputOptions()
    started = time.perf_counter()
    images, total = render_some_pages(record, current, prior, options, only, panel)
    rendered = time.perf_counter()
    pixels = [page_pixels(image, options.page_transfer_syntax) for image in images]
    encoded = time.perf_counter()
    first = next((n for n in range(1, total + 1) if only is None or n in only), 1)  # number of the first page made
    pages = build_page_datasets(record, pixels, current, options, series_uid=series_uid, first_number=first,
                                total=total, made_at=made_at)
    if uids is not None:
        for page in pages:
            _set_uids(page, page.SeriesInstanceUID, uids.page(int(page.InstanceNumber)))
    built = time.perf_counter()
    inherited = invalid_reference_uids(current)
    with ThreadPoolExecutor(max_workers=2, thread_name_prefix="page-check") as pool:
        done = list(pool.map(lambda page: _encode_and_check(page, f"SC page {page.InstanceNumber}",
                                                            options.validate, inherited), pages))
    seconds = {"render": rendered - started, "encode": encoded - rendered, "build": built - encoded,
               "check": time.perf_counter() - built}
    objects = PageObjects(pages, [data for data, _ in done], [report for _, report in done],
                          images if keep_images else [], seconds)
    return objects, total


def warm_up() -> None:
    """Import and load what page making needs (fonts), so a fresh page process answers its first study fast."""
    from sr_writer.page import Faces

    Faces(OutputOptions().body_font_px)


def make_sr(
    record: ReasoningRecord,
    current: Sequence[Dataset],
    prior: Sequence[Dataset] = (),
    options: OutputOptions | None = None,
    predecessor: Dataset | None = None,
    uids: ResultUids | None = None,
) -> tuple[bytes, ValidationReport | None, float]:
    """The SR of ``record`` as validated Part-10 bytes, dciodvfy's verdict and the seconds it took (a page-process
    task: bytes travel between processes faster than a pickled dataset of thousands of elements)."""
    options = options or OutputOptions()
    started = time.perf_counter()
    data, report = _encode_and_check(_sr(record, current, prior, options, predecessor, uids), "SR", options.validate,
                                     invalid_reference_uids([*current, *prior]))
    return data, report, time.perf_counter() - started


def _sr(record: ReasoningRecord, current: Sequence[Dataset], prior: Sequence[Dataset], options: OutputOptions,
        predecessor: Dataset | None, uids: ResultUids | None) -> Dataset:
    sr = build_sr(record, current, prior, options, predecessor)
    if uids is not None:
        _set_uids(sr, uids.sr_series, uids.sr_instance)
    return sr


def build_result_objects(
    record: ReasoningRecord,
    current: Sequence[Dataset],
    prior: Sequence[Dataset] = (),
    options: OutputOptions | None = None,
    predecessor: Dataset | None = None,
    page_executor: Executor | None = None,
    uids: ResultUids | None = None,
) -> ResultObjects:
    """The SR and the SC reasoning pages of ``record``, all made (see ``make_result_objects``)."""
    making = make_result_objects(record, current, prior, options, predecessor, page_executor, uids)
    while True:
        try:
            next(making)
        except StopIteration as done:
            return done.value


def make_result_objects(
    record: ReasoningRecord,
    current: Sequence[Dataset],
    prior: Sequence[Dataset] = (),
    options: OutputOptions | None = None,
    predecessor: Dataset | None = None,
    page_executor: Executor | None = None,
    uids: ResultUids | None = None,
) -> Generator[FinishedObject, None, ResultObjects]:
    """The SR and the SC reasoning pages of ``record``; each validated (``ExportRefused`` when one fails).

    A generator: it yields each object as ``(dataset, part10_bytes)`` once it is validated and final, in the order
    they are finished, so a caller can store and send each while the others are still being made; it returns the
    whole set (``ResultObjects``: objects, verdicts, timings, repairs).

    The sources pass ``sr_writer.hygiene`` first: what the results copy from them is checked and repaired on copies
    (``repairs`` lists what was done); a defect nothing can repair raises ``UnrepairableHeader`` naming it.
    The first page's image is decoded once, here (``sr_writer.page.Panel``); the SR and the pages are made from the
    sources' headers, so a page process never receives or decodes a source's pixels.

    With ``page_executor`` (a pool of page processes) everything is made there: the SR (built, encoded, validated;
    it comes back as bytes and is read here) and the pages in ``PAGE_TASKS`` (rendered, encoded, built, validated),
    so the work spreads over the cores and this process stays free to store and send what is ready. A task lost with
    its process (``BrokenExecutor``) is done here instead and ``page_executor_lost`` is set. Without an executor
    everything runs here, the SR's dciodvfy check beside the pages (in threads instead of processes, the GIL
    hand-offs between pure-Python SR building and Pillow's drawing made both several times slower).

    ``uids`` (optional) names the UIDs of the set, so that making it again gives the same objects' identities.
    """
    options = options or OutputOptions()
    started = time.perf_counter()
    (current, prior), repairs = clean_sources(current, prior)  # checked copies; the sources stay as they are
    panel = panel_image(record, current, prior, options)  # the one decode of a source's pixels
    current, prior = [without_pixels(ds) for ds in current], [without_pixels(ds) for ds in prior]
    if page_executor is None:
        result = yield from _build_here(record, current, prior, options, predecessor, started, uids, panel)
        result.repairs = describe(repairs)
        return result
    series_uid = uids.sc_series if uids is not None else generate_uid()
    made_at = dt.datetime.now(dt.UTC)
    futures: dict[Future[Any], int] = {}  # -> SR_TASK or the index of its page task in PAGE_TASKS
    lost = False
    try:
        futures[page_executor.submit(make_sr, record, current, prior, options, predecessor, uids)] = SR_TASK
        for index, part in enumerate(PAGE_TASKS):
            futures[page_executor.submit(make_some_pages, record, current, prior, options, part, series_uid,
                                         made_at, uids=uids, panel=panel if 1 in part else None)] = index
    except BrokenExecutor:
        lost = True
    sr_made: tuple[bytes, ValidationReport | None, float] | None = None
    made: dict[int, tuple[PageObjects, int]] = {}  # page task index -> its pages, the number of pages in all
    for future in as_completed(futures):
        try:
            value = future.result()
        except BrokenExecutor:
            lost = True
            continue
        if futures[future] == SR_TASK:
            sr_made = value
            sr = dcmread(io.BytesIO(sr_made[0]))
            yield sr, sr_made[0]
        else:
            made[futures[future]] = value
            yield from zip(value[0].pages, value[0].encoded, strict=True)
    if sr_made is None:  # lost with its process: made here
        sr_made = make_sr(record, current, prior, options, predecessor, uids)
        sr = dcmread(io.BytesIO(sr_made[0]))
        yield sr, sr_made[0]
    for index, part in enumerate(PAGE_TASKS):
        if index not in made:  # lost: made here, with the same series and time
            made[index] = make_some_pages(record, current, prior, options, part, series_uid, made_at, uids=uids,
                                          panel=panel)
            yield from zip(made[index][0].pages, made[index][0].encoded, strict=True)
    sr_data, sr_report, sr_seconds = sr_made
    pages = _joined_pages([made[index] for index in range(len(PAGE_TASKS))])
    result = _result(sr, sr_data, sr_report, pages,
                     {"sr": sr_seconds, "all": time.perf_counter() - started, **pages.seconds}, lost)
    result.repairs = describe(repairs)
    return result


SR_TASK = -1


def _build_here(record: ReasoningRecord, current: list[Dataset], prior: list[Dataset], options: OutputOptions,
                predecessor: Dataset | None, started: float, uids: ResultUids | None = None,
                panel: Panel | None = None) -> Generator[FinishedObject, None, ResultObjects]:
    with ThreadPoolExecutor(max_workers=1, thread_name_prefix="sr-check") as pool:
        sr = _sr(record, current, prior, options, predecessor, uids)
        sr_data = tree_part10_bytes(sr)
        sr_check: Future[ValidationReport] | None = (
            pool.submit(ensure_valid_bytes, sr_data, "SR", invalid_reference_uids([*current, *prior]))
            if options.validate else None)
        sr_built = time.perf_counter()
        pages = make_pages(record, current, prior, options, uids, panel)
        sr_report = sr_check.result() if sr_check is not None else None  # a refusal raises ExportRefused
    yield sr, sr_data
    yield from zip(pages.pages, pages.encoded, strict=True)
    return _result(sr, sr_data, sr_report, pages,
                   {"sr": sr_built - started, "all": time.perf_counter() - started,
                    **{f"pages_{key}": value for key, value in pages.seconds.items()}}, False)


def _result(sr: Dataset, sr_data: bytes, sr_report: ValidationReport | None, pages: PageObjects,
            seconds: dict[str, float], lost: bool) -> ResultObjects:
    result = ResultObjects(sr=sr, pages=pages.pages, page_images=pages.images, seconds=seconds,
                           page_executor_lost=lost)
    for dataset, data, report in [(sr, sr_data, sr_report),
                                  *zip(pages.pages, pages.encoded, pages.reports, strict=True)]:
        result.encoded[str(dataset.SOPInstanceUID)] = data
        if report is not None:
            result.reports[str(dataset.SOPInstanceUID)] = report
    return result


def _joined_pages(parts: list[tuple[PageObjects, int]]) -> PageObjects:
    """The pages of all page tasks in order; checks that together they are pages 1..N of the same N."""
    totals = {total for _, total in parts}
    numbers = [page.InstanceNumber for objects, _ in parts for page in objects.pages]
    if len(totals) != 1 or numbers != list(range(1, next(iter(totals)) + 1)):
        raise RuntimeError(f"page tasks returned pages {numbers} of {sorted(totals)}")
    return PageObjects([p for objects, _ in parts for p in objects.pages],
                       [d for objects, _ in parts for d in objects.encoded],
                       [r for objects, _ in parts for r in objects.reports], [],
                       {f"pages_task{index + 1}_{key}": value for index, (objects, _) in enumerate(parts)
                        for key, value in objects.seconds.items()})
