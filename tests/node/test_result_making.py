"""Result objects made on the node's page processes (dicomnode.result_making) are the same objects as those made in
one process; each is handed on as soon as it is made; the tasks get headers and one decoded panel only."""
from __future__ import annotations

import io
import multiprocessing
import threading
from concurrent.futures import Executor, ProcessPoolExecutor, ThreadPoolExecutor

import numpy as np
import pydicom
import pytest
from pydicom.dataset import Dataset

from dicomnode.demo.records import make_record
from dicomnode.demo.synthetic import StudySpec, make_study, prior_spec
from dicomnode.result_making import ResultMaker
from sr_writer import ResultObjects, build_result_objects, prepare
from sr_writer.kinds import MakingTask


@pytest.fixture(scope="module")
def study() -> list[Dataset]:
    return make_study(StudySpec(rows=320, columns=256, seed=3))


@pytest.fixture(scope="module")
def prior_study() -> list[Dataset]:
    return make_study(prior_spec(StudySpec(rows=320, columns=256, seed=3)))


def _made(maker: ResultMaker, record, study, prior, on_object=None) -> tuple[list, ResultObjects]:  # type: ignore[no-untyped-def]
    sources, repairs = prepare(record, study, prior)
    making = maker.make(sources, repairs)
    announced = []
    while True:
        try:
            obj = next(making)
        except StopIteration as done:
            return announced, done.value
        announced.append(obj)
        if on_object is not None:
            on_object(obj)


def test_page_processes_make_the_same_objects(study: list[Dataset], prior_study: list[Dataset]) -> None:
    record = make_record(study, prior_study, positive=("pneumothorax", "pleural_effusion"), long_text=60)
    here = build_result_objects(record, study, prior_study)
    maker = ResultMaker(2)
    try:
        _, there = _made(maker, record, study, prior_study)
    finally:
        maker.close()
    assert len(here.pages) == len(there.pages) >= 2 and not there.page_executor_lost
    assert there.page_images == [] and len(here.page_images) == len(here.pages)
    for number, (mine, theirs) in enumerate(zip(here.pages, there.pages, strict=True), start=1):
        assert theirs.InstanceNumber == number and theirs.ImageComments == mine.ImageComments
        assert theirs.PixelData == mine.PixelData  # same rendering, same RLE bytes
        back = pydicom.dcmread(io.BytesIO(there.encoded[str(theirs.SOPInstanceUID)]))
        assert (back.pixel_array == np.asarray(here.page_images[number - 1])).all()
        assert there.reports[str(theirs.SOPInstanceUID)].errors == []
    assert set(there.encoded) == {str(ds.SOPInstanceUID) for ds in there.datasets}
    assert [obj.kind for obj in there.objects].count("sr") == 1


def _set_a_long_value_and_check(data: bytes) -> tuple[int, list[str]]:
    """In a page process: set an 80-character LO (64 at most) on an object, as a kind's code would, then run the
    kinds' export check; returns (warnings raised while setting, dciodvfy's reasons for refusing)."""
    import warnings

    from sr_writer import ExportRefused
    from sr_writer.tree_bytes import tree_part10_bytes
    from sr_writer.validate import ensure_valid_bytes

    ds = pydicom.dcmread(io.BytesIO(data))
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        ds.InstitutionName = "I" * 80
    try:
        ensure_valid_bytes(tree_part10_bytes(ds), "SR")
    except ExportRefused as refused:
        return len(caught), refused.reasons
    return len(caught), []


def test_page_processes_leave_value_checks_to_dciodvfy(study: list[Dataset]) -> None:
    """A page process does not have pydicom check each value as it is set (``children.values_checked_by_dciodvfy``:
    a tenth of the making); a value pydicom would only have warned about is still refused, by dciodvfy, before the
    object leaves the process."""
    from dicomnode.children import values_checked_by_dciodvfy

    sr = build_result_objects(make_record(study, positive=("pneumothorax",)), study, kinds=["sr"])
    data = sr.encoded[str(sr.sr.SOPInstanceUID)]
    with ProcessPoolExecutor(max_workers=1, mp_context=multiprocessing.get_context("spawn"),
                             initializer=values_checked_by_dciodvfy) as pool:
        warned, reasons = pool.submit(_set_a_long_value_and_check, data).result(timeout=120)
    assert warned == 0  # pydicom was quiet ...
    assert any("InstitutionName" in r or "Institution Name" in r for r in reasons), reasons  # ... dciodvfy was not
    here_warned, here_reasons = _set_a_long_value_and_check(data)  # this process (the worker's) keeps pydicom's checks
    assert here_warned >= 1 and here_reasons


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
    pool = _GatedPool()
    maker = ResultMaker(2, make_pool=lambda: pool)
    with pool:
        announced, objects = _made(maker, record, study, prior_study, on_object=lambda _: pool.gate.set())
    assert pool.timed_out and not any(pool.timed_out)  # the first object went out while the others waited
    assert announced[0].kind == "sr" and announced[0].sop_instance_uid == str(objects.sr.SOPInstanceUID)
    assert {o.sop_instance_uid: o.data for o in announced} == objects.encoded
    assert len(announced) == len(objects.datasets)  # each once, as stored
    assert objects.sr.ContentSequence  # the SR came back as bytes and was read
    assert objects.reports[str(objects.sr.SOPInstanceUID)].errors == []


