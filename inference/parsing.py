"""Parse a model's answer text into its typed value (yes/no, chosen options, boxes), never raising.

Formats follow CXRTrek: ``Yes. <justification>``, options as ``A. text`` / ``3. text`` / bare text, several
options joined with ``,`` ``;`` ``and``; boxes as ``<|ref|> target <|/ref|> <|box|>(x1, y1), (x2, y2)<|/box|>``.
Qwen2.5-VL JSON boxes (``"bbox_2d": [x1, y1, x2, y2]``) and bare ``(x1, y1), (x2, y2)`` are understood too.
Answers may be wrapped as ``<think>..</think><answer>..</answer>``. Anything that does not parse gives
``ParsedAnswer(ok=False, error=...)`` with the text kept.
"""
from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from difflib import SequenceMatcher

from inference.chat import BoxConvention
from inference.record import Box, ParsedAnswer, QType

__all__ = [
    "ImageGeometry",
    "parse_answer",
    "qtype_from_cxrtrek",
    "options_from_question",
    "image_number_from_question",
    "option_label",
    "option_body",
    "split_wrapper",
]

SIMILARITY = 0.75  # least difflib ratio for a paraphrased option to count as chosen
BOX_TOLERANCE = 0.05  # normalized coordinates this far outside [0, 1] make a box an error (else clamped)

_NUM = r"[-+]?\d+(?:\.\d+)?"
_PAIR = rf"\(\s*({_NUM})\s*,\s*({_NUM})\s*\)"
_TOKEN = re.compile(
    r"<\|ref\|>(?P<ref>.*?)<\|/ref\|>"
    rf"|<\|box\|>\s*{_PAIR}\s*,?\s*{_PAIR}\s*<\|/box\|>"
    rf"|\"bbox_2d\"\s*:\s*\[\s*(?P<j1>{_NUM})\s*,\s*(?P<j2>{_NUM})\s*,\s*(?P<j3>{_NUM})\s*,\s*(?P<j4>{_NUM})\s*\]"
    r"(?:\s*,\s*\"label\"\s*:\s*\"(?P<jl>[^\"]*)\")?",
    re.S,
)
_BARE_BOX = re.compile(
    rf"{_PAIR}\s*,?\s*{_PAIR}|\[\s*({_NUM})\s*,\s*({_NUM})\s*,\s*({_NUM})\s*,\s*({_NUM})\s*\]"
)
_IMAGE_ID = re.compile(r"\bimage[ _-]?(?:id)?\s*[:=#]?\s*(\d+)\b", re.I)
_LABEL = re.compile(r"^\s*\(?([A-Z]|\d{1,2})[.)]\s*")
_YES_NO = re.compile(r"^[\s\W]*?\b(yes|no)\b[\s.,:;!\-]*(.*)$", re.I | re.S)
_THINK = re.compile(r"<think>(.*?)</think>", re.S)
_ANSWER = re.compile(r"<answer>(.*?)(?:</answer>|$)", re.S)


@dataclass(frozen=True)
class ImageGeometry:
    """One image of the conversation: its record index, source size and (for pixel boxes) model input size."""

    index: int  # index into ReasoningRecord.images
    columns: int
    rows: int
    model_width: int | None = None
    model_height: int | None = None


def qtype_from_cxrtrek(qtype: str) -> QType:
    """Map a CXRTrek qtype (captioning, yes_no, single-choice, multi-choice[-N], detection) to a QType."""
    q = qtype.strip().lower()
    if q == "captioning":
        return QType.OPEN
    if q in ("yes_no", "yes-no"):
        return QType.YES_NO
    if q == "single-choice":
        return QType.SINGLE_CHOICE
    if q == "multi-choice" or re.fullmatch(r"multi-choice-\d+", q):
        return QType.MULTI_CHOICE
    if q == "detection":
        return QType.DETECTION
    raise ValueError(f"unknown CXRTrek qtype {qtype!r}")


def option_label(option: str) -> str | None:
    """The explicit label of an option (``"B. Lines."`` -> ``"B"``), or None."""
    m = _LABEL.match(option)
    return m.group(1) if m else None


