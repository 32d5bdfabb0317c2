"""Result objects: the TID 1500 Structured Report and the Secondary Capture reasoning pages, one registered result
kind each (:mod:`sr_writer.kinds`).

Pure core: a reasoning record and source datasets in, validated result objects out. Never imports ``dicomnode``.
"""
from sr_writer.api import ResultObjects, assemble, build_result_objects, make_result_objects, plan, prepare
from sr_writer.kinds import ResultObject, ResultUids, Sources, kind_names, result_kind
from sr_writer.options import OutputOptions
from sr_writer.validate import ExportRefused, ValidationReport, ensure_valid, validate

__all__ = [
    "ExportRefused",
    "OutputOptions",
    "ResultObject",
    "ResultObjects",
    "ResultUids",
    "Sources",
    "ValidationReport",
    "assemble",
    "build_result_objects",
    "ensure_valid",
    "kind_names",
    "make_result_objects",
    "plan",
    "prepare",
    "result_kind",
    "validate",
]
