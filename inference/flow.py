"""The 8-stage CXRTrek flow: one growing conversation with a ``ChatModel``, driven by the stage book and by earlier
answers (positive findings, a prior study), producing a ``ReasoningRecord``.

Pure core: datasets (or prepared images) in, a record out. Every configured stage appears in the record; a stage
whose condition is unmet is ``not_applicable`` with the reason. Answers that do not parse are kept and flagged.
"""
from __future__ import annotations

import datetime as dt
import logging
import random
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from importlib import metadata
from typing import Any, TypedDict, Unpack

from pydicom.dataset import Dataset

from inference.chat import (
    IMAGE_PLACEHOLDER,
    AnswerConstraint,
    BoxConvention,
    ChatModel,
    EngineUnavailable,
    Generation,
    Turn,
)
from inference.constraints import constraint_for
from inference.images import ModelImage, prepare_images
from inference.operating_points import applied_threshold, decide_presence
from inference.parsing import ImageGeometry, option_label, parse_answer
from inference.record import (
    Box,
    Finding,
    ParsedAnswer,
    Presence,
    Provenance,
    QType,
    QuestionResult,
    ReasoningRecord,
    Report,
    StageResult,
    StageStatus,
)
from inference.scores import answer_probability, presence_probability
from inference.stages import (
    CANONICAL_STAGES,
    AnatomyDef,
    FindingDef,
    ForEach,
    QuestionDef,
    Records,
    StageBook,
    StageDef,
    load_stages,
)

log = logging.getLogger(__name__)

LABELS = "ABCDEFGHIJKLMNOPQRSTUVWXYZ"


def software_version() -> str:
    try:
        return metadata.version("cxr-reasoning-node")
    except metadata.PackageNotFoundError:
        return "unknown"


def _now() -> str:
    return dt.datetime.now(dt.UTC).isoformat(timespec="seconds")


def render_options(options: Sequence[str]) -> str:
    """``A. first; B. second`` (options already labelled are kept as written)."""
    if all(option_label(o) for o in options):
        return "; ".join(o.rstrip(".") for o in options)
    return "; ".join(f"{LABELS[i]}. {o}" for i, o in enumerate(options))


@dataclass
class _State:
    """What the conversation knows so far."""

    history: list[Turn] = field(default_factory=list)
    current_shown: bool = False
    prior_shown: bool = False
    findings: dict[str, Finding] = field(default_factory=dict)
    report: Report = field(default_factory=Report)
    geometry: list[ImageGeometry] = field(default_factory=list)
    prompt_tokens: int = 0
    cached_tokens: int = 0
    generated_tokens: int = 0
    constrain: bool = True  # closed answers constrained at decoding
    parallel_within_stage: bool = False  # a stage's independent questions asked together
    thresholds: Mapping[str, float] = field(default_factory=dict)  # finding key -> operating point

    @property
    def positive_keys(self) -> list[str]:
        return [k for k, f in self.findings.items() if f.presence is Presence.PRESENT]


def _provenance_fields(model: ChatModel, provenance: Any) -> dict[str, Any]:
    source: Any = provenance if provenance is not None else getattr(model, "info", None)
    if isinstance(source, Provenance):
        fields = source.model_dump()
    elif hasattr(source, "provenance_fields"):
        fields = dict(source.provenance_fields())
    elif isinstance(source, Mapping):
        fields = dict(source)
    elif source is not None:
        fields = {k: getattr(source, k) for k in Provenance.model_fields if hasattr(source, k)}
    else:
        fields = {}
    defaults = {"model_dir": "", "model_name": type(model).__name__, "weights_sha256": "", "profile": "unknown",
                "quantization": "unknown", "dtype": "unknown", "device": "unknown", "demo_model": False,
                "software_version": software_version()}
    return {**defaults, **{k: v for k, v in fields.items() if k in Provenance.model_fields}}


def _budget(book: StageBook, question: QuestionDef, override: int | Mapping[QType, int] | None) -> int:
    budget = book.budget(question)
    if isinstance(override, int):
        return max(1, min(budget, override))
    if override and question.qtype in override:
        return int(override[question.qtype])
    return budget


def _items(book: StageBook, question: QuestionDef, state: _State) -> list[FindingDef | AnatomyDef | None]:
    if question.for_each is ForEach.NONE:
        return [None]
    if question.for_each is ForEach.ANATOMY:
        return list(book.anatomy)
    pool = book.findings
    if question.for_each is ForEach.POSITIVE_FINDING:
        positive = set(state.positive_keys)
        pool = [f for f in pool if f.key in positive]
    if question.groups is not None:
        pool = [f for f in pool if f.group in question.groups]
    return list(pool)


