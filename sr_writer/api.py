"""``build_result_objects``: record + source datasets in, validated SR and SC pages out."""
from __future__ import annotations

from collections.abc import Sequence
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
    """The SR and the SC reasoning pages of ``record``; each validated (``ExportRefused`` when one fails)."""
    options = options or OutputOptions()
    current, prior = list(current), list(prior)
    sr = build_sr(record, current, prior, options, predecessor)
    images = render_pages(record, current, prior, options)
    pages = build_pages(record, images, current, options)
    result = ResultObjects(sr=sr, pages=pages, page_images=images)
    if options.validate:
        result.reports[str(sr.SOPInstanceUID)] = ensure_valid(sr, "SR")
        for number, page in enumerate(pages, start=1):
            result.reports[str(page.SOPInstanceUID)] = ensure_valid(page, f"SC page {number}")
    return result
