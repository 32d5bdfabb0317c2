"""`cxr-node render`: a reasoning record + its source images -> SR, SC reasoning pages and PNG copies."""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import pydicom
from pydicom.dataset import Dataset


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = subparsers.add_parser(
        "render",
        help="write the SR and SC reasoning pages (+ PNG copies) for a reasoning record",
        description="Render a reasoning record (JSON) against its source DICOM files into a TID 1500 SR, one "
        "Secondary Capture per reasoning page and a PNG of each page; every object is validated with dciodvfy.",
    )
    p.add_argument("record", type=Path, help="reasoning record JSON (inference.record.ReasoningRecord)")
    p.add_argument("--sources", type=Path, nargs="+", required=True, metavar="FILE",
                   help="DICOM files of the study (files of another study count as prior)")
    p.add_argument("--prior", type=Path, nargs="*", default=[], metavar="FILE", help="DICOM files of the prior study")
    p.add_argument("--predecessor", type=Path, metavar="SR", help="earlier SR of this study that this one amends")
    p.add_argument("--out", type=Path, required=True, metavar="DIR", help="output directory")
    p.add_argument("--sr-series-number", type=int, help="series number of the SR")
    p.add_argument("--sc-series-number", type=int, help="series number of the SC pages")
    p.add_argument("--no-validate", action="store_true", help="skip dciodvfy (objects are then not checked)")
    p.set_defaults(func=run)


def _read(paths: list[Path]) -> list[Dataset]:
    return [pydicom.dcmread(path) for path in paths]


def run(args: argparse.Namespace) -> int:
    from dataclasses import replace

    from inference.record import ReasoningRecord
    from sr_writer import ExportRefused, OutputOptions, build_result_objects

    try:
        record = ReasoningRecord.load(args.record)
        sources = _read(args.sources)
        prior = _read(args.prior)
        predecessor = pydicom.dcmread(args.predecessor) if args.predecessor else None
    except Exception as exc:  # any unreadable input gets one clear line
        print(f"cxr-node render: error: cannot read input: {exc}", file=sys.stderr)
        return 2
    current = [ds for ds in sources if str(ds.StudyInstanceUID) == record.study_instance_uid]
    prior += [ds for ds in sources if str(ds.StudyInstanceUID) != record.study_instance_uid]
    if not current:
        print(f"cxr-node render: error: no source file belongs to study {record.study_instance_uid}", file=sys.stderr)
        return 2
    order = {ref.sop_instance_uid: ref.index for ref in record.images}
    current.sort(key=lambda ds: order.get(str(ds.SOPInstanceUID), len(order)))

    options = OutputOptions(validate=not args.no_validate)
    if args.sr_series_number is not None:
        options = replace(options, sr_series_number=args.sr_series_number)
    if args.sc_series_number is not None:
        options = replace(options, sc_series_number=args.sc_series_number)
    try:
        result = build_result_objects(record, current, prior, options=options, predecessor=predecessor)
    except ExportRefused as exc:
        print(f"cxr-node render: refused: {exc.what} failed validation:", file=sys.stderr)
        for reason in exc.reasons:
            print(f"  {reason}", file=sys.stderr)
        return 3

    args.out.mkdir(parents=True, exist_ok=True)
    written = [args.out / "sr.dcm"]
    result.sr.save_as(written[0], enforce_file_format=True)
    for number, (page, image) in enumerate(zip(result.pages, result.page_images, strict=False), start=1):
        dcm, png = args.out / f"page-{number:02d}.dcm", args.out / f"page-{number:02d}.png"
        page.save_as(dcm, enforce_file_format=True)
        image.save(png)
        written += [dcm, png]
    warnings = sum(len(r.warnings) for r in result.reports.values())
    unexpected = sorted({w for r in result.reports.values() for w in r.unexpected_warnings})
    for path in written:
        print(path)
    print(f"{len(result.pages)} page(s); dciodvfy: 0 errors, {warnings} warnings ({len(unexpected)} unexpected)"
          if result.reports else f"{len(result.pages)} page(s); not validated", file=sys.stderr)
    for warning in unexpected:
        print(f"  {warning}", file=sys.stderr)
    return 0