def _needs_prior(stage: StageDef, question: QuestionDef) -> bool:
    return bool((stage.when and stage.when.prior) or (question.when and question.when.prior))


def _question_turn(
    book: StageBook, stage: StageDef, question: QuestionDef, item: FindingDef | AnatomyDef | None,
    state: _State, current: Sequence[ModelImage], prior: Sequence[ModelImage],
) -> tuple[Turn, str, bool, bool]:
    """The user turn (with images where they enter), its text, and whether it shows the current / prior images."""
    text = question.text
    if item is not None:
        text = text.format(term=item.term, label=item.label, key=item.key)
    if question.options:
        prompt = (book.options_prompt.single_choice if question.qtype is QType.SINGLE_CHOICE
                  else book.options_prompt.multi_choice)
        text = f"{text} {prompt.replace('{options}', render_options(question.options))}"
    prefixes: list[str] = []
    images: list[Any] = []
    if not state.current_shown:
        prefixes.append(book.image_prompts.current.replace("{images}", " ".join([IMAGE_PLACEHOLDER] * len(current))))
        images += [m.image for m in current]
    shows_prior = bool(prior) and not state.prior_shown and _needs_prior(stage, question)
    if shows_prior:
        prefixes.append(book.image_prompts.prior.replace("{images}", " ".join([IMAGE_PLACEHOLDER] * len(prior))))
        images += [m.image for m in prior]
    full = " ".join([*prefixes, text])
    return Turn(role="user", text=full, images=tuple(images)), full, not state.current_shown, shows_prior


def _update_geometry(state: _State, generation: Generation) -> None:
    for k, (width, height) in enumerate(generation.model_image_sizes):
        if k < len(state.geometry):
            g = state.geometry[k]
            state.geometry[k] = ImageGeometry(g.index, g.columns, g.rows, int(width), int(height))


def _apply(book: StageBook, question: QuestionDef, item: FindingDef | AnatomyDef | None, qid: str,
           parsed: ParsedAnswer, raw: str, state: _State, probabilities: Mapping[str, float]) -> None:
    """Carry an answer into findings and report as ``records`` says."""
    if question.records is Records.PRESENCE and isinstance(item, FindingDef):
        answer = parsed.yes_no if parsed.ok else None
        probability = presence_probability(probabilities)
        threshold = applied_threshold(probability, state.thresholds.get(item.key))
        presence = decide_presence(answer, probability, threshold, hedged=book.is_hedged(parsed.justification))
        state.findings[item.key] = Finding(key=item.key, label=item.label, presence=presence, question_id=qid,
                                           probability=probability, threshold=threshold)
    elif question.records is Records.ATTRIBUTES and isinstance(item, FindingDef) and parsed.ok:
        finding = state.findings.get(item.key)
        if finding is not None:
            value = ", ".join(parsed.choices) if parsed.choices else parsed.text
            finding.attributes.append(value)
    elif question.records is Records.BOXES and parsed.ok and isinstance(item, FindingDef):
        finding = state.findings.get(item.key)
        if finding is not None:
            finding.boxes.extend(parsed.boxes)
    elif question.records is Records.REPORT_FINDINGS:
        state.report.findings = parsed.text if parsed.ok else raw.strip()
    elif question.records is Records.REPORT_IMPRESSION:
        state.report.impression = parsed.text if parsed.ok else raw.strip()


def _constraint(model: ChatModel, question: QuestionDef, item: FindingDef | AnatomyDef | None,
                state: _State, first_image: ModelImage) -> AnswerConstraint | None:
    """The decoding constraint of a closed question (boxes sized to the first image as the model sees it: as it
    saw it, or, before the model has seen it, as it will)."""
    first = state.geometry[0] if state.geometry else None
    size = (first.model_width, first.model_height) if first and first.model_width and first.model_height else None
    if size is None and question.qtype is QType.DETECTION and model.box_convention is BoxConvention.RESIZED_PIXELS:
        size = model.model_image_size(first_image.image)
    target = item.term if item is not None else ""
    return constraint_for(question.qtype, question.options, model.box_convention, size, target)


@dataclass
class _Ask:
    """One question about to be asked: its turn and how it is decoded."""

    stage: StageDef
    question: QuestionDef
    item: FindingDef | AnatomyDef | None
    qid: str
    turn: Turn
    text: str
    shows_current: bool
    shows_prior: bool
    budget: int
    constraint: AnswerConstraint | None