def option_body(option: str) -> str:
    """An option without its label and trailing period (``"B. Lines."`` -> ``"Lines"``)."""
    m = _LABEL.match(option)
    body = option[m.end():] if m else option
    return body.strip().rstrip(".").strip()


def _norm(text: str) -> str:
    return re.sub(r"\s+", " ", text).strip().rstrip(".").strip().casefold()


def split_wrapper(raw: str, wrapper: str | None = None) -> tuple[str | None, str, str | None]:
    """Split ``<think>..</think><answer>..</answer>``: (think, answer text, error). Works without tags too."""
    think = None
    error = None
    text = raw
    m = _THINK.search(text)
    if m:
        think = m.group(1).strip()
        text = text[: m.start()] + text[m.end():]
    elif "<think>" in text:
        think = text.split("<think>", 1)[1].strip()
        return think, "", "unterminated <think>: the answer was cut off before </think>"
    a = _ANSWER.search(text)
    if a:
        text = a.group(1)
    text = text.replace("</answer>", "").replace("</think>", "")
    return think, text.strip(), error


def _parse_yes_no(text: str) -> tuple[bool | None, str | None]:
    m = _YES_NO.match(text)
    if not m:
        return None, None
    rest = m.group(2).strip()
    return m.group(1).lower() == "yes", rest or None


def _labels(options: Sequence[str]) -> list[str]:
    """Each option's label: its own (``A.``/``1.``) or, when none has one, A, B, C... by position."""
    own = [option_label(o) for o in options]
    if all(own):
        return [str(x) for x in own]
    return [chr(ord("A") + i) if i < 26 else str(i + 1) for i in range(len(options))]


_SEP = re.compile(r"^(?:\s|[,;/&]|\band\b|\bor\b|\.)*", re.I)


def _starts_with_words(text: str, prefix: str) -> bool:
    return text.startswith(prefix) and (len(text) == len(prefix) or not text[len(prefix)].isalnum())


# A choice label where a choice starts: at the beginning, after a sentence or list separator, or after and/or;
# followed by "." or ")" and a space (so "1.5 cm" or "type 2." inside a sentence are not labels).
_CHOICE_LABEL = re.compile(r"(?:^|(?<=[.;,\[])\s*|(?<=\s)(?:and|or)\s+)\(?([A-Z]|\d{1,2})[.)](?=\s|$)")


def _match_by_labels(text: str, labels: list[str]) -> list[int]:
    """Choices named by their labels (``B. The effusion is considered as small; C. ...``): the letter decides.

    Models and annotators paraphrase option text ("considered as" for "described as"); the label is what they
    chose. Every label must be one of the options', else nothing is decided here.
    """
    found = [m.group(1) for m in _CHOICE_LABEL.finditer(text.strip())]
    if not found or any(label not in labels for label in found):
        return []
    return list(dict.fromkeys(labels.index(label) for label in found))


def _match_by_label_and_text(text: str, options: Sequence[str], labels: list[str]) -> list[int]:
    """Labels followed by their option's text, e.g. ``B. Lines. and C. Tubes.``."""
    bodies = [_norm(option_body(o)) for o in options]
    hits: list[int] = []
    for m in re.finditer(r"(?:^|(?<=[\s,;(\[]))\(?([A-Z]|\d{1,2})[.)]", text):
        label = m.group(1)
        for i, lab in enumerate(labels):
            if lab == label and bodies[i] and i not in hits and _starts_with_words(_norm(text[m.end():]), bodies[i]):
                hits.append(i)
    return hits


def _match_by_label_only(text: str, labels: list[str]) -> list[int]:
    """Answers made of labels only, possibly with paraphrased text: ``B``, ``B, D``, ``(C) something``."""
    segments = [s for s in re.split(r"[,;]|\band\b|\bor\b", text) if s.strip()]
    hits: list[int] = []
    for seg in segments:
        m = re.match(r"^\s*\(?([A-Z]|\d{1,2})(?:[.)]|\s*\.?\s*$)", seg)
        if not m:
            return []
        if m.group(1) not in labels:
            return []
        i = labels.index(m.group(1))
        if i not in hits:
            hits.append(i)
    return hits


