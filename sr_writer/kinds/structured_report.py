"""Result kind ``sr``: the TID 1500 Structured Report of the record (Comprehensive 3D SR or Comprehensive SR)."""
from __future__ import annotations

import time
from collections.abc import Sequence

from pydicom.uid import UID

from sr_writer.kinds.base import Made, MakingTask, ResultKind, ResultObject, Sources
from sr_writer.sr import build_sr
from sr_writer.tree_bytes import tree_part10_bytes
from sr_writer.validate import ensure_valid_bytes

SR_SOP_CLASSES = frozenset({"1.2.840.10008.5.1.4.1.1.88.33", "1.2.840.10008.5.1.4.1.1.88.34",
                            "1.2.840.10008.5.1.4.1.1.88.22"})


def make_sr(sources: Sources) -> Made:
    """The SR, built, encoded and validated (``ExportRefused`` when dciodvfy finds errors)."""
    started = time.perf_counter()
    sr = build_sr(sources.record, sources.current, sources.prior, sources.options, sources.predecessor)
    sr.SeriesInstanceUID = sources.uids.sr_series
    sr.SOPInstanceUID = sr.file_meta.MediaStorageSOPInstanceUID = UID(sources.uids.sr_instance)
    built = time.perf_counter()
    data = tree_part10_bytes(sr)  # pydicom's bytes, made quickly from the content tree
    report = ensure_valid_bytes(data, "SR", sources.inherited) if sources.options.validate else None
    return Made([ResultObject("sr", sr, data, report)],
                {"sr_build": built - started, "sr_check": time.perf_counter() - built})


class StructuredReportKind(ResultKind):
    def __init__(self) -> None:
        super().__init__("sr", "Structured Report (TID 1500)", SR_SOP_CLASSES)

    def tasks(self, sources: Sources, split: bool = True) -> Sequence[MakingTask]:
        return [MakingTask(self.name, "sr", make_sr, sources.without_panel())]
