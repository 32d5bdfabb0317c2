"""Result kind ``sc``: the Secondary Capture reasoning pages (the first one with the image, boxes and findings)."""
from __future__ import annotations

import time
from collections.abc import Collection, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

from pydicom import Dataset
from pydicom.uid import UID

from sr_writer.kinds.base import Made, MakingTask, ResultKind, ResultObject, Sources
from sr_writer.page import PageRenderer
from sr_writer.sc import build_page_datasets, page_pixels
from sr_writer.tree_bytes import tree_part10_bytes
from sr_writer.validate import ValidationReport, ensure_valid_bytes

SC_SOP_CLASSES = frozenset({"1.2.840.10008.5.1.4.1.1.7", "1.2.840.10008.5.1.4.1.1.7.4"})

# What each task makes: one page each, so each is ready (and can be sent) as soon as it is made and no task ends
# with several pages to store at once, then every page after them in one task (a task for a page the record does
# not have returns nothing at once). The image page (frontal image, box table) is the first.
PAGE_PARTS: tuple[range, ...] = (*(range(n, n + 1) for n in range(1, 7)), range(7, 1_000_000))


@dataclass
class _SetWork:
    """What every page task of one result set would work out again: the layout (in a renderer; one with the
    decoded panel for page 1, one without for the others) and the SC template. A page process keeps it for the set
    it is making: its next task is usually of the same set."""

    renderers: dict[bool, PageRenderer] = field(default_factory=dict)
    templates: dict[tuple[int, int], Dataset] = field(default_factory=dict)

    def renderer(self, sources: Sources) -> PageRenderer:
        with_panel = sources.panel is not None
        if with_panel not in self.renderers:
            self.renderers[with_panel] = PageRenderer(sources.record, sources.current, sources.prior,
                                                      sources.options, sources.panel)
        return self.renderers[with_panel]


_WORK: dict[tuple[str, str], _SetWork] = {}


def _set_work(sources: Sources) -> _SetWork:
    key = (sources.uids.seed, sources.made_at.isoformat())
    if key not in _WORK:
        _WORK.clear()  # one set at a time: a process never holds another study's pages
        _WORK[key] = _SetWork()
    return _WORK[key]


def make_pages(sources: Sources, only: Collection[int] | None = None, keep_images: bool = False) -> Made:
    """The pages numbered in ``only`` (None: all), rendered, encoded, built and validated. Page N gets
    ``uids.page(N)``; every page of the set shares the SC series and ``made_at``, whichever task made it."""
    options = sources.options
    started = time.perf_counter()
    work = _set_work(sources)
    images, total = work.renderer(sources).render(only)
    rendered = time.perf_counter()
    pixels = [page_pixels(image, options.page_transfer_syntax) for image in images]
    encoded = time.perf_counter()
    first = next((n for n in range(1, total + 1) if only is None or n in only), 1)
    pages = build_page_datasets(sources.record, pixels, sources.current, options,
                                series_uid=sources.uids.sc_series, first_number=first, total=total,
                                made_at=sources.made_at, templates=work.templates)
    for page in pages:
        uid = UID(sources.uids.page(int(page.InstanceNumber)))
        page.SOPInstanceUID = page.file_meta.MediaStorageSOPInstanceUID = uid
    built = time.perf_counter()

    def check(page: Dataset) -> tuple[bytes, ValidationReport | None]:
        data = tree_part10_bytes(page)
        report = (ensure_valid_bytes(data, f"SC page {page.InstanceNumber}", sources.inherited)
                  if options.validate else None)
        return data, report

    with ThreadPoolExecutor(max_workers=2, thread_name_prefix="page-check") as pool:
        checked = list(pool.map(check, pages))
    objects = [ResultObject("sc", page, data, report) for page, (data, report) in zip(pages, checked, strict=True)]
    seconds = {"pages_render": rendered - started, "pages_encode": encoded - rendered, "pages_build": built - encoded,
               "pages_check": time.perf_counter() - built}
    return Made(objects, seconds, images if keep_images else [])


class ReasoningPagesKind(ResultKind):
    def __init__(self) -> None:
        super().__init__("sc", "Secondary Capture reasoning pages", SC_SOP_CLASSES)

    def tasks(self, sources: Sources, split: bool = True) -> Sequence[MakingTask]:
        """The page parts of ``PAGE_PARTS`` (``split``; only the first page's task carries the decoded panel), or
        one task for every page (the layout is worked out once)."""
        if not split:
            return [MakingTask(self.name, "pages", make_pages, sources, (None,))]
        return [MakingTask(self.name, f"pages {part.start}-{min(part.stop - 1, 99)}", make_pages,
                           sources if 1 in part else sources.without_panel(), (part,))
                for part in PAGE_PARTS]
