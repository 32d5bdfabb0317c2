"""Load a CXRTrek-format dataset into typed studies and Q&A items with their gold values.

Format (see ``tests/data/cxrtrek/README.md``): a JSON list of studies, each
``{"image": [absolute paths], "cxrtrek_data": {"study_id", "pat_id", "image": [relative paths], "content": [...]}}``;
each content item carries ``stage``, ``task_type``, ``qtype``, ``question``, ``answer`` and where they apply
``option_list``, ``answer_list``, ``target``, ``bbox_list`` (percent of the image) and ``image_id`` (1-based).

Gold structured values come from the structured fields (``answer_list``, ``bbox_list``); the gold yes/no comes from
parsing the gold answer with the engine's parser.
"""
from __future__ import annotations

import json
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from inference.record import QType

IMAGE_PLACEHOLDER = "<image>"
CHECKLIST_TARGET_PREFIX = "abnormality_"
REPORT_TASK_PREFIX = "Report_Generation"

NormBox = tuple[float, float, float, float]  # x1, y1, x2, y2 as fractions of image width / height


class DatasetError(ValueError):
    """The dataset file is malformed; the message names the study and item."""


@dataclass(frozen=True)
class EvalItem:
    """One gold Q&A item of a study."""

    position: int  # 0-based position in the study's content list
    stage: int
    task_type: str
    cxrtrek_qtype: str  # as written in the file, e.g. "multi-choice-3"
    qtype: QType
    question: str
    answer: str
    options: tuple[str, ...] = ()
    answer_list: tuple[str, ...] = ()
    boxes: tuple[NormBox, ...] = ()  # gold boxes, normalized
    image_index: int = 0  # 0-based image of the study the boxes refer to (image_id - 1)
    target: str | None = None
    yes_no: bool | None = None  # gold yes/no for yes_no items

    @property
    def n_images(self) -> int:
        """How many images enter the conversation with this question."""
        return self.question.count(IMAGE_PLACEHOLDER)

    @property
    def is_checklist(self) -> bool:
        """A findings-checklist question (presence of one abnormality)."""
        return bool(self.target and self.target.startswith(CHECKLIST_TARGET_PREFIX))

    @property
    def is_report(self) -> bool:
        return self.task_type.startswith(REPORT_TASK_PREFIX)


@dataclass(frozen=True)
class EvalStudy:
    """One study: its images (as given and relative) and its items in conversation order."""

    key: str  # unique within the dataset: study_id, with "#2", "#3" for repeated study ids
    study_id: str
    patient_id: str
    image_paths: tuple[str, ...]  # as given in the file (absolute paths on the authors' machine)
    image_relpaths: tuple[str, ...]  # cxrtrek_data.image: relative to an images directory
    items: tuple[EvalItem, ...]

    def image_file(self, images_dir: str | Path, index: int) -> Path:
        """Where image ``index`` (0-based) of this study lies under ``images_dir``."""
        return Path(images_dir) / self.image_relpaths[index]


def _percent_box(raw: Any, where: str) -> NormBox:
    if not (isinstance(raw, (list, tuple)) and len(raw) == 4 and all(isinstance(v, (int, float)) for v in raw)):
        raise DatasetError(f"{where}: bbox must be 4 numbers, got {raw!r}")
    x1, y1, x2, y2 = (float(v) / 100.0 for v in raw)
    return (x1, y1, x2, y2)


def _gold_yes_no(answer: str, where: str) -> bool:
    from inference.parsing import parse_answer

    parsed = parse_answer(answer, QType.YES_NO)
    if not parsed.ok or parsed.yes_no is None:
        raise DatasetError(f"{where}: gold yes/no answer does not parse: {answer[:60]!r}")
    return parsed.yes_no