def _match_by_text(text: str, options: Sequence[str]) -> list[int]:
    """Option texts found in the answer (longest first, so "Mild cardiomegaly" wins over "Cardiomegaly")."""
    remaining = " " + _norm(text) + " "
    hits: list[int] = []
    order = sorted(range(len(options)), key=lambda i: -len(option_body(options[i])))
    for i in order:
        body = _norm(option_body(options[i]))
        if not body:
            continue
        pattern = re.compile(r"(?<!\w)" + re.escape(body) + r"(?!\w)")
        if pattern.search(remaining):
            hits.append(i)
            remaining = pattern.sub(" ", remaining)
    return sorted(hits)


def _match_by_leading_labels(text: str, labels: list[str]) -> list[int]:
    """A label at the start, then possibly more after separators, with paraphrased option text."""
    first = re.match(r"^\s*\(?([A-Z]|\d{1,2})[.)]\s", text + " ")
    if not first or first.group(1) not in labels:
        return []
    hits = [labels.index(first.group(1))]
    for m in re.finditer(r"(?:[,;]|\band\b)\s*\(?([A-Z]|\d{1,2})[.)]\s", text):
        if m.group(1) in labels and labels.index(m.group(1)) not in hits:
            hits.append(labels.index(m.group(1)))
    return hits


def _match_by_similarity(text: str, options: Sequence[str]) -> list[int]:
    """The one option clearly most similar to a paraphrasing answer (ratio >= SIMILARITY, margin 0.1)."""
    answer = _norm(_LABEL.sub("", text, count=1))
    scores = sorted(
        ((SequenceMatcher(None, answer, _norm(option_body(o))).ratio(), i) for i, o in enumerate(options)),
        reverse=True,
    )
    if not scores or scores[0][0] < SIMILARITY:
        return []
    if len(scores) > 1 and scores[0][0] - scores[1][0] < 0.1:
        return []
    return [scores[0][1]]


def _choose(text: str, options: Sequence[str]) -> tuple[list[int], str | None]:
    labels = _labels(options)
    for matcher in (
        lambda: _match_by_labels(text, labels),
        lambda: _match_by_label_and_text(text, options, labels),
        lambda: _match_by_label_only(text, labels),
        lambda: _match_by_text(text, options),
        lambda: _match_by_leading_labels(text, labels),
        lambda: _match_by_similarity(text, options),
    ):
        hits = matcher()
        if hits:
            return sorted(hits), None
    return [], "no option matched"


def _justification_after_choices(text: str, options: Sequence[str], chosen: list[int]) -> str | None:
    """Text after the last chosen option, if the model explained its choice."""
    norm = text
    end = 0
    for i in chosen:
        body = option_body(options[i])
        pos = norm.casefold().rfind(body.casefold())
        if pos >= 0:
            end = max(end, pos + len(body))
    rest = _SEP.sub("", norm[end:]).strip() if end else ""
    return rest or None


def _scale(convention: BoxConvention, geometry: ImageGeometry | None) -> tuple[float, float] | str:
    if convention is BoxConvention.PERCENT:
        return 100.0, 100.0
    if convention is BoxConvention.PER_MILLE:
        return 1000.0, 1000.0
    if convention is BoxConvention.UNIT:
        return 1.0, 1.0
    if geometry is None or not geometry.model_width or not geometry.model_height:
        return "resized-pixel boxes need the model input size of the image"
    return float(geometry.model_width), float(geometry.model_height)


def _make_box(
    target: str,
    raw: tuple[float, float, float, float],
    image_number: int | None,
    convention: BoxConvention,
    images: Sequence[ImageGeometry],
    default_image_index: int,
) -> Box | str:
    if image_number is not None:
        if images and not 1 <= image_number <= len(images):
            return f"image {image_number} does not exist (answer names image ids 1..{len(images)})"
        geometry = images[image_number - 1] if images else None
        index = geometry.index if geometry else image_number - 1
    else:
        index = default_image_index
        geometry = next((g for g in images if g.index == index), None)
    scale = _scale(convention, geometry)
    if isinstance(scale, str):
        return scale
    sx, sy = scale
    x1, y1, x2, y2 = raw
    n = [min(x1, x2) / sx, min(y1, y2) / sy, max(x1, x2) / sx, max(y1, y2) / sy]
    if any(v < -BOX_TOLERANCE or v > 1 + BOX_TOLERANCE for v in n):
        return f"box {raw} lies outside the image in the {convention.value} convention"
    nx1, ny1, nx2, ny2 = (min(max(v, 0.0), 1.0) for v in n)
    if geometry is not None:
        pixels = (nx1 * geometry.columns, ny1 * geometry.rows, nx2 * geometry.columns, ny2 * geometry.rows)
    else:
        pixels = (0.0, 0.0, 0.0, 0.0)  # source size unknown
    return Box(
        target=target.strip(),
        image_index=index,
        raw=raw,
        normalized=(round(nx1, 6), round(ny1, 6), round(nx2, 6), round(ny2, 6)),
        pixels=tuple(round(p, 2) for p in pixels),
    )


