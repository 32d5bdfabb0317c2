"""Where answers come from: the gold answers (oracle), a predictions file, or a model run.

Predictions file (``--predictions FILE``), JSON, one of:

- answers by study: ``{"<study key>": ["answer text", ...], ...}``, answers in the study's item order (``null`` for
  an unanswered item, which counts as unparsed; a shorter list leaves the remaining items out of the scores); an
  answer may also be ``{"answer": "text", "probabilities": {"Yes.": 0.8, "No.": 0.2}}``, the choices' probabilities
  the model gave (``inference.scores``; what the per-finding table ranks);
- reasoning records by study: ``{"<study key>": <ReasoningRecord JSON object>, ...}``; each item takes the parsed
  answer of the record question asked with the same text (whitespace-normalized); unmatched items are unparsed;
- a list with one entry (answer list or record) per study, in dataset order.

The study key is ``cxrtrek_data.study_id``; a study id seen again gets ``#2``, ``#3``... in file order. Raw answers
are parsed with :func:`inference.parsing.parse_answer` (boxes in the file's box convention, CXRTrek percent by
default). ``cxr-node eval --save-predictions OUT`` writes the first form.

Model runs ask each study's questions in item order as one conversation. Teacher-forced (CXRTrek): the history is
the gold Q&A. Free (``free=True``, as the node runs): the history holds the model's own answers. Images are read
from ``images_dir`` joined with the item's relative image paths and enter at their ``<image>`` placeholders.
"""
from __future__ import annotations

import json
import logging
import re
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from functools import lru_cache, partial
from pathlib import Path
from typing import Any, TypedDict

from PIL import Image

from inference.chat import AnswerConstraint, BoxConvention, ChatModel, Generation, Turn
from inference.constraints import constraint_for
from inference.evaluation.dataset import EvalItem, EvalStudy
from inference.flow import MAX_IN_FLIGHT
from inference.parsing import ImageGeometry, parse_answer
from inference.record import ParsedAnswer, QType, QuestionResult, ReasoningRecord
from inference.scores import presence_probability

log = logging.getLogger(__name__)

# Answer budgets when the stage book (config/stages.yaml, whose max_new_tokens the node uses) cannot be read.
FALLBACK_MAX_NEW_TOKENS: dict[QType, int] = {
    QType.OPEN: 160,
    QType.YES_NO: 48,
    QType.SINGLE_CHOICE: 24,
    QType.MULTI_CHOICE: 48,
    QType.DETECTION: 64,
}


class PredictionsError(ValueError):
    """The predictions file is malformed or does not fit the dataset."""


@dataclass(frozen=True)
class Prediction:
    """One answer: raw text (None when none was given), its parsed value and what producing it cost."""

    raw: str | None
    parsed: ParsedAnswer
    seconds: float = 0.0
    prompt_tokens: int = 0
    cached_tokens: int = 0
    generated_tokens: int = 0
    probabilities: Mapping[str, float] = field(default_factory=dict)  # choice -> probability, where scored


@dataclass
class StudyRun:
    """A study's answers (aligned with its items, possibly fewer) and the wall time spent on it."""

    key: str
    predictions: list[Prediction] = field(default_factory=list)
    seconds: float = 0.0


NO_ANSWER = ParsedAnswer(ok=False, error="no answer given")


def parse_for_item(
    item: EvalItem,
    raw: str | None,
    *,
    box_convention: BoxConvention = BoxConvention.PERCENT,
    images: Sequence[ImageGeometry] = (),
    wrapper: str | None = None,
) -> ParsedAnswer:
    """Parse ``raw`` as an answer to ``item`` (engine parser; boxes default to the item's image)."""
    if raw is None:
        return NO_ANSWER
    return parse_answer(
        raw,
        item.qtype,
        item.options,
        box_convention=box_convention,
        images=images,
        default_image_index=item.image_index,
        wrapper=wrapper,
        default_target=item.target or "",
    )


def _from_texts(study: EvalStudy, texts: Sequence[Any], convention: BoxConvention) -> StudyRun:
    """Predictions from answer texts (or ``{"answer", "probabilities"}`` objects, ``_answer_entry``)."""
    predictions = []
    for item, entry in zip(study.items, texts, strict=False):  # a shorter list: the rest is left out
        text, probabilities = (entry.get("answer"), entry.get("probabilities") or {}) if isinstance(entry, dict) \
            else (entry, {})
        predictions.append(Prediction(raw=text, parsed=parse_for_item(item, text, box_convention=convention),
                                      probabilities={str(k): float(v) for k, v in probabilities.items()}))
    return StudyRun(study.key, predictions)


