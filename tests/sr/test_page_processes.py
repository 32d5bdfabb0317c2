"""Pages made in page processes (how the node makes them) are the same objects as pages made in one process."""
from __future__ import annotations

import multiprocessing
import threading
from concurrent.futures import ProcessPoolExecutor, ThreadPoolExecutor

import numpy as np
import pydicom
from pydicom.dataset import Dataset

from dicomnode.demo.records import make_record
from sr_writer import build_result_objects, make_result_objects


def test_page_processes_make_the_same_pages(study: list[Dataset], prior_study: list[Dataset]) -> None:
    record = make_record(study, prior_study, positive=("pneumothorax", "pleural_effusion"), long_text=60)
    here = build_result_objects(record, study, prior_study)
    with ProcessPoolExecutor(max_workers=2, mp_context=multiprocessing.get_context("spawn")) as pool:
        there = build_result_objects(record, study, prior_study, page_executor=pool)
    assert len(here.pages) == len(there.pages) >= 2
    assert there.page_images == [] and len(here.page_images) == len(here.pages)
    for number, (mine, theirs) in enumerate(zip(here.pages, there.pages, strict=False), start=1):
        assert theirs.InstanceNumber == number and theirs.ImageComments == mine.ImageComments
        assert theirs.PixelData == mine.PixelData  # same rendering, same RLE bytes
        back = pydicom.dcmread(__import__("io").BytesIO(there.encoded[str(theirs.SOPInstanceUID)]))
        assert (back.pixel_array == np.asarray(here.page_images[number - 1])).all()
        assert there.reports[str(theirs.SOPInstanceUID)].errors == []
    assert set(there.encoded) == {str(ds.SOPInstanceUID) for ds in there.datasets}


class _GatedPool(ThreadPoolExecutor):
    """Runs every task after the first only once an object was announced: a caller that announced nothing before
    all tasks had finished would leave the gate shut (each gated task then reports that it timed out)."""

    def __init__(self) -> None:
        super().__init__(max_workers=8)
        self.gate = threading.Event()
        self.timed_out: list[bool] = []
        self.submitted = 0

    def submit(self, fn, /, *args, **kwargs):  # type: ignore[no-untyped-def, override]
        self.submitted += 1
        if self.submitted == 1:
            return super().submit(fn, *args, **kwargs)

        def gated():  # type: ignore[no-untyped-def]
            self.timed_out.append(not self.gate.wait(60))
            return fn(*args, **kwargs)

        return super().submit(gated)


def test_each_object_is_announced_as_soon_as_it_is_made(study: list[Dataset], prior_study: list[Dataset]) -> None:
    record = make_record(study, prior_study, positive=("pneumothorax",), long_text=60)
    announced: list[tuple[str, bytes]] = []
    pool = _GatedPool()
    with pool:
        making = make_result_objects(record, study, prior_study, page_executor=pool)
        while True:
            try:
                dataset, data = next(making)
            except StopIteration as done:
                objects = done.value
                break
            announced.append((str(dataset.SOPInstanceUID), data))
            pool.gate.set()
    assert pool.timed_out and not any(pool.timed_out)  # the first object went out while the others waited
    assert announced[0][0] == str(objects.sr.SOPInstanceUID)  # the first task is the SR
    assert dict(announced) == objects.encoded and len(announced) == len(objects.datasets)  # each once, as stored
    assert objects.sr.ContentSequence  # the SR came back as bytes and was read
    assert objects.reports[str(objects.sr.SOPInstanceUID)].errors == []


class _RecordingPool(ProcessPoolExecutor):
    """A real page-process pool that keeps what each task was given."""

    def __init__(self) -> None:
        super().__init__(max_workers=2, mp_context=multiprocessing.get_context("spawn"))
        self.given: list[tuple[tuple, dict]] = []  # type: ignore[type-arg]

    def submit(self, fn, /, *args, **kwargs):  # type: ignore[no-untyped-def, override]
        self.given.append((args, kwargs))
        return super().submit(fn, *args, **kwargs)


def test_page_processes_get_headers_and_one_decoded_panel(study: list[Dataset], prior_study: list[Dataset]) -> None:
    """A source is decoded once, by the caller: the SR and page tasks get its header only, and only the task that
    draws page 1 gets the panel image (small, at most the page's size)."""
    from sr_writer.page import PIXEL_TAGS, Panel

    record = make_record(study, prior_study, positive=("pneumothorax",), long_text=60)
    with _RecordingPool() as pool:
        objects = build_result_objects(record, study, prior_study, page_executor=pool)
    assert len(pool.given) == 5  # the SR and four page tasks
    panels = []
    for args, kwargs in pool.given:
        datasets = [ds for group in args if isinstance(group, list) for ds in group if isinstance(ds, Dataset)]
        assert len(datasets) == len(study) + len(prior_study)
        for ds in datasets:
            assert not PIXEL_TAGS & set(ds.keys()) and ds._pixel_array is None
        panels += [kwargs["panel"]] if kwargs.get("panel") is not None else []
    assert len(panels) == 1 and isinstance(panels[0], Panel)
    width, height = panels[0].image.size
    assert width <= objects.pages[0].Columns and height <= objects.pages[0].Rows
    assert all("PixelData" in ds for ds in [*study, *prior_study])  # the caller's sources are left as they were
