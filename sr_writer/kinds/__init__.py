"""The result kinds the node can make, each registered once: ``sr`` (the Structured Report) and ``sc`` (the
reasoning pages). A new kind is one module with a :class:`ResultKind` and one :func:`register_kind` line below;
``output.objects`` and a destination's ``objects`` accept exactly the registered names.
"""
from __future__ import annotations

from sr_writer.kinds.base import Made, MakingTask, ResultKind, ResultObject, ResultUids, Sources, run_task
from sr_writer.kinds.reasoning_pages import ReasoningPagesKind
from sr_writer.kinds.structured_report import StructuredReportKind

_KINDS: dict[str, ResultKind] = {}


def register_kind(kind: ResultKind) -> ResultKind:
    """Make ``kind`` known by its name (a second kind of the same name is an error)."""
    if kind.name in _KINDS and _KINDS[kind.name] is not kind:
        raise ValueError(f"result kind {kind.name!r} is registered already")
    _KINDS[kind.name] = kind
    return kind


def result_kind(name: str) -> ResultKind:
    """The kind called ``name``; KeyError names the known ones."""
    try:
        return _KINDS[name]
    except KeyError:
        raise KeyError(f"unknown result kind {name!r} (known: {', '.join(kind_names())})") from None


def kind_names() -> list[str]:
    """The registered kinds' names, in the order they are made."""
    return list(_KINDS)


def kind_of_sop_class(sop_class_uid: str) -> str | None:
    """The name of the kind whose SOP classes include ``sop_class_uid``; None when no kind has it."""
    return next((kind.name for kind in _KINDS.values() if sop_class_uid in kind.sop_classes), None)


register_kind(StructuredReportKind())
register_kind(ReasoningPagesKind())

__all__ = ["Made", "MakingTask", "ResultKind", "ResultObject", "ResultUids", "Sources", "kind_names",
           "kind_of_sop_class", "register_kind", "result_kind", "run_task"]
