"""The answer parser reproduces the gold structured values of the 80 CXRTrek demo studies and flags bad answers."""
from __future__ import annotations

import json
from pathlib import Path

import pytest

from inference.chat import BoxConvention
from inference.parsing import (
    ImageGeometry,
    image_number_from_question,
    options_from_question,
    parse_answer,
    qtype_from_cxrtrek,
)
from inference.record import QType

DEMO = Path(__file__).resolve().parents[1] / "data" / "cxrtrek" / "cxrtrek_demo_80.json"
GEOMETRY = (ImageGeometry(0, columns=400, rows=500), ImageGeometry(1, columns=300, rows=200))


def _items() -> list[dict]:
    return [it for study in json.loads(DEMO.read_text()) for it in study["cxrtrek_data"]["content"]]


ITEMS = _items()


def _by_qtype(*qtypes: QType) -> list[dict]:
    return [it for it in ITEMS if qtype_from_cxrtrek(it["qtype"]) in qtypes]


def test_demo_covers_every_qtype() -> None:
    assert len(ITEMS) > 2000
    assert {qtype_from_cxrtrek(it["qtype"]) for it in ITEMS} == set(QType)


def test_every_demo_answer_parses() -> None:
    failures = []
    for it in ITEMS:
        parsed = parse_answer(it["answer"], qtype_from_cxrtrek(it["qtype"]), it.get("option_list", ()),
                              images=GEOMETRY, default_image_index=it.get("image_id", 1) - 1)
        if not parsed.ok:
            failures.append((it["answer"], parsed.error))
    assert failures == []


def test_yes_no_matches_gold() -> None:
    items = _by_qtype(QType.YES_NO)
    assert len(items) > 400
    for it in items:
        parsed = parse_answer(it["answer"], QType.YES_NO)
        assert parsed.ok, it["answer"]
        assert parsed.yes_no is it["answer"].lower().startswith("yes"), it["answer"]
        rest = it["answer"].split(".", 1)[1].strip() if "." in it["answer"] else ""
        assert parsed.justification == (rest or None)


def test_choices_match_gold_answer_list() -> None:
    items = [it for it in ITEMS if "answer_list" in it]
    assert len(items) > 250
    for it in items:
        parsed = parse_answer(it["answer"], qtype_from_cxrtrek(it["qtype"]), it["option_list"])
        assert parsed.ok, (it["answer"], parsed.error)
        assert parsed.choices == it["answer_list"], it["answer"]


def test_boxes_match_gold_bbox_list() -> None:
    items = _by_qtype(QType.DETECTION)
    assert len(items) > 350
    for it in items:
        index = it["image_id"] - 1
        parsed = parse_answer(it["answer"], QType.DETECTION, images=GEOMETRY, default_image_index=index)
        assert parsed.ok, (it["answer"], parsed.error)
        assert [list(b.raw) for b in parsed.boxes] == it["bbox_list"]
        box = parsed.boxes[0]
        geometry = GEOMETRY[index]
        x1, y1, x2, y2 = it["bbox_list"][0]
        assert box.image_index == index
        assert box.normalized == pytest.approx((x1 / 100, y1 / 100, x2 / 100, y2 / 100))
        assert box.pixels == pytest.approx(
            (x1 / 100 * geometry.columns, y1 / 100 * geometry.rows, x2 / 100 * geometry.columns,
             y2 / 100 * geometry.rows), abs=0.01)
        assert box.target and box.target in it["answer"]


def test_image_number_from_question_matches_gold_image_id() -> None:
    for it in _by_qtype(QType.DETECTION):
        assert (image_number_from_question(it["question"]) or 1) == it["image_id"], it["question"]


def test_options_from_question_mostly_match_option_list() -> None:
    items = [it for it in ITEMS if "option_list" in it]
    same = sum(
        [o.rstrip(".") for o in options_from_question(it["question"])] == [o.rstrip(".") for o in it["option_list"]]
        for it in items
    )
    assert same >= 0.97 * len(items)


