"""`cxr-node render RECORD.json --sources ... --out DIR` writes the SR, the SC pages and PNG copies."""
from __future__ import annotations

from pathlib import Path

import pydicom
from PIL import Image

from dicomnode.cli import main
from dicomnode.demo.records import make_record
from dicomnode.demo.synthetic import prior_spec, write_study
from tests.sr.conftest import small_spec


def test_render_writes_sr_pages_and_pngs(tmp_path: Path, capsys) -> None:
    spec = small_spec(patient_name="Παπαδόπουλος^Νίκος")
    current = write_study(tmp_path / "current", spec)
    prior = write_study(tmp_path / "prior", prior_spec(spec))
    record = make_record([pydicom.dcmread(p) for p in current], [pydicom.dcmread(p) for p in prior],
                         positive=("edema",), language="el")
    record_path = tmp_path / "record.json"
    record_path.write_text(record.to_json(), encoding="utf-8")

    out = tmp_path / "out"
    code = main(["render", str(record_path), "--sources", *map(str, current + prior), "--out", str(out),
                 "--sr-series-number", "77"])
    assert code == 0, capsys.readouterr().err
    sr = pydicom.dcmread(out / "sr.dcm")
    assert sr.SeriesNumber == 77 and "PertinentOtherEvidenceSequence" in sr  # prior found among --sources
    pages = sorted(out.glob("page-*.dcm"))
    pngs = sorted(out.glob("page-*.png"))
    assert len(pages) == len(pngs) >= 1
    for dcm, png in zip(pages, pngs, strict=False):
        ds = pydicom.dcmread(dcm)
        assert ds.BurnedInAnnotation == "YES"
        assert Image.open(png).size == (ds.Columns, ds.Rows)
    assert "0 errors" in capsys.readouterr().err


def test_render_refuses_sources_of_another_study(tmp_path: Path, capsys) -> None:
    current = write_study(tmp_path / "a", small_spec())
    other = write_study(tmp_path / "b", small_spec())
    record = make_record([pydicom.dcmread(p) for p in current])
    record_path = tmp_path / "record.json"
    record_path.write_text(record.to_json(), encoding="utf-8")
    code = main(["render", str(record_path), "--sources", *map(str, other), "--out", str(tmp_path / "out")])
    assert code == 2
    assert "no source file belongs to study" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()