def _answer_entry(entry: Any) -> bool:
    """A predictions-file answer: text, null, or ``{"answer": text | null, "probabilities": {choice: number}}``."""
    if entry is None or isinstance(entry, str):
        return True
    if not isinstance(entry, dict) or set(entry) - {"answer", "probabilities"}:
        return False
    probabilities = entry.get("probabilities") or {}
    return ((entry.get("answer") is None or isinstance(entry.get("answer"), str)) and isinstance(probabilities, dict)
            and all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in probabilities.values()))


def oracle(studies: Sequence[EvalStudy]) -> dict[str, StudyRun]:
    """The gold answers as predictions: a check of parser and scorer (must score 100%)."""
    return {s.key: _from_texts(s, [i.answer for i in s.items], BoxConvention.PERCENT) for s in studies}


_WS = re.compile(r"\s+")


def _norm_question(text: str) -> str:
    return _WS.sub(" ", text).strip()


def _from_record(study: EvalStudy, record: ReasoningRecord) -> StudyRun:
    asked: dict[str, QuestionResult] = {}
    for stage in record.stages:
        for question in stage.questions:
            asked.setdefault(_norm_question(question.question), question)
    predictions = []
    for item in study.items:
        q = asked.get(_norm_question(item.question))
        if q is None:
            predictions.append(Prediction(raw=None, parsed=NO_ANSWER))
        else:
            predictions.append(
                Prediction(
                    raw=q.raw_answer,
                    parsed=q.parsed,
                    seconds=q.seconds,
                    prompt_tokens=q.prompt_tokens,
                    cached_tokens=q.cached_tokens,
                    generated_tokens=q.generated_tokens,
                    probabilities=dict(q.choice_probabilities),
                )
            )
    return StudyRun(study.key, predictions)


def _entry_to_run(study: EvalStudy, entry: Any, convention: BoxConvention, where: str) -> StudyRun:
    if isinstance(entry, dict):
        try:
            return _from_record(study, ReasoningRecord.model_validate(entry))
        except ValueError as exc:
            raise PredictionsError(f"{where}: not a reasoning record: {str(exc).splitlines()[0]}") from exc
    if not isinstance(entry, list) or not all(_answer_entry(t) for t in entry):
        raise PredictionsError(f"{where}: expected a list of answer strings (or null, or {{answer, probabilities}}) "
                               f"or a reasoning record")
    if len(entry) > len(study.items):
        raise PredictionsError(f"{where}: {len(entry)} answers for {len(study.items)} items")
    return _from_texts(study, entry, convention)


def load_predictions(
    path: str | Path, studies: Sequence[EvalStudy], box_convention: BoxConvention = BoxConvention.PERCENT
) -> dict[str, StudyRun]:
    """Read a predictions file (format in the module docstring) for ``studies``."""
    try:
        data = json.loads(Path(path).read_text(encoding="utf-8"))
    except json.JSONDecodeError as exc:
        raise PredictionsError(f"{path}: not JSON: {exc}") from exc
    runs: dict[str, StudyRun] = {}
    if isinstance(data, list):
        if len(data) < len(studies):
            raise PredictionsError(f"{path}: {len(data)} entries for {len(studies)} studies")
        for study, entry in zip(studies, data, strict=False):
            runs[study.key] = _entry_to_run(study, entry, box_convention, f"{path}: study {study.key}")
        return runs
    if not isinstance(data, dict):
        raise PredictionsError(f"{path}: top level must be an object keyed by study or a list")
    unknown = sorted(set(data) - {s.key for s in studies})
    if unknown and not any(s.key in data for s in studies):
        raise PredictionsError(f"{path}: no study key matches the dataset (first keys: {unknown[:3]})")
    for study in studies:
        if study.key in data:
            runs[study.key] = _entry_to_run(study, data[study.key], box_convention, f"{path}: study {study.key}")
    return runs


