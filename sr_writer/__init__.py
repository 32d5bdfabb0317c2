"""Result objects: the TID 1500 Structured Report and the Secondary Capture reasoning page.

Pure core: a reasoning record and source datasets in, pydicom datasets out. Never imports ``dicomnode``.
"""
from sr_writer.api import FinishedObject, ResultObjects, ResultUids, build_result_objects, make_result_objects
from sr_writer.options import OutputOptions
from sr_writer.validate import ExportRefused, ValidationReport, ensure_valid, validate

__all__ = [
    "ExportRefused",
    "FinishedObject",
    "OutputOptions",
    "ResultObjects",
    "ResultUids",
    "ValidationReport",
    "build_result_objects",
    "ensure_valid",
    "make_result_objects",
    "validate",
]