def _find_boxes(text: str) -> list[tuple[str | None, tuple[float, float, float, float], int | None]]:
    """(target, raw box, 1-based image id) for each box in the text, in order."""
    found: list[tuple[str | None, tuple[float, float, float, float], int | None]] = []
    target: str | None = None
    image_number: int | None = None
    last = 0
    for m in _TOKEN.finditer(text):
        between = text[last: m.start()]
        ids = _IMAGE_ID.findall(between)
        if ids:
            image_number = int(ids[-1])
        last = m.end()
        if m.group("ref") is not None:
            target = m.group("ref").strip()
            continue
        if m.group("j1") is not None:
            raw = tuple(float(m.group(k)) for k in ("j1", "j2", "j3", "j4"))
            found.append((m.group("jl") or target, raw, image_number))  # type: ignore[arg-type]
        else:
            raw = tuple(float(g) for g in m.groups()[1:5])
            found.append((target, raw, image_number))  # type: ignore[arg-type]
    if found:
        return found
    for m in _BARE_BOX.finditer(text):
        nums = [g for g in m.groups() if g is not None]
        found.append((None, tuple(float(v) for v in nums), None))  # type: ignore[arg-type]
    return found


def parse_answer(
    raw: str,
    qtype: QType,
    options: Sequence[str] = (),
    *,
    box_convention: BoxConvention = BoxConvention.PERCENT,
    images: Sequence[ImageGeometry] = (),
    default_image_index: int = 0,
    wrapper: str | None = None,
    default_target: str = "",
) -> ParsedAnswer:
    """Parse one answer. Never raises: a failure is ``ok=False`` with ``error`` and the text kept.

    Box image ids written in an answer are 1-based positions in ``images``; without one a box belongs to
    ``default_image_index`` (a record image index). Options may carry labels (``A.``, ``1.``) or not (then A, B, C
    by position). ``choices`` are returned exactly as given in ``options``, in option order.
    """
    try:
        return _parse(raw, QType(qtype), options, box_convention, images, default_image_index, wrapper,
                      default_target)
    except Exception as exc:  # a parser bug must not lose the answer
        return ParsedAnswer(ok=False, error=f"parser error: {type(exc).__name__}: {exc}", text=str(raw))


def _parse(
    raw: str,
    qtype: QType,
    options: Sequence[str],
    convention: BoxConvention,
    images: Sequence[ImageGeometry],
    default_image_index: int,
    wrapper: str | None,
    default_target: str,
) -> ParsedAnswer:
    think, text, error = split_wrapper(raw or "", wrapper)
    if error:
        return ParsedAnswer(ok=False, error=error, think=think, text=text)
    if not text:
        return ParsedAnswer(ok=False, error="empty answer", think=think, text=text)
    if qtype is QType.OPEN:
        return ParsedAnswer(ok=True, think=think, text=text)
    if qtype is QType.YES_NO:
        value, justification = _parse_yes_no(text)
        if value is None:
            return ParsedAnswer(ok=False, error="answer does not start with yes or no", think=think, text=text)
        return ParsedAnswer(ok=True, think=think, text=text, yes_no=value, justification=justification)
    if qtype in (QType.SINGLE_CHOICE, QType.MULTI_CHOICE):
        if not options:
            return ParsedAnswer(ok=False, error="choice question without options", think=think, text=text)
        chosen, err = _choose(text, options)
        choices = [options[i] for i in chosen]
        if err:
            return ParsedAnswer(ok=False, error=err, think=think, text=text)
        if qtype is QType.SINGLE_CHOICE and len(choices) > 1:
            return ParsedAnswer(ok=False, error=f"{len(choices)} options chosen for a single-choice question",
                                think=think, text=text, choices=choices)
        return ParsedAnswer(ok=True, think=think, text=text, choices=choices,
                            justification=_justification_after_choices(text, options, chosen))
    # detection
    found = _find_boxes(text)
    if not found:
        return ParsedAnswer(ok=False, error="no box found", think=think, text=text)
    boxes: list[Box] = []
    for target, box_raw, image_number in found:
        box = _make_box(target or default_target, box_raw, image_number, convention, images, default_image_index)
        if isinstance(box, str):
            return ParsedAnswer(ok=False, error=box, think=think, text=text, boxes=boxes)
        boxes.append(box)
    return ParsedAnswer(ok=True, think=think, text=text, boxes=boxes)