def test_qtype_mapping() -> None:
    assert qtype_from_cxrtrek("captioning") is QType.OPEN
    assert qtype_from_cxrtrek("multi-choice-4") is QType.MULTI_CHOICE
    assert qtype_from_cxrtrek("single-choice") is QType.SINGLE_CHOICE
    with pytest.raises(ValueError):
        qtype_from_cxrtrek("essay")


@pytest.mark.parametrize(
    ("answer", "options", "expected"),
    [
        ("B. Lines. and C. Tubes.", ["A. None of all.", "B. Lines.", "C. Tubes.", "D. Ecmo cannulae."],
         ["B. Lines.", "C. Tubes."]),
        ("A. X, B. Y.", ["A. X", "B. Y", "C. Z"], ["A. X", "B. Y"]),
        ("3. An increasing effusion.", ["1. Stable.", "2. Decreasing.", "3. An increasing effusion."],
         ["3. An increasing effusion."]),
        ("Yes.", ["A. No.", "B. Yes."], ["B. Yes."]),
        ("B", ["Posterior-anterior", "Antero-posterior", "Lateral"], ["Antero-posterior"]),
        ("A. Posterior-anterior. It is a PA film.", ["Posterior-anterior", "Antero-posterior"],
         ["Posterior-anterior"]),
        ("Mild cardiomegaly.", ["A. Cardiomegaly", "B. Mild cardiomegaly"], ["B. Mild cardiomegaly"]),
    ],
)
def test_choice_formats(answer: str, options: list[str], expected: list[str]) -> None:
    parsed = parse_answer(answer, QType.MULTI_CHOICE, options)
    assert parsed.ok, parsed.error
    assert parsed.choices == expected


# From CXRTrek (held-out item and this demo set): the answer names option B by its letter but says "considered as"
# where the option says "described as".
EFFUSION_OPTIONS = ["A. Atelectasis is bilateral and slightly more extensive than on the previous image.",
                    "B. The pleural effusion is described as small, with blunting of the right costophrenic angle.",
                    "C. Unspecified."]
PARAPHRASED_B = "B. The pleural effusion is considered as small, with blunting of the right costophrenic angle."


@pytest.mark.parametrize(
    ("answer", "qtype", "expected"),
    [
        (PARAPHRASED_B, QType.SINGLE_CHOICE, [EFFUSION_OPTIONS[1]]),
        # multi-choice: A verbatim, B paraphrased -> both (text matching alone found only A: F1 0.67)
        (f"{EFFUSION_OPTIONS[0]} {PARAPHRASED_B}", QType.MULTI_CHOICE, EFFUSION_OPTIONS[:2]),
        (f"{EFFUSION_OPTIONS[0][:-1]}; {PARAPHRASED_B}", QType.MULTI_CHOICE, EFFUSION_OPTIONS[:2]),
        # the letter decides even when the text is another option's
        ("C. Atelectasis is bilateral and slightly more extensive than on the previous image.", QType.SINGLE_CHOICE,
         [EFFUSION_OPTIONS[2]]),
    ],
)
def test_letter_decides_over_paraphrased_text(answer: str, qtype: QType, expected: list[str]) -> None:
    parsed = parse_answer(answer, qtype, EFFUSION_OPTIONS)
    assert parsed.ok, parsed.error
    assert parsed.choices == expected


def test_labels_inside_sentences_are_not_choices() -> None:
    options = ["1. Right pleura.", "2. Left pleura.", "3. Subarachnoid space."]
    assert parse_answer("Left pleura, grade 2. Small.", QType.SINGLE_CHOICE, options).choices == ["2. Left pleura."]
    assert parse_answer("Z. Something else.", QType.SINGLE_CHOICE, EFFUSION_OPTIONS).ok is False


def test_think_answer_wrapper_and_justification() -> None:
    raw = "<think>Lungs look clear.\nNo pleural line.</think><answer>No. There is no pneumothorax.</answer>"
    parsed = parse_answer(raw, QType.YES_NO, wrapper="think_answer")
    assert parsed.ok and parsed.yes_no is False
    assert parsed.think == "Lungs look clear.\nNo pleural line."
    assert parsed.text == "No. There is no pneumothorax."
    assert parsed.justification == "There is no pneumothorax."