def _prepare(model: ChatModel, book: StageBook, stage: StageDef, question: QuestionDef,
             item: FindingDef | AnatomyDef | None, state: _State, current: Sequence[ModelImage],
             prior: Sequence[ModelImage], override: int | Mapping[QType, int] | None) -> _Ask:
    qid = question.id + (f":{item.key}" if item is not None else "")
    turn, text, shows_current, shows_prior = _question_turn(book, stage, question, item, state, current, prior)
    constraint = _constraint(model, question, item, state, current[0]) if state.constrain else None
    return _Ask(stage, question, item, qid, turn, text, shows_current, shows_prior,
                _budget(book, question, override), constraint)


def _generate(model: ChatModel, ask: _Ask, history: list[Turn]) -> tuple[Generation | Exception, float]:
    """The model's answer to ``ask`` after ``history`` (or the exception it raised) and the seconds it took.
    ``EngineUnavailable`` is raised: the engine is down and the whole study is retried later."""
    start = time.perf_counter()
    try:
        generation = (model.answer(list(history), ask.turn, ask.budget, ask.constraint)
                      if ask.constraint is not None else model.answer(list(history), ask.turn, ask.budget))
    except EngineUnavailable:
        raise
    except Exception as exc:  # a model failure fails the stage, not the study
        log.error("model failed on question %s", ask.qid, exc_info=exc)
        return exc, time.perf_counter() - start
    return generation, time.perf_counter() - start


def _record(model: ChatModel, book: StageBook, ask: _Ask, outcome: Generation | Exception, seconds: float,
            state: _State) -> tuple[QuestionResult, str | None]:
    """Carry an answer into the conversation, findings and report; the question's result and its error."""
    question, item, qid, text = ask.question, ask.item, ask.qid, ask.text
    finding_key = item.key if isinstance(item, FindingDef) else None
    if isinstance(outcome, Exception):
        error = f"model error: {type(outcome).__name__}: {outcome}"
        result = QuestionResult(id=qid, stage=ask.stage.number, qtype=question.qtype, question=text,
                                options=list(question.options), finding=finding_key, raw_answer="",
                                parsed=ParsedAnswer(ok=False, error=error), seconds=round(seconds, 4))
        return result, error  # images not shown yet enter again with the next question
    generation = outcome
    state.current_shown = state.current_shown or ask.shows_current
    state.prior_shown = state.prior_shown or ask.shows_prior
    _update_geometry(state, generation)
    target = item.key if item is not None else ""
    parsed = parse_answer(generation.text, question.qtype, question.options, box_convention=model.box_convention,
                          images=state.geometry, default_image_index=0, wrapper=model.answer_wrapper,
                          default_target=target)
    if item is not None and parsed.boxes:  # boxes of per-item questions are named by the item's key
        parsed.boxes = [Box(**{**b.model_dump(), "target": item.key}) for b in parsed.boxes]
    # A reasoning model's <think> part stays in the record but not in the conversation (it would crowd the context).
    kept = parsed.text if parsed.think is not None and parsed.text else generation.text
    state.history += [ask.turn, Turn(role="assistant", text=kept)]
    state.prompt_tokens += generation.prompt_tokens
    state.cached_tokens += generation.cached_tokens
    state.generated_tokens += generation.generated_tokens
    probabilities = dict(generation.choice_probabilities)
    _apply(book, question, item, qid, parsed, generation.text, state, probabilities)
    if not parsed.ok:
        log.debug("answer to %s did not parse: %s", qid, parsed.error)
    return QuestionResult(
        id=qid, stage=ask.stage.number, qtype=question.qtype, question=text, options=list(question.options),
        finding=finding_key, raw_answer=generation.text, parsed=parsed,
        prompt_tokens=generation.prompt_tokens, cached_tokens=generation.cached_tokens,
        generated_tokens=generation.generated_tokens, seconds=round(generation.seconds, 4),
        choice_probabilities=probabilities,
        answer_probability=answer_probability(probabilities, question.qtype, parsed, generation.text),
    ), None


MAX_IN_FLIGHT = 32  # questions of one stage sent to a concurrent (remote) model at once


