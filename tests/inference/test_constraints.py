"""Closed answers constrained at decoding: the grammars parse, and the untrained demo model's constrained answers
always parse (also past a tight budget, with and without the prefix cache); open questions stay free."""
from __future__ import annotations

from pathlib import Path

import pytest
from PIL import Image

from inference.chat import BoxConvention, Turn
from inference.constraints import constraint_for, int_upto_pattern
from inference.parsing import ImageGeometry, parse_answer
from inference.record import QType

OPTIONS = ["Lines.", "Tubes.", "Nothing."]
LABELLED = ["1. Diaphragm.", "2. Subcutaneous tissue.", "3. The bilateral upper lobes."]


@pytest.mark.parametrize("limit", [0, 7, 9, 10, 99, 100, 447, 1000, 1003])
def test_int_upto_pattern_matches_exactly_zero_to_limit(limit: int) -> None:
    import regex

    rx = regex.compile(int_upto_pattern(limit))
    for n in range(0, limit + 40):
        assert (rx.fullmatch(str(n)) is not None) == (n <= limit), n
    assert rx.fullmatch("01") is None and rx.fullmatch("") is None


def test_grammars_accept_the_answers_the_parser_reads() -> None:
    yes_no = constraint_for(QType.YES_NO)
    assert yes_no and yes_no.complete("Yes.") and yes_no.free("No. The heart is normal.")
    assert yes_no.viable("Ye") and not yes_no.viable("Yesterday") and not yes_no.viable(" Yes")

    single = constraint_for(QType.SINGLE_CHOICE, OPTIONS)
    assert single and single.choices == ("A. Lines.", "B. Tubes.", "C. Nothing.")
    assert single.structured_outputs() == {"choice": list(single.choices)}
    for choice in single.choices:
        parsed = parse_answer(choice, QType.SINGLE_CHOICE, OPTIONS)
        assert parsed.ok and len(parsed.choices) == 1

    multi = constraint_for(QType.MULTI_CHOICE, LABELLED)
    assert multi and multi.complete("1. Diaphragm, 3. The bilateral upper lobes.")
    assert not multi.viable("4. ") and multi.viable("3. The bil")
    parsed = parse_answer("1. Diaphragm, 3. The bilateral upper lobes.", QType.MULTI_CHOICE, LABELLED)
    assert parsed.ok and parsed.choices == [LABELLED[0], LABELLED[2]]
    assert "regex" in multi.structured_outputs()

    percent = constraint_for(QType.DETECTION, box_convention=BoxConvention.PERCENT, target="cardiac silhouette")
    answer = "<|ref|> cardiac silhouette <|/ref|> <|box|>(36.16, 48.66), (73.66, 73.21)<|/box|>."
    assert percent and percent.complete(answer) and not percent.viable("<|box|>(101")
    assert percent.complete(answer.split("<|/ref|> ")[1]) and not percent.viable("<|ref|> lung")
    assert parse_answer(answer, QType.DETECTION, box_convention=BoxConvention.PERCENT).ok

    pixels = constraint_for(QType.DETECTION, box_convention=BoxConvention.RESIZED_PIXELS, model_size=(140, 168))
    assert pixels and pixels.complete("<|box|>(0, 12), (140, 168)<|/box|>")
    assert not pixels.viable("<|box|>(141") and not pixels.viable("<|box|>(10, 169")
    geometry = [ImageGeometry(0, 400, 480, 140, 168)]
    assert parse_answer("<|box|>(0, 12), (140, 168)<|/box|>", QType.DETECTION,
                        box_convention=BoxConvention.RESIZED_PIXELS, images=geometry).ok

    assert constraint_for(QType.OPEN) is None
    assert constraint_for(QType.SINGLE_CHOICE, []) is None


@pytest.fixture(scope="module")
def models(qwen_demo_dir: Path):
    from inference.model import load_chat_model
    from inference.model.engine import LoadedModel

    cached = load_chat_model(qwen_demo_dir, quantization="none", cache="prefix")
    naive = LoadedModel(cached.model, cached.processor, cached.profile, cached.info, cache="none")
    return cached, naive


def test_demo_model_constrained_answers_parse(models) -> None:
    cached, naive = models
    image = Image.new("L", (320, 400), 90)
    first = Turn("user", "Here is the current X-ray image: <image> . Which view is this?", (image,))
    free = cached.answer([], first, 12)
    history = [first, Turn("assistant", free.text)]
    geometry = [ImageGeometry(0, 320, 400, *free.model_image_sizes[0])]
    cases = [
        (QType.YES_NO, (), "Is there a pneumothorax?"),
        (QType.SINGLE_CHOICE, OPTIONS, "Which is seen? Select the correct answer from the options below: "
                                       "[ A. Lines; B. Tubes; C. Nothing ]."),
        (QType.MULTI_CHOICE, LABELLED, "Where is the emphysema? [ 1. Diaphragm; 2. Subcutaneous tissue. or "
                                       "3. The bilateral upper lobes. ]."),
        (QType.DETECTION, (), "Locate the effusion with format <|box|>(x1, y1), (x2, y2)<|/box|>."),
    ]
    unconstrained_unparsed = 0
    for qtype, options, text in cases:
        constraint = constraint_for(qtype, options, cached.box_convention, free.model_image_sizes[0])
        question = Turn("user", text)
        for budget in (3, 48):  # a tight budget still ends with a whole answer (grace tokens)
            gen = cached.answer(history, question, budget, constraint)
            parsed = parse_answer(gen.text, qtype, options, box_convention=cached.box_convention, images=geometry)
            assert parsed.ok, (qtype, budget, gen.text, parsed.error)
            assert gen.cached_tokens > 0  # the prefix cache path serves constrained answers too
            again = naive.answer(history, question, budget, constraint)
            assert again.text == gen.text  # same tokens with a full recompute (fp32)
        plain = cached.answer(history, question, 48)
        unconstrained_unparsed += not parse_answer(plain.text, qtype, options, box_convention=cached.box_convention,
                                                   images=geometry).ok
    assert unconstrained_unparsed >= 3  # the untrained model's free text rarely parses: the grammar does the work
    # Open questions are not constrained: the answer equals the unconstrained one.
    open_q = Turn("user", "Describe the findings.")
    assert cached.answer(history, open_q, 16, None).text == cached.answer(history, open_q, 16).text