def save_predictions(path: str | Path, runs: Mapping[str, StudyRun]) -> None:
    """Write raw answers as ``{study key: [answer, ...]}`` (readable back with :func:`load_predictions`); an answer
    with choice probabilities as ``{"answer": ..., "probabilities": {...}}``."""
    data = {key: [{"answer": p.raw, "probabilities": dict(p.probabilities)} if p.probabilities else p.raw
                  for p in run.predictions] for key, run in runs.items()}
    Path(path).write_text(json.dumps(data, indent=1, ensure_ascii=False), encoding="utf-8")


def load_study_images(study: EvalStudy, images_dir: str | Path) -> list[Image.Image]:
    """The study's images as RGB, in study order; a missing file raises FileNotFoundError naming it."""
    images = []
    for index in range(len(study.image_relpaths)):
        path = study.image_file(images_dir, index)
        if not path.is_file():
            raise FileNotFoundError(f"study {study.key}: image {index + 1} not found: {path}")
        with Image.open(path) as img:
            images.append(img.convert("RGB"))
    return images


@lru_cache(maxsize=1)
def default_budgets() -> dict[QType, int]:
    """Max new tokens per question type: the stage book's, as the node answers in production."""
    from inference.stages import StageConfigError, load_stages

    try:
        return {**FALLBACK_MAX_NEW_TOKENS, **load_stages().max_new_tokens}
    except StageConfigError as exc:
        log.warning("stage book unreadable, using built-in answer budgets: %s", str(exc).splitlines()[0])
        return dict(FALLBACK_MAX_NEW_TOKENS)


def max_new_tokens_for(qtype: QType, cap: int | None) -> int:
    """The answer budget of ``qtype``, capped by ``cap`` (``--max-new-tokens``) when given."""
    value = default_budgets()[qtype]
    return min(value, cap) if cap else value


def _constraint(model: ChatModel, item: EvalItem, sizes: Sequence[tuple[int, int]]) -> AnswerConstraint | None:
    """The item's decoding constraint; boxes sized to the item's image as the model last saw it."""
    size = sizes[item.image_index] if 0 <= item.image_index < len(sizes) else None
    return constraint_for(item.qtype, item.options, model.box_convention, size, item.target or "")


ProgressHook = Callable[[EvalStudy, int], None]  # (study, items done in it) after each answer


def _answer(model: ChatModel, item: EvalItem, question: Turn, history: list[Turn], sizes: Sequence[tuple[int, int]],
            max_new_tokens: int | None, constrain: bool) -> Generation:
    budget = max_new_tokens_for(item.qtype, max_new_tokens)
    constraint = _constraint(model, item, sizes) if constrain else None
    if constraint is not None:
        return model.answer(history, question, budget, constraint)
    return model.answer(history, question, budget)


def _waves(items: Sequence[EvalItem], parallel: bool) -> list[list[int]]:
    """Item indices grouped into waves asked after the same history: one item each when sequential; with
    ``parallel`` the consecutive items of one stage, an item that brings images in asked alone (images enter once).
    """
    waves: list[list[int]] = []
    for index, item in enumerate(items):
        alone = not parallel or item.n_images > 0
        previous = items[index - 1] if index else None
        if (alone or not waves or previous is None or previous.stage != item.stage or previous.n_images > 0):
            waves.append([index])
        else:
            waves[-1].append(index)
    return waves