def _generate_wave(model: ChatModel, asks: Sequence[_Ask],
                   history: list[Turn]) -> list[tuple[Generation | Exception, float]]:
    """Answers to ``asks``, each after the same ``history`` (blind to each other): concurrently when the model
    takes several requests at once (a serving engine batches them), else one after the other."""
    if len(asks) < 2 or not getattr(model, "concurrent", False):
        return [_generate(model, ask, history) for ask in asks]
    from concurrent.futures import ThreadPoolExecutor

    with ThreadPoolExecutor(max_workers=min(len(asks), MAX_IN_FLIGHT), thread_name_prefix="stage") as pool:
        futures = [pool.submit(_generate, model, ask, history) for ask in asks]
        outcomes: list[tuple[Generation | Exception, float]] = []
        down: EngineUnavailable | None = None
        for future in futures:  # wait for all before raising: no request is left running behind the study
            try:
                outcomes.append(future.result())
            except EngineUnavailable as exc:
                down = down or exc
    if down is not None:
        raise down
    return outcomes


def _ask(model: ChatModel, book: StageBook, stage: StageDef, question: QuestionDef,
         item: FindingDef | AnatomyDef | None, state: _State, current: Sequence[ModelImage],
         prior: Sequence[ModelImage], override: int | Mapping[QType, int] | None) -> tuple[QuestionResult, str | None]:
    ask = _prepare(model, book, stage, question, item, state, current, prior, override)
    outcome, seconds = _generate(model, ask, state.history)
    return _record(model, book, ask, outcome, seconds, state)


def _run_stage(model: ChatModel, book: StageBook, number: int, state: _State, current: Sequence[ModelImage],
               prior: Sequence[ModelImage], override: int | Mapping[QType, int] | None) -> StageResult:
    stage = book.stage(number)
    key, title = CANONICAL_STAGES[number]
    if stage is None:
        return StageResult(number=number, key=key, title=title, status=StageStatus.NOT_APPLICABLE,
                           reason="not in the stage configuration")
    def not_applicable(reason: str) -> StageResult:
        return StageResult(number=number, key=stage.key, title=stage.title, status=StageStatus.NOT_APPLICABLE,
                           reason=reason)

    if not stage.enabled:
        return not_applicable("disabled in the stage configuration")
    if stage.when:
        unmet = stage.when.unmet(bool(prior), len(state.positive_keys))
        if unmet:
            return not_applicable(unmet)
    start = time.perf_counter()
    answered = (_ask_together if state.parallel_within_stage else _ask_in_turn)(
        model, book, stage, state, current, prior, override)
    results = [result for result, _ in answered]
    errors = [f"{result.id}: {error}" for result, error in answered if error]
    seconds = round(time.perf_counter() - start, 4)
    if not results:
        return not_applicable("no question applies (no positive findings)")
    if errors:
        return StageResult(number=number, key=stage.key, title=stage.title, status=StageStatus.FAILED,
                           reason="; ".join(errors), questions=results, seconds=seconds)
    return StageResult(number=number, key=stage.key, title=stage.title, status=StageStatus.COMPLETED,
                       questions=results, seconds=seconds)


Answered = list[tuple[QuestionResult, str | None]]


def _ask_in_turn(model: ChatModel, book: StageBook, stage: StageDef, state: _State, current: Sequence[ModelImage],
                 prior: Sequence[ModelImage], override: int | Mapping[QType, int] | None) -> Answered:
    """The stage's questions one after the other, each seeing every earlier answer."""
    answered: Answered = []
    for question in stage.questions:
        if question.when and question.when.unmet(bool(prior), len(state.positive_keys)):
            continue
        for item in _items(book, question, state):
            answered.append(_ask(model, book, stage, question, item, state, current, prior, override))
    return answered


def _depends_on_presence(question: QuestionDef) -> bool:
    """Whether the question's items or condition come from the findings' presence."""
    return question.for_each is ForEach.POSITIVE_FINDING or bool(
        question.when and question.when.min_positive_findings)


def _ask_together(model: ChatModel, book: StageBook, stage: StageDef, state: _State, current: Sequence[ModelImage],
                  prior: Sequence[ModelImage], override: int | Mapping[QType, int] | None) -> Answered:
    """The stage's independent questions asked together (``reasoning.parallel_within_stage``).

    A wave of questions is asked after the same history, so its questions do not see each other's answers; then
    their turns enter the conversation in stage order, which later stages see whole. A question that brings the
    images into the conversation is asked alone first (images enter once), and a question whose items or
    condition depend on a presence answer of the wave waits for the wave to be answered. The answers are the
    sequential mode's as far as the model does not use the answers it no longer sees.
    """
    answered: Answered = []
    wave: list[_Ask] = []

    def flush() -> None:
        outcomes = _generate_wave(model, wave, state.history)
        for ask, (outcome, seconds) in zip(wave, outcomes, strict=True):
            answered.append(_record(model, book, ask, outcome, seconds, state))
        wave.clear()

    for question in stage.questions:
        if wave and _depends_on_presence(question) and any(a.question.records is Records.PRESENCE for a in wave):
            flush()
        if question.when and question.when.unmet(bool(prior), len(state.positive_keys)):
            continue
        for item in _items(book, question, state):
            shows_images = not state.current_shown or (
                bool(prior) and not state.prior_shown and _needs_prior(stage, question))
            if shows_images:
                if wave:
                    flush()
                answered.append(_ask(model, book, stage, question, item, state, current, prior, override))
            else:
                wave.append(_prepare(model, book, stage, question, item, state, current, prior, override))
    if wave:
        flush()
    return answered


