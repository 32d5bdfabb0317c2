"""``build_result_objects``: record + source datasets in, validated SR and SC pages out."""
from __future__ import annotations

from collections.abc import Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field

from PIL import Image
from pydicom.dataset import Dataset

from inference.record import ReasoningRecord
from sr_writer.options import OutputOptions
from sr_writer.page import render_pages
from sr_writer.sc import build_pages
from sr_writer.sr import build_sr
from sr_writer.validate import ValidationReport, ensure_valid


@dataclass
class ResultObjects:
    sr: Dataset
    pages: list[Dataset]  # Secondary Capture, one per page
    page_images: list[Image.Image]
    reports: dict[str, ValidationReport] = field(default_factory=dict)  # SOP Instance UID -> dciodvfy verdict

    @property
    def datasets(self) -> list[Dataset]:
        return [self.sr, *self.pages]


def build_result_objects(
    record: ReasoningRecord,
    current: Sequence[Dataset],
    prior: Sequence[Dataset] = (),
    options: OutputOptions | None = None,
    predecessor: Dataset | None = None,
) -> ResultObjects:
    """The SR and the SC reasoning pages of ``record``; each validated (``ExportRefused`` when one fails).

    The pages render in a second thread while the SR is built, and each object's dciodvfy run (a subprocess)
    starts as soon as the object exists, so validation overlaps the remaining work.
    """
    options = options or OutputOptions()
    current, prior = list(current), list(prior)
    with ThreadPoolExecutor(max_workers=4, thread_name_prefix="result-objects") as pool:
        rendering = pool.submit(render_pages, record, current, prior, options)
        sr = build_sr(record, current, prior, options, predecessor)
        checks: list[tuple[Dataset, Future[ValidationReport]]] = []
        if options.validate:
            checks.append((sr, pool.submit(ensure_valid, sr, "SR")))
        images = rendering.result()
        pages = build_pages(record, images, current, options)
        if options.validate:
            checks += [(page, pool.submit(ensure_valid, page, f"SC page {n}")) for n, page in enumerate(pages, 1)]
        result = ResultObjects(sr=sr, pages=pages, page_images=images)
        for ds, check in checks:  # the first refusal raises ExportRefused
            result.reports[str(ds.SOPInstanceUID)] = check.result()
    return result