def run_study(
    model: ChatModel,
    study: EvalStudy,
    images: Sequence[Image.Image],
    *,
    free: bool = False,
    max_new_tokens: int | None = None,
    max_questions: int | None = None,
    on_answer: ProgressHook | None = None,
    constrain: bool = True,
    parallel_within_stage: bool = False,
) -> StudyRun:
    """Ask the study's questions in order as one conversation (teacher-forced unless ``free``).

    ``constrain``: closed answers are decoded under their grammar (``inference.constraints``), as the node does.
    ``parallel_within_stage``: the questions of one stage are asked after the same history (blind to each
    other's answers; concurrently on a serving engine), then enter the conversation in order, as the node's
    ``reasoning.parallel_within_stage`` does.
    """
    start = time.perf_counter()
    reset = getattr(model, "reset_cache", None)  # a new conversation: free the previous study's cache
    if callable(reset):
        reset()
    history: list[Turn] = []
    run = StudyRun(study.key)
    next_image = 0
    sizes: tuple[tuple[int, int], ...] = ()
    items = study.items[:max_questions] if max_questions else study.items
    concurrent = parallel_within_stage and bool(getattr(model, "concurrent", False))
    for wave in _waves(items, parallel_within_stage):
        questions = []
        for index in wave:
            n = items[index].n_images
            questions.append(Turn("user", items[index].question, tuple(images[next_image: next_image + n])))
            next_image += n
        asked = list(history)
        if (constrain and model.box_convention is BoxConvention.RESIZED_PIXELS and len(sizes) < next_image
                and any(items[i].qtype is QType.DETECTION for i in wave)):  # the grammar bounds pixel boxes
            sizes = sizes + tuple(model.model_image_size(image) for image in images[len(sizes):next_image])
        if concurrent and len(wave) > 1:
            from concurrent.futures import ThreadPoolExecutor

            with ThreadPoolExecutor(max_workers=min(len(wave), MAX_IN_FLIGHT)) as pool:
                answer = partial(_answer, model, history=asked, sizes=sizes, max_new_tokens=max_new_tokens,
                                 constrain=constrain)
                generations = list(pool.map(answer, [items[index] for index in wave], questions))
        else:
            generations = [_answer(model, items[index], question, asked, sizes, max_new_tokens, constrain)
                           for index, question in zip(wave, questions, strict=True)]
        for index, question, gen in zip(wave, questions, generations, strict=True):
            item = items[index]
            seen = images[:next_image]
            sizes = gen.model_image_sizes or sizes
            geometry = [
                ImageGeometry(
                    index=i,
                    columns=img.width,
                    rows=img.height,
                    model_width=sizes[i][0] if i < len(sizes) else None,
                    model_height=sizes[i][1] if i < len(sizes) else None,
                )
                for i, img in enumerate(seen)
            ]
            parsed = parse_for_item(
                item, gen.text, box_convention=model.box_convention, images=geometry, wrapper=model.answer_wrapper
            )
            run.predictions.append(
                Prediction(
                    raw=gen.text,
                    parsed=parsed,
                    seconds=gen.seconds,
                    prompt_tokens=gen.prompt_tokens,
                    cached_tokens=gen.cached_tokens,
                    generated_tokens=gen.generated_tokens,
                    probabilities=dict(gen.choice_probabilities),
                )
            )
            history += [question, Turn("assistant", gen.text if free else item.answer)]
            if on_answer:
                on_answer(study, len(run.predictions))
    run.seconds = time.perf_counter() - start
    return run


class RunOptions(TypedDict, total=False):
    """How :func:`run_model` has the model answer (its keyword arguments; absent ones keep its defaults)."""

    free: bool
    max_new_tokens: int | None
    max_questions: int | None
    show_progress: bool
    constrain: bool


def run_model(
    model: ChatModel,
    studies: Sequence[EvalStudy],
    images_dir: str | Path,
    *,
    free: bool = False,
    max_new_tokens: int | None = None,
    max_questions: int | None = None,
    show_progress: bool = True,
    label: str = "model",
    constrain: bool = True,
    parallel_within_stage: bool = False,
) -> dict[str, StudyRun]:
    """Run ``model`` over ``studies`` with a rich progress bar (on stderr); returns runs by study key."""
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    total = sum(len(s.items[:max_questions] if max_questions else s.items) for s in studies)
    runs: dict[str, StudyRun] = {}
    with Progress(
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("{task.fields[study]}"),
        TimeElapsedColumn(),
        console=Console(stderr=True),
        disable=not show_progress,
    ) as progress:
        task = progress.add_task(f"{label} ({'free' if free else 'teacher-forced'})", total=total, study="")
        for study in studies:
            progress.update(task, study=study.key)
            runs[study.key] = run_study(
                model,
                study,
                load_study_images(study, images_dir),
                free=free,
                max_new_tokens=max_new_tokens,
                max_questions=max_questions,
                on_answer=lambda _s, _n: progress.advance(task),
                constrain=constrain,
                parallel_within_stage=parallel_within_stage,
            )
    return runs


def parsed_answers(runs: Mapping[str, StudyRun]) -> dict[str, list[ParsedAnswer]]:
    """The scorer's input: parsed answers by study key."""
    return {key: [p.parsed for p in run.predictions] for key, run in runs.items()}


def presence_probabilities(runs: Mapping[str, StudyRun]) -> dict[str, list[float | None]]:
    """The per-finding evaluation's input: each answer's probability of "yes" (None where not scored)."""
    return {key: [presence_probability(p.probabilities) for p in run.predictions] for key, run in runs.items()}