def _seed(seed: int) -> None:
    random.seed(seed)
    try:
        import torch

        torch.manual_seed(seed)
    except ImportError:  # pragma: no cover - torch is a dependency
        pass


def run_flow_images(
    model: ChatModel,
    current: Sequence[ModelImage],
    prior: Sequence[ModelImage] = (),
    stages: StageBook | None = None,
    provenance: Any = None,
    *,
    max_new_tokens: int | Mapping[QType, int] | None = None,
    seed: int = 0,
    constrain: bool = True,
    parallel_within_stage: bool = False,
    thresholds: Mapping[str, float] | None = None,
) -> ReasoningRecord:
    """Run the flow on prepared images (current study first, frontal first). See :func:`run_flow`."""
    if not current:
        raise ValueError("the flow needs at least one current image")
    book = stages or load_stages()
    reset = getattr(model, "reset_cache", None)
    if callable(reset):  # a new study: the previous study's cached prefix cannot be reused
        reset()
    started, wall = _now(), time.perf_counter()
    _seed(seed)
    all_images = [*current, *prior]
    refs = [m.ref(i) for i, m in enumerate(all_images)]
    state = _State(geometry=[ImageGeometry(i, m.columns, m.rows) for i, m in enumerate(all_images)],
                   constrain=constrain, parallel_within_stage=parallel_within_stage, thresholds=dict(thresholds or {}))
    stage_results = [_run_stage(model, book, n, state, current, prior, max_new_tokens) for n in CANONICAL_STAGES]
    fields = _provenance_fields(model, provenance)
    fields.update(seed=seed, started_at=started, finished_at=_now(), seconds=round(time.perf_counter() - wall, 4),
                  prompt_tokens=state.prompt_tokens, cached_tokens=state.cached_tokens,
                  generated_tokens=state.generated_tokens, parallel_within_stage=parallel_within_stage)
    return ReasoningRecord(
        study_instance_uid=current[0].study_instance_uid,
        prior_study_instance_uid=prior[0].study_instance_uid if prior else None,
        images=refs,
        stages=stage_results,
        findings=[state.findings[f.key] for f in book.findings if f.key in state.findings],
        report=state.report,
        provenance=Provenance(**fields),
    )


class FlowOptions(TypedDict, total=False):
    """The keyword options of :func:`run_flow_images` (absent ones keep its defaults)."""

    max_new_tokens: int | Mapping[QType, int] | None
    seed: int
    constrain: bool
    parallel_within_stage: bool
    thresholds: Mapping[str, float] | None


def run_flow(model: ChatModel, current: Sequence[Dataset], prior: Sequence[Dataset] = (),
             stages: StageBook | None = None, provenance: Any = None, *, max_side: int | None = None,
             **options: Unpack[FlowOptions]) -> ReasoningRecord:
    """Walk the stages for one study (and optionally its prior) and return the reasoning record.

    ``provenance``: a ``Provenance``, an object with ``provenance_fields()`` (the engine's ``ModelInfo``), a mapping,
    or None to use ``model.info``. ``max_new_tokens``: an int caps every question's budget; a mapping sets budgets
    per qtype; None uses the stage book. ``max_side`` shrinks images before the model sees them (boxes still map
    to source pixels). ``constrain``: closed answers (yes/no, choices, boxes) are decoded under their grammar
    (``inference.constraints``); False lets the model write freely (for comparison). ``parallel_within_stage``:
    the independent questions of a stage are asked together, blind to each other's answers (concurrently when the
    model is a serving engine; see ``_ask_together``). ``thresholds``: finding key -> operating point; a finding
    with one is present when its probability of presence reaches it (``inference.operating_points``), the others
    follow the model's answer. Presence decides which findings stages 3-5 ask about.
    Raises ``inference.images.ImageError`` when a study has no usable image.
    """
    current_images = prepare_images(current, "current", max_side)
    prior_images = prepare_images(prior, "prior", max_side) if prior else []
    return run_flow_images(model, current_images, prior_images, stages, provenance, **options)