_ORDINALS = {"first": 1, "second": 2, "third": 3, "fourth": 4, "fifth": 5, "sixth": 6}
_IMAGE_IN_QUESTION = re.compile(
    r"\b(?:image|x-ray)\s+(\d+)\b|\b(\d+(?=st|nd|rd|th)|first|second|third|fourth|fifth|sixth)(?:st|nd|rd|th)?"
    r"\s+(?:image|x-ray)\b",
    re.I,
)


def image_number_from_question(question: str) -> int | None:
    """The 1-based image a CXRTrek question points at ("image 2 of main study", "the 2nd image"), or None."""
    m = _IMAGE_IN_QUESTION.search(question)
    if not m:
        return None
    word = (m.group(1) or m.group(2)).lower()
    return _ORDINALS.get(word) or int(word)


def options_from_question(question: str) -> list[str]:
    """Best-effort option list written in a question (``A. x; B. y``, ``1. x 2. y``, ``[ x; y or z ]``).

    Labels are kept; each option ends with a period. Returns [] when no list is recognised.
    """
    bracket = re.search(r"\[\s*(.+?)\s*\]", question, re.S)
    labelled = (_labelled_options(bracket.group(1)) if bracket else []) or _labelled_options(question)
    return labelled if labelled else _unlabelled_options(question)


def _labelled_options(question: str) -> list[str]:
    for first, nxt in (("A", lambda c: chr(ord(c) + 1)), ("1", lambda c: str(int(c) + 1))):
        starts: list[re.Match[str]] = []
        pos = 0
        label = first
        while True:
            m = re.compile(r"(?:(?<=^)|(?<=[\s\[:'\"(]))" + re.escape(label) + r"\.\s").search(question, pos)
            if not m:
                break
            starts.append(m)
            pos = m.end()
            label = nxt(label)
        if len(starts) < 2:
            continue
        out = []
        for k, m in enumerate(starts):
            end = starts[k + 1].start() if k + 1 < len(starts) else len(question)
            body = question[m.end(): end]
            if k + 1 == len(starts):
                body = re.split(r"\s*[\]'\"\n]|\.\s+(?=[A-Z])|\.$", body, maxsplit=1)[0]
            out.append(f"{m.group(0).strip()} {_clean_option(body)}.")
        return out
    return []


def _clean_option(body: str) -> str:
    body = re.sub(r"(?:[\s;,]|\bor\b)+$", "", body.strip())
    return body.rstrip(".").strip()


def _unlabelled_options(question: str) -> list[str]:
    m = re.search(r"\[\s*(.+?)\s*\]", question, re.S)
    if m:
        segment = m.group(1)
    else:
        m = re.search(r":\s+([^:]+?)(?:'|\.\s+[A-Z]|\.?$)", question.split("?")[-1] if "?" in question else question)
        if not m:
            return []
        segment = m.group(1)
    sep = r";\s+|\.?\s+or\s+" if ";" in segment or " or " in segment else r",\s+"
    parts = [_clean_option(p) for p in re.split(sep, segment.strip().rstrip("."))]
    parts = [p for p in parts if p]
    return [p + "." for p in parts] if len(parts) >= 2 else []
