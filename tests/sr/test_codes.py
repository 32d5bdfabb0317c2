"""The finding-code table: every key present, every code verified or flagged."""
from __future__ import annotations

import pytest
import yaml
from pydicom.sr.codedict import codes

from dicomnode.demo.records import FINDING_LABELS
from inference.stages import DEFAULT_STAGES_PATH
from sr_writer.codes import TABLE_PATH, CodeTableError, load_table, parse_table


def test_every_finding_key_is_mapped_to_a_code_with_a_source() -> None:
    table = load_table()
    assert set(table.findings) == set(FINDING_LABELS)
    for key, entry in table.findings.items():
        assert entry.source and entry.code is not None, key
        assert entry.code.scheme_designator in ("SCT", "DCM", "RADLEX"), key
        if not entry.source.startswith("pydicom.sr.codedict"):
            assert "http" in entry.source, f"{key}: a code not in pydicom's dictionary cites a published source"
    assert table.structure["procedure_reported"] == codes.SCT.ImagingProcedure  # in CID 100
    assert "finding_text" not in table.structure  # DCM 121071 is never a TEXT item's name


@pytest.mark.parametrize(("finding", "code"), [
    ("lung_lesion", "site"),  # finding sites must be in pydicom's dictionary
    ("pneumothorax", "code"),  # a code that differs from its cited codedict entry
])
def test_a_code_not_in_pydicoms_dictionary_is_refused(finding: str, code: str) -> None:
    data = yaml.safe_load(TABLE_PATH.read_text(encoding="utf-8"))
    data["findings"][finding][code]["value"] = "99999999"
    with pytest.raises(CodeTableError, match=finding):
        parse_table(data)


def test_codedict_sourced_codes_match_pydicom() -> None:
    table = load_table()
    assert table.findings["pneumothorax"].code == codes.SCT.Pneumothorax
    assert table.findings["pleural_effusion"].code == codes.SCT.PleuralEffusion
    assert table.findings["cardiomegaly"].code == codes.SCT.Cardiomegaly
    assert table.presence["present"] == codes.SCT.Present
    assert table.presence["absent"] == codes.SCT.Absent


def test_an_entry_without_source_or_code_is_refused() -> None:
    data = yaml.safe_load(TABLE_PATH.read_text(encoding="utf-8"))
    del data["findings"]["consolidation"]["source"]
    with pytest.raises(CodeTableError, match="consolidation"):
        parse_table(data)
    data = yaml.safe_load(TABLE_PATH.read_text(encoding="utf-8"))
    data["findings"]["fracture"]["code"] = None
    with pytest.raises(CodeTableError, match="fracture"):
        parse_table(data)


def test_table_covers_the_stage_book_checklist_and_anatomy() -> None:
    book = yaml.safe_load(DEFAULT_STAGES_PATH.read_text(encoding="utf-8"))
    table = load_table()
    assert {f["key"] for f in book["findings"]} == set(table.findings)
    assert {a["key"] for a in book.get("anatomy", [])} <= set(table.anatomy)