def test_several_boxes_with_image_ids_and_conventions() -> None:
    raw = ("<|ref|> heart <|/ref|> <|box|>(250, 400), (750, 800)<|/box|> and in image 2 "
           "<|ref|> pleural effusion <|/ref|> <|box|>(0, 500), (500, 1000)<|/box|>"
           "<|box|>(600, 500), (1000, 900)<|/box|>")
    parsed = parse_answer(raw, QType.DETECTION, box_convention=BoxConvention.PER_MILLE, images=GEOMETRY)
    assert parsed.ok, parsed.error
    assert [(b.target, b.image_index) for b in parsed.boxes] == [
        ("heart", 0), ("pleural effusion", 1), ("pleural effusion", 1)]
    assert parsed.boxes[0].pixels == pytest.approx((100, 200, 300, 400))
    assert parsed.boxes[2].normalized == pytest.approx((0.6, 0.5, 1.0, 0.9))
    assert parsed.boxes[2].pixels == pytest.approx((180, 100, 300, 180))


def test_resized_pixel_boxes_use_model_size() -> None:
    images = [ImageGeometry(3, columns=1000, rows=800, model_width=250, model_height=200)]
    raw = '```json\n[{"bbox_2d": [50, 20, 150, 100], "label": "right lung"}]\n```'
    parsed = parse_answer(raw, QType.DETECTION, box_convention=BoxConvention.RESIZED_PIXELS, images=images,
                          default_image_index=3)
    assert parsed.ok, parsed.error
    box = parsed.boxes[0]
    assert (box.target, box.image_index) == ("right lung", 3)
    assert box.normalized == pytest.approx((0.2, 0.1, 0.6, 0.5))
    assert box.pixels == pytest.approx((200, 80, 600, 400))
    missing = parse_answer(raw, QType.DETECTION, box_convention=BoxConvention.RESIZED_PIXELS,
                           images=[ImageGeometry(3, 1000, 800)], default_image_index=3)
    assert not missing.ok and "model input size" in (missing.error or "")


def test_bare_box_gets_default_target() -> None:
    parsed = parse_answer("The heart is at (10.0, 20.0), (30.0, 40.0).", QType.DETECTION, images=GEOMETRY,
                          default_target="heart")
    assert parsed.ok and parsed.boxes[0].target == "heart" and parsed.boxes[0].raw == (10, 20, 30, 40)


@pytest.mark.parametrize(
    ("raw", "qtype", "options", "error"),
    [
        ("", QType.OPEN, (), "empty"),
        ("Possibly, it is hard to say.", QType.YES_NO, (), "yes or no"),
        ("Maybe the heart is big.", QType.SINGLE_CHOICE, ["A. Small.", "B. Normal."], "no option"),
        ("A. Small. B. Normal.", QType.SINGLE_CHOICE, ["A. Small.", "B. Normal."], "single-choice"),
        ("A.", QType.SINGLE_CHOICE, (), "without options"),
        ("There is no box here.", QType.DETECTION, (), "no box"),
        ("<|ref|> heart <|/ref|> <|box|>(10, 20), (180, 40)<|/box|>", QType.DETECTION, (), "outside"),
        ("<|ref|> heart <|/ref|> in image 5 <|box|>(10, 20), (18, 40)<|/box|>", QType.DETECTION, (), "image 5"),
        ("<think>The lungs are", QType.YES_NO, (), "unterminated"),
    ],
)
def test_malformed_answers_are_flagged_and_kept(raw: str, qtype: QType, options: list[str], error: str) -> None:
    parsed = parse_answer(raw, qtype, options, images=GEOMETRY)
    assert not parsed.ok
    assert error in (parsed.error or "")
    if raw and not raw.startswith("<think>"):
        assert parsed.text == raw.strip()


def test_parser_never_raises_on_garbage() -> None:
    for raw in ["\x00\x01", "<answer>", "<|box|>(1e9999, 2)", "(" * 1000, "Yes" * 10000]:
        for qtype in QType:
            parse_answer(raw, qtype, ["A. x", "B. y"], images=GEOMETRY)