class _RecordingPool(ProcessPoolExecutor):
    """A real page-process pool that keeps the tasks it was given."""

    def __init__(self) -> None:
        super().__init__(max_workers=2, mp_context=multiprocessing.get_context("spawn"))
        self.given: list[MakingTask] = []

    def submit(self, fn, /, *args, **kwargs):  # type: ignore[no-untyped-def, override]
        self.given.extend(a for a in args if isinstance(a, MakingTask))
        return super().submit(fn, *args, **kwargs)


def test_page_processes_get_headers_and_one_decoded_panel(study: list[Dataset], prior_study: list[Dataset]) -> None:
    """A source is decoded once, by the caller: the SR and page tasks get its header only, and only the task that
    draws page 1 gets the panel image (small, at most the page's size)."""
    from sr_writer.page import PIXEL_TAGS, Panel

    record = make_record(study, prior_study, positive=("pneumothorax",), long_text=60)
    pool: Executor = _RecordingPool()
    with pool:
        _, objects = _made(ResultMaker(2, make_pool=lambda: pool), record, study, prior_study)
    given = pool.given  # type: ignore[attr-defined]
    from sr_writer.kinds.reasoning_pages import PAGE_PARTS

    assert [task.kind for task in given] == ["sr"] + ["sc"] * len(PAGE_PARTS)  # the SR, then the page tasks
    for task in given:
        datasets = [*task.sources.current, *task.sources.prior]
        assert len(datasets) == len(study) + len(prior_study)
        for ds in datasets:
            assert not PIXEL_TAGS & set(ds.keys()) and ds._pixel_array is None
    panels = [task.sources.panel for task in given if task.sources.panel is not None]
    assert len(panels) == 1 and isinstance(panels[0], Panel)
    width, height = panels[0].image.size
    assert width <= objects.pages[0].Columns and height <= objects.pages[0].Rows
    assert all("PixelData" in ds for ds in [*study, *prior_study])  # the caller's sources are left as they were


def test_no_page_processes_makes_everything_here(study: list[Dataset]) -> None:
    record = make_record(study, positive=("pneumothorax",))
    announced, objects = _made(ResultMaker(0), record, study, [])
    assert [o.kind for o in announced][0] == "sr" and len(objects.pages) >= 1 and not objects.page_executor_lost


def test_only_the_configured_kinds_are_made(study: list[Dataset]) -> None:
    record = make_record(study, positive=("pneumothorax",))
    announced, objects = _made(ResultMaker(0, kinds=["sr"]), record, study, [])
    assert [o.kind for o in announced] == ["sr"] and objects.pages == []


def test_start_rehearses_the_workers_share_in_this_process(caplog: pytest.LogCaptureFixture,
                                                           monkeypatch: pytest.MonkeyPatch) -> None:
    """Starting the page processes also checks a two-view study's sources in this process (``sr_writer.prepare``: the
    first study's 0.3 s of lazy loads), once, and the rehearsal warns of nothing."""
    import sr_writer

    calls: list[tuple[str, int]] = []
    real_prepare = sr_writer.prepare

    def counted(*args, **kwargs):  # type: ignore[no-untyped-def]
        sources, repairs = real_prepare(*args, **kwargs)
        calls.append((threading.current_thread().name, len(sources.current)))
        return sources, repairs

    monkeypatch.setattr(sr_writer, "prepare", counted)
    maker = ResultMaker(1, make_pool=lambda: ThreadPoolExecutor(max_workers=1, thread_name_prefix="page"))
    with caplog.at_level("WARNING"):
        maker.start()
    maker.close()
    assert calls == [(threading.current_thread().name, 2)]  # here, not on a page process; the PA and LATERAL images
    assert not [r for r in caplog.records if "rehearsal" in r.getMessage()]