def parse_item(raw: dict[str, Any], position: int, n_images: int, where: str) -> EvalItem:
    """One content item -> :class:`EvalItem`; raises :class:`DatasetError` with ``where`` on bad input."""
    from inference.parsing import qtype_from_cxrtrek

    for key in ("stage", "task_type", "qtype", "question", "answer"):
        if key not in raw:
            raise DatasetError(f"{where}: missing {key!r}")
    try:
        qtype = qtype_from_cxrtrek(str(raw["qtype"]))
    except (KeyError, ValueError) as exc:
        raise DatasetError(f"{where}: unknown qtype {raw['qtype']!r}") from exc
    stage = raw["stage"]
    if not isinstance(stage, int) or not 1 <= stage <= 8:
        raise DatasetError(f"{where}: stage must be 1..8, got {stage!r}")
    options = tuple(str(o) for o in raw.get("option_list") or ())
    answer_list = tuple(str(a) for a in raw.get("answer_list") or ())
    if qtype in (QType.SINGLE_CHOICE, QType.MULTI_CHOICE):
        if not options or not answer_list:
            raise DatasetError(f"{where}: choice item needs option_list and answer_list")
        missing = [a for a in answer_list if a not in options]
        if missing:
            raise DatasetError(f"{where}: answer_list entries not in option_list: {missing}")
    boxes: tuple[NormBox, ...] = ()
    image_index = 0
    if qtype is QType.DETECTION:
        if not raw.get("bbox_list"):
            raise DatasetError(f"{where}: detection item needs bbox_list")
        boxes = tuple(_percent_box(b, where) for b in raw["bbox_list"])
        image_id = raw.get("image_id", 1)
        if not isinstance(image_id, int) or not 1 <= image_id <= max(n_images, 1):
            raise DatasetError(f"{where}: image_id {image_id!r} outside the study's {n_images} image(s)")
        image_index = image_id - 1
    answer = str(raw["answer"])
    return EvalItem(
        position=position,
        stage=stage,
        task_type=str(raw["task_type"]),
        cxrtrek_qtype=str(raw["qtype"]),
        qtype=qtype,
        question=str(raw["question"]),
        answer=answer,
        options=options,
        answer_list=answer_list,
        boxes=boxes,
        image_index=image_index,
        target=raw.get("target"),
        yes_no=_gold_yes_no(answer, where) if qtype is QType.YES_NO else None,
    )


def parse_studies(data: Any, limit: int | None = None) -> list[EvalStudy]:
    """The decoded JSON of a CXRTrek file -> studies (the first ``limit`` when given)."""
    if not isinstance(data, list):
        raise DatasetError("dataset: top level must be a list of studies")
    seen: Counter[str] = Counter()
    studies: list[EvalStudy] = []
    for s_index, raw in enumerate(data[:limit] if limit is not None else data):
        where = f"study {s_index}"
        if not isinstance(raw, dict) or not isinstance(raw.get("cxrtrek_data"), dict):
            raise DatasetError(f"{where}: needs a 'cxrtrek_data' object")
        meta = raw["cxrtrek_data"]
        study_id = str(meta.get("study_id") or f"study{s_index}")
        seen[study_id] += 1
        key = study_id if seen[study_id] == 1 else f"{study_id}#{seen[study_id]}"
        relpaths = tuple(str(p) for p in meta.get("image") or ())
        paths = tuple(str(p) for p in raw.get("image") or relpaths)
        if not relpaths:
            raise DatasetError(f"{where} ({key}): no images")
        content = meta.get("content")
        if not isinstance(content, list) or not content:
            raise DatasetError(f"{where} ({key}): no content items")
        items = tuple(
            parse_item(item, i, len(relpaths), f"{where} ({key}) item {i}") for i, item in enumerate(content)
        )
        placeholders = sum(it.n_images for it in items)
        if placeholders > len(relpaths):
            raise DatasetError(f"{where} ({key}): {placeholders} image placeholders but {len(relpaths)} images")
        studies.append(
            EvalStudy(
                key=key,
                study_id=study_id,
                patient_id=str(meta.get("pat_id") or ""),
                image_paths=paths,
                image_relpaths=relpaths,
                items=items,
            )
        )
    return studies


def load_dataset(path: str | Path, limit: int | None = None) -> list[EvalStudy]:
    """Read a CXRTrek-format JSON file; raises :class:`DatasetError` (with study/item) when malformed."""
    try:
        data = json.loads(Path(path).read_text(encoding="utf-8"))
    except json.JSONDecodeError as exc:
        raise DatasetError(f"{path}: not JSON: {exc}") from exc
    return parse_studies(data, limit)
