"""Batch mode: reason over a folder of DICOM files offline, grouped by study, writing SR, SC and page PNGs.

No network and no database: the same reasoning processor the node runs, applied to files on disk. Each study gets
``OUT/<StudyInstanceUID>/`` with ``sr.dcm``, ``sc-<n>.dcm``, ``page-<n>.png`` and ``record.json``; a study that
fails gets ``error.txt`` with the reason and the batch carries on.
"""
from __future__ import annotations

import logging
from collections import defaultdict
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path

import pydicom
from pydicom.dataset import Dataset

from dicomnode.reasoning import ReasoningProcessor
from dicomnode.uids import is_valid_uid

log = logging.getLogger(__name__)


@dataclass
class StudyOutcome:
    study_instance_uid: str
    out_dir: Path
    ok: bool
    error: str = ""
    pages: int = 0


def group_by_study(paths: Iterable[Path]) -> tuple[dict[str, list[Path]], list[tuple[Path, str]]]:
    """DICOM image files by Study Instance UID, and the files left out with the reason."""
    studies: dict[str, list[Path]] = defaultdict(list)
    skipped: list[tuple[Path, str]] = []
    for path in sorted(paths):
        if not path.is_file():
            continue
        try:
            ds = pydicom.dcmread(path, stop_before_pixels=True, specific_tags=["StudyInstanceUID", "PixelData"])
        except Exception as exc:
            skipped.append((path, f"not readable as DICOM: {exc}"))
            continue
        uid = str(ds.get("StudyInstanceUID", ""))
        if not is_valid_uid(uid):
            skipped.append((path, "missing or invalid Study Instance UID"))
            continue
        studies[uid].append(path)
    return dict(studies), skipped


def _write(ds: Dataset, path: Path) -> None:
    ds.save_as(path, enforce_file_format=True)


def run_batch(studies: dict[str, list[Path]], processor: ReasoningProcessor, out_dir: Path,
              progress: Callable[[str], None] | None = None) -> list[StudyOutcome]:
    """Process every study of ``studies`` (from :func:`group_by_study`); ``progress(study_uid)`` after each."""
    from dicomnode.reasoning import read_datasets
    from sr_writer import build_result_objects

    outcomes = []
    for uid, paths in studies.items():
        study_dir = out_dir / uid
        study_dir.mkdir(parents=True, exist_ok=True)
        try:
            current = read_datasets(paths)
            if not current:
                raise ValueError("no image instance with pixel data")
            record = processor.reason(current)
            objects = build_result_objects(record, current, options=processor.options)
            (study_dir / "record.json").write_text(record.to_json(), encoding="utf-8")
            _write(objects.sr, study_dir / "sr.dcm")
            for n, (page, image) in enumerate(zip(objects.pages, objects.page_images, strict=False), start=1):
                _write(page, study_dir / f"sc-{n}.dcm")
                image.save(study_dir / f"page-{n}.png")
            outcomes.append(StudyOutcome(uid, study_dir, True, pages=len(objects.pages)))
        except Exception as exc:  # one bad study never stops the batch
            log.exception("batch: study failed")
            (study_dir / "error.txt").write_text(f"{type(exc).__name__}: {exc}\n", encoding="utf-8")
            outcomes.append(StudyOutcome(uid, study_dir, False, error=f"{type(exc).__name__}: {exc}"))
        if progress:
            progress(uid)
    return outcomes
