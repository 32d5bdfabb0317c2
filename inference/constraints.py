"""Closed answers constrained at decoding: the grammar a yes/no, choice or detection answer must follow.

Pure core: a question type, its options and the model's box convention in, an ``AnswerConstraint`` (defined with
the model contract in ``inference.chat``) out. One constraint serves both backends: the local engine checks each
candidate token against ``pattern`` with partial regex matching (``regex`` package); a remote vLLM engine gets
``choice`` or ``regex`` as ``structured_outputs``.

- yes/no: the answer starts with ``Yes.`` or ``No.``; the text after it is free (``head``).
- single choice: exactly one of the offered options, written ``A. body.`` (CXRTrek's answer form).
- multi choice: one or more offered options joined by ``, `` (optionally ending with ``.``).
- detection: ``[<|ref|> target <|/ref|> ]<|box|>(x1, y1), (x2, y2)<|/box|>`` boxes (the target as asked),
  numbers in the profile's box convention (percent with two decimals, 0..1000, 0..1, or pixels of the resized
  model input).
Open questions are never constrained.
"""
from __future__ import annotations

import re
from collections.abc import Sequence

from inference.chat import AnswerConstraint, BoxConvention
from inference.parsing import option_body, option_label
from inference.record import QType

__all__ = ["constraint_for", "int_upto_pattern", "MAX_BOXES", "NO_HEAD", "YES_HEAD"]

MAX_BOXES = 4  # boxes one detection answer may hold
YES_HEAD, NO_HEAD = "Yes.", "No."  # the two heads of a yes/no answer (its probability of "yes" is P(YES_HEAD))
YES_NO_HEAD = r"(?:Yes|No)\."


def _labels(options: Sequence[str]) -> list[str]:
    own = [option_label(o) for o in options]
    if all(own):
        return [str(x) for x in own]
    return [chr(ord("A") + i) if i < 26 else str(i + 1) for i in range(len(options))]


def _option_answers(options: Sequence[str]) -> list[str]:
    """Each option as CXRTrek answers it: ``A. body`` (label as offered, or A, B, C by position)."""
    return [f"{label}. {option_body(o)}" for label, o in zip(_labels(options), options, strict=False)]


def int_upto_pattern(limit: int) -> str:
    """A regex for the integers 0..``limit`` written without leading zeros."""
    if limit < 0:
        raise ValueError("limit must be >= 0")
    digits = str(limit)
    shorter = [r"\d" if n == 1 else rf"[1-9]\d{{{n - 1}}}" for n in range(1, len(digits))]

    def same_length(s: str, first: bool) -> str:
        low = 1 if first and len(s) > 1 else 0
        head = int(s[0])
        if len(s) == 1:
            return f"[{low}-{head}]" if head > low else str(head)
        parts = []
        if head > low:
            top = head - 1
            parts.append((f"[{low}-{top}]" if top > low else str(low)) + rf"\d{{{len(s) - 1}}}")
        parts.append(s[0] + same_length(s[1:], False))
        return "(?:" + "|".join(parts) + ")"

    return "(?:" + "|".join([*shorter, same_length(digits, True)][::-1]) + ")"


def _number(convention: BoxConvention, limit: int | None) -> str:
    if convention is BoxConvention.PERCENT:
        return r"(?:100(?:\.00?)?|\d{1,2}(?:\.\d{1,2})?)"
    if convention is BoxConvention.PER_MILLE:
        return int_upto_pattern(1000)
    if convention is BoxConvention.UNIT:
        return r"(?:0(?:\.\d{1,4})?|1(?:\.0{1,4})?)"
    return int_upto_pattern(limit) if limit is not None else r"\d{1,4}"


def _box_pattern(convention: BoxConvention, model_size: tuple[int, int] | None, target: str) -> str:
    x = _number(convention, model_size[0] if model_size else None)
    y = _number(convention, model_size[1] if model_size else None)
    box = rf"<\|box\|>\({x}, {y}\), \({x}, {y}\)<\|/box\|>"
    ref = rf"(?:<\|ref\|> {re.escape(target)} <\|/ref\|> )?" if target.strip() else ""
    return rf"{ref}{box}(?:, {box}){{0,{MAX_BOXES - 1}}}\.?"


def constraint_for(
    qtype: QType,
    options: Sequence[str] = (),
    box_convention: BoxConvention = BoxConvention.PERCENT,
    model_size: tuple[int, int] | None = None,
    target: str = "",
) -> AnswerConstraint | None:
    """The constraint for a question, or None (open questions; choice questions without options).

    ``model_size``: (width, height) of the image the boxes belong to as the model sees it (resized-pixel boxes).
    ``target``: what the boxes show; a box answer may name it first as ``<|ref|> target <|/ref|>``.
    """
    qtype = QType(qtype)
    if qtype is QType.YES_NO:
        return AnswerConstraint("yes_no", YES_NO_HEAD + r"[\s\S]*", head=YES_NO_HEAD, heads=(YES_HEAD, NO_HEAD))
    if qtype in (QType.SINGLE_CHOICE, QType.MULTI_CHOICE) and options:
        answers = _option_answers(options)
        if qtype is QType.SINGLE_CHOICE:
            choices = tuple(f"{a}." for a in answers)
            return AnswerConstraint("single_choice", "(?:" + "|".join(re.escape(c) for c in choices) + ")",
                                    choices=choices)
        one = "(?:" + "|".join(re.escape(a) for a in answers) + ")"
        return AnswerConstraint("multi_choice", rf"{one}(?:, {one}){{0,{len(answers) - 1}}}\.?")
    if qtype is QType.DETECTION:
        return AnswerConstraint("detection", _box_pattern(BoxConvention(box_convention), model_size, target))
    return None
