"""What every result kind is made of: the sources it is made from, the tasks that make it, the objects it yields.

A result kind (the SR, the reasoning pages, ...) is a :class:`ResultKind`: it names itself (the word admins write
in ``output.objects`` and a destination's ``objects``), says which SOP classes are its own, and splits its work
into :class:`MakingTask` s. A task is a module-level function and its arguments, so that it can run in this process
or in a page process (pickled); it returns :class:`Made`: validated, final :class:`ResultObject` s.
"""
from __future__ import annotations

import datetime as dt
import io
from abc import ABC, abstractmethod
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from PIL import Image
from pydicom import Dataset, dcmread
from pydicom.uid import PYDICOM_ROOT_UID, generate_uid

from inference.record import ReasoningRecord
from sr_writer.options import OutputOptions
from sr_writer.page import Panel
from sr_writer.validate import ValidationReport


@dataclass(frozen=True)
class Identity:
    """What the node files a result object under, read once from its dataset when it is made."""

    sop_instance_uid: str
    sop_class_uid: str
    series_instance_uid: str
    instance_number: int | None

    @classmethod
    def of(cls, ds: Dataset) -> Identity:
        number = ds.get("InstanceNumber")
        return cls(str(ds.SOPInstanceUID), str(ds.SOPClassUID), str(ds.get("SeriesInstanceUID", "")),
                   int(number) if number not in (None, "") else None)


class ResultObject:
    """One result dataset; ``kind`` picks the destinations that take it.

    ``data`` is its Part-10 encoding once made (and validated). An object made in another process travels as its
    bytes and its :class:`Identity` (much faster than a pickled dataset of thousands of elements, and the receiver
    does not parse the bytes to file and queue it); ``dataset`` and ``header`` are read from the bytes only when
    something asks for more than the identity."""

    def __init__(self, kind: str, dataset: Dataset | None = None, data: bytes | None = None,
                 report: ValidationReport | None = None) -> None:
        if dataset is None and data is None:
            raise ValueError("a result object needs its dataset or its Part-10 bytes")
        self.kind = kind
        self._dataset = dataset
        self._header: Dataset | None = None
        self.data = data
        self.report = report
        self._identity: Identity | None = None  # set when pickled (the bytes travel without the dataset)

    @property
    def dataset(self) -> Dataset:
        if self._dataset is None:
            assert self.data is not None
            self._dataset = dcmread(io.BytesIO(self.data))
        return self._dataset

    @property
    def header(self) -> Dataset:
        """The dataset, or (made elsewhere) its header read from the bytes without the pixel data."""
        if self._dataset is not None:
            return self._dataset
        if self._header is None:
            assert self.data is not None
            self._header = dcmread(io.BytesIO(self.data), stop_before_pixels=True)
        return self._header

    @property
    def identity(self) -> Identity:
        """UIDs and instance number: of the dataset when it is here, else as it was when pickled (or read from the
        bytes)."""
        if self._dataset is not None:
            return Identity.of(self._dataset)
        if self._identity is None:
            self._identity = Identity.of(self.header)
        return self._identity

    @property
    def sop_instance_uid(self) -> str:
        return self.identity.sop_instance_uid

    @property
    def sop_class_uid(self) -> str:
        return self.identity.sop_class_uid

    @property
    def series_instance_uid(self) -> str:
        return self.identity.series_instance_uid

    def __getstate__(self) -> dict[str, Any]:
        state = dict(self.__dict__)
        if state["data"] is not None:
            state["_identity"] = self.identity
            state["_dataset"] = state["_header"] = None
        return state

    def __repr__(self) -> str:
        return f"ResultObject({self.kind!r}, {self.sop_instance_uid})"


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


@dataclass(frozen=True)
class Sources:
    """What a result set is made from: the record and the sources' checked headers (no pixel data), the first
    page's image decoded once (``panel``), and the set's identities (``uids``, ``made_at``)."""

    record: ReasoningRecord
    current: list[Dataset]
    prior: list[Dataset]
    options: OutputOptions
    uids: ResultUids
    made_at: dt.datetime
    predecessor: Dataset | None = None  # the SR this set amends
    panel: Panel | None = None
    inherited: frozenset[str] = frozenset()  # invalid UIDs the sources hand on; tolerated by the validation

    def without_panel(self) -> Sources:
        """These sources for a task that does not draw the first page (the panel is the one large part)."""
        if self.panel is None:
            return self
        return Sources(self.record, self.current, self.prior, self.options, self.uids, self.made_at,
                       self.predecessor, None, self.inherited)


@dataclass
class Made:
    """What one task made: objects (validated, final), where its time went, and the page images when kept."""

    objects: list[ResultObject]
    seconds: dict[str, float] = field(default_factory=dict)
    images: list[Image.Image] = field(default_factory=list)


@dataclass(frozen=True)
class MakingTask:
    """``function(sources, *arguments) -> Made``; ``function`` is a module-level function (picklable)."""

    kind: str
    label: str  # e.g. "sr", "pages 1-1": names the task in timings and errors
    function: Callable[..., Made]
    sources: Sources
    arguments: tuple[Any, ...] = ()

    def run(self) -> Made:
        return self.function(self.sources, *self.arguments)


def run_task(task: MakingTask) -> Made:
    """Run one task (what a page process is given)."""
    return task.run()


@dataclass(frozen=True)
class ResultKind(ABC):
    """A kind of result object: its config word, title, SOP classes and how its work is split into tasks (a kind
    subclasses it, giving the three to this constructor)."""

    name: str
    title: str
    sop_classes: frozenset[str]

    @abstractmethod
    def tasks(self, sources: Sources, split: bool = True) -> Sequence[MakingTask]:
        """The tasks that make this kind; ``split``: in parts that can run side by side and each yield early
        (page processes), else in as few tasks as suit one process."""
