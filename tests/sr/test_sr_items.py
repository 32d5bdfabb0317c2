"""The stage containers are built as plain datasets (fast) instead of highdicom's content items: they must carry
the same elements, in the same order, with the same values and VRs."""
from __future__ import annotations

from pydicom.dataset import Dataset

from sr_writer.codes import load_table
from sr_writer.sr import _container, _plain_container, _plain_text, _text


def _elements(ds: Dataset) -> list[tuple[int, str, object]]:
    out: list[tuple[int, str, object]] = []
    for element in ds:
        if element.VR == "SQ":
            out.append((int(element.tag), "SQ", [_elements(item) for item in element.value]))
        else:
            out.append((int(element.tag), element.VR, element.value))
    return out


def test_plain_text_is_highdicoms_text_item() -> None:
    table = load_table()
    private = table.private
    for name, value in ((private["answer"], "Yes. A small apical pneumothorax."), (table.structure["comment"], "   "),
                        (private["question"], "Is there 气胸? Options: A | B")):
        assert _elements(_plain_text(name, value)) == _elements(_text(name, value))


def test_plain_container_is_highdicoms_container() -> None:
    name = load_table().private["question_answer"]
    plain, made = _plain_container(name), _container(name)
    assert _elements(plain) == _elements(made)
    plain.ContentSequence.append(_plain_text(name, "x"))
    made.ContentSequence.append(_text(name, "x"))
    assert _elements(plain) == _elements(made)
