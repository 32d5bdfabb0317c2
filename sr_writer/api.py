"""Record + source datasets in, validated result objects out: ``prepare`` the sources once, ``plan`` the kinds'
tasks, run them (here, one after the other: ``make_result_objects``; the node runs them on its page processes,
``dicomnode.result_making``), and ``assemble`` what they made into a :class:`ResultObjects`."""
from __future__ import annotations

import datetime as dt
import time
from collections.abc import Generator, Sequence
from dataclasses import dataclass, field
from typing import TypedDict, Unpack

from PIL import Image
from pydicom.dataset import Dataset
from pydicom.uid import generate_uid

from inference.record import ReasoningRecord
from sr_writer.hygiene import clean_sources, describe, invalid_reference_uids
from sr_writer.kinds import Made, MakingTask, ResultObject, ResultUids, Sources, kind_names, result_kind
from sr_writer.options import OutputOptions
from sr_writer.page import panel_image, without_pixels
from sr_writer.validate import ValidationReport


@dataclass
class ResultObjects:
    """A whole result set: every object in the order made, where the time went, what hygiene repaired."""

    objects: list[ResultObject]
    seconds: dict[str, float] = field(default_factory=dict)  # per task part (sr_build, pages_render, ...) and all
    repairs: list[str] = field(default_factory=list)  # header hygiene: what was done to copied attributes (no values)
    page_images: list[Image.Image] = field(default_factory=list)  # only when made here with keep_images
    page_executor_lost: bool = False  # a page process died: some tasks were run in the caller instead

    def of_kind(self, kind: str) -> list[ResultObject]:
        return [obj for obj in self.objects if obj.kind == kind]

    @property
    def sr(self) -> Dataset:
        return self.of_kind("sr")[0].dataset

    @property
    def pages(self) -> list[Dataset]:
        """The SC pages, page 1 first."""
        return sorted((obj.dataset for obj in self.of_kind("sc")), key=lambda ds: int(ds.InstanceNumber))

    @property
    def datasets(self) -> list[Dataset]:
        return [self.sr, *self.pages]

    @property
    def encoded(self) -> dict[str, bytes]:
        """SOP Instance UID -> Part-10 bytes (as validated)."""
        return {obj.sop_instance_uid: obj.data for obj in self.objects if obj.data is not None}

    @property
    def reports(self) -> dict[str, ValidationReport]:
        """SOP Instance UID -> dciodvfy's verdict."""
        return {obj.sop_instance_uid: obj.report for obj in self.objects if obj.report is not None}


def prepare(record: ReasoningRecord, current: Sequence[Dataset], prior: Sequence[Dataset] = (),
            options: OutputOptions | None = None, predecessor: Dataset | None = None,
            uids: ResultUids | None = None) -> tuple[Sources, list[str]]:
    """The sources every kind is made from, and what header hygiene repaired (keywords and actions, no values).

    The sources pass ``sr_writer.hygiene`` first: what the results copy from them is checked and repaired on copies
    (a defect nothing can repair raises ``UnrepairableHeader`` naming it). The first page's image is decoded once,
    here (``sr_writer.page.Panel``); everything else is made from the sources' headers, so a page process never
    receives or decodes a source's pixels. ``uids`` names the set's UIDs (the same again when the same job is made
    again); without it they are new."""
    options = options or OutputOptions()
    (current, prior), repairs = clean_sources(current, prior)  # checked copies; the sources stay as they are
    panel = panel_image(record, current, prior, options)  # the one decode of a source's pixels
    sources = Sources(record, [without_pixels(ds) for ds in current], [without_pixels(ds) for ds in prior], options,
                      uids or ResultUids(generate_uid()), dt.datetime.now(dt.UTC), predecessor, panel,
                      invalid_reference_uids([*current, *prior]))
    return sources, describe(repairs)


def plan(sources: Sources, kinds: Sequence[str] | None = None, split: bool = True) -> list[MakingTask]:
    """The tasks that make ``kinds`` (default: every registered kind), in the order they should start;
    ``split`` for several processes (see ``ResultKind.tasks``)."""
    names = kinds if kinds is not None else kind_names()
    return [task for name in names for task in result_kind(name).tasks(sources, split)]


def assemble(made: Sequence[Made], repairs: list[str], seconds: dict[str, float],
             lost: bool = False) -> ResultObjects:
    """One ``ResultObjects`` from the tasks' output; checks that the pages are 1..N."""
    objects = [obj for part in made for obj in part.objects]
    numbers = sorted(obj.identity.instance_number or 0 for obj in objects if obj.kind == "sc")
    if numbers != list(range(1, len(numbers) + 1)):
        raise RuntimeError(f"page tasks returned pages {numbers}")
    totals = dict(seconds)
    for part in made:
        for key, value in part.seconds.items():
            totals[key] = totals.get(key, 0.0) + value
    return ResultObjects(objects, totals, repairs, [image for part in made for image in part.images], lost)


class MakingOptions(TypedDict, total=False):
    """The keyword options of :func:`make_result_objects` and :func:`build_result_objects` (see ``prepare``;
    absent ones keep its defaults)."""

    options: OutputOptions | None
    predecessor: Dataset | None  # an earlier SR of the study that this set amends
    uids: ResultUids | None
    kinds: Sequence[str] | None  # default: every registered kind


def make_result_objects(record: ReasoningRecord, current: Sequence[Dataset], prior: Sequence[Dataset] = (), *,
                        keep_images: bool = False,
                        **making: Unpack[MakingOptions]) -> Generator[ResultObject, None, ResultObjects]:
    """The result objects of ``record`` (``kinds``, default all), made here one task after the other; each
    validated (``ExportRefused`` when one fails). A generator: it yields each object once it is final, and returns
    the whole set. With ``keep_images`` the page images stay in the set (``page_images``)."""
    started = time.perf_counter()
    sources, repairs = prepare(record, current, prior, making.get("options"), making.get("predecessor"),
                               making.get("uids"))
    made: list[Made] = []
    for task in plan(sources, making.get("kinds"), split=False):
        if keep_images and task.kind == "sc":
            task = MakingTask(task.kind, task.label, task.function, task.sources, (*task.arguments, True))
        part = task.run()
        made.append(part)
        yield from part.objects
    return assemble(made, repairs, {"all": time.perf_counter() - started})


def build_result_objects(record: ReasoningRecord, current: Sequence[Dataset], prior: Sequence[Dataset] = (),
                         **making: Unpack[MakingOptions]) -> ResultObjects:
    """Every result object of ``record``, all made (see ``make_result_objects``); the page images are kept."""
    objects = make_result_objects(record, current, prior, keep_images=True, **making)
    while True:
        try:
            next(objects)
        except StopIteration as done:
            return done.value


def warm_up() -> None:
    """Import and load what page making needs (fonts), so a fresh page process answers its first study fast."""
    from sr_writer.page import Faces

    Faces(OutputOptions().body_font_px)
