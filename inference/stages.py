"""The stage book (package data ``inference/data/stages.yaml``) loaded and validated (pydantic), errors reported with
their line.

A hospital edits the YAML, never code. ``load_stages()`` refuses a malformed file with
``StageConfigError("<file>:<line>: <where>: <reason>")``.
"""
from __future__ import annotations

import string
from enum import StrEnum
from importlib import resources
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import AfterValidator, BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from inference.record import QType

# The stage book shipped inside the package (config/stages.yaml in a clone is a link to it).
DEFAULT_STAGES_PATH = Path(str(resources.files("inference.data").joinpath("stages.yaml")))

# The eight CXRTrek stages: number -> (key, title). The record always carries all eight.
CANONICAL_STAGES: dict[int, tuple[str, str]] = {
    1: ("quality_view", "Quality assessment and view"),
    2: ("findings", "Findings identification"),
    3: ("attributes", "Attribute description and localization"),
    4: ("relationships", "Relationship analysis"),
    5: ("comparison", "Comparison with prior study"),
    6: ("trend", "Future trend"),
    7: ("advice", "Diagnosis advice"),
    8: ("report", "Report generation"),
}

IMAGE_SLOT = "{images}"
DEFAULT_HEDGES = ("possibly", "possible", "probably", "questionable", "equivocal", "uncertain", "indeterminate",
                  "cannot be excluded", "cannot exclude", "not excluded", "difficult to assess")


class StageConfigError(ValueError):
    """A stage file that cannot be used; the message names the file, the line and the reason."""


class ForEach(StrEnum):
    NONE = "none"
    FINDING = "finding"
    POSITIVE_FINDING = "positive_finding"
    ANATOMY = "anatomy"


class Records(StrEnum):
    PRESENCE = "presence"
    ATTRIBUTES = "attributes"
    BOXES = "boxes"
    REPORT_FINDINGS = "report_findings"
    REPORT_IMPRESSION = "report_impression"


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class FindingDef(_Strict):
    key: str = Field(pattern=r"^[a-z][a-z0-9_]*$")
    label: str = Field(min_length=1)
    term: str = Field(min_length=1)  # wording used inside questions
    group: Literal["disease", "device"] = "disease"


class AnatomyDef(_Strict):
    key: str = Field(pattern=r"^[a-z][a-z0-9_]*$")
    label: str = Field(min_length=1)
    term: str = Field(min_length=1)


class Condition(_Strict):
    prior: bool | None = None
    min_positive_findings: int | None = Field(default=None, ge=0)

    def describe(self) -> str:
        parts = []
        if self.prior is True:
            parts.append("needs a prior study")
        elif self.prior is False:
            parts.append("only without a prior study")
        if self.min_positive_findings is not None:
            parts.append(f"needs at least {self.min_positive_findings} positive findings")
        return " and ".join(parts) or "always"

    def unmet(self, has_prior: bool, positive_findings: int) -> str | None:
        """Why the condition is not met, or None when it is."""
        if self.prior is True and not has_prior:
            return "no prior study was given"
        if self.prior is False and has_prior:
            return "a prior study was given"
        if self.min_positive_findings is not None and positive_findings < self.min_positive_findings:
            return (f"{positive_findings} positive finding(s); the stage needs at least "
                    f"{self.min_positive_findings}")
        return None


_PLACEHOLDERS = {ForEach.NONE: set(), ForEach.FINDING: {"term", "label", "key"},
                 ForEach.POSITIVE_FINDING: {"term", "label", "key"}, ForEach.ANATOMY: {"term", "label", "key"}}


class QuestionDef(_Strict):
    id: str = Field(pattern=r"^[A-Za-z0-9_.\-]+$")
    text: str = Field(min_length=1)
    qtype: QType
    options: list[str] = Field(default_factory=list)
    for_each: ForEach = ForEach.NONE
    groups: list[Literal["disease", "device"]] | None = None
    when: Condition | None = None
    records: Records | None = None
    max_new_tokens: int | None = Field(default=None, ge=1, le=8192)

    @field_validator("text")
    @classmethod
    def _no_image_placeholder(cls, text: str) -> str:
        if "<image>" in text:
            raise ValueError("images are placed by image_prompts; do not write <image> in a question")
        return text

    @model_validator(mode="after")
    def _consistent(self) -> QuestionDef:
        choice = self.qtype in (QType.SINGLE_CHOICE, QType.MULTI_CHOICE)
        if choice and len(self.options) < 2:
            raise ValueError(f"@options: a {self.qtype.value} question needs at least two options")
        if not choice and self.options:
            raise ValueError(f"@options: a {self.qtype.value} question takes no options")
        if len(set(self.options)) != len(self.options):
            raise ValueError("@options: options repeat")
        try:
            fields = {f for _, f, _, _ in string.Formatter().parse(self.text) if f is not None}
        except ValueError as exc:
            raise ValueError(f"@text: bad placeholder: {exc}") from None
        allowed = _PLACEHOLDERS[self.for_each]
        if fields - allowed:
            bad = ", ".join("{" + f + "}" for f in sorted(fields - allowed))
            raise ValueError(f"@text: placeholder {bad} not allowed with for_each: {self.for_each.value}"
                             + (f" (allowed: {', '.join(sorted(allowed))})" if allowed else ""))
        if self.groups is not None and self.for_each not in (ForEach.FINDING, ForEach.POSITIVE_FINDING):
            raise ValueError("@groups: groups needs for_each: finding or positive_finding")
        if self.records is Records.PRESENCE and (self.qtype is not QType.YES_NO
                                                 or self.for_each is not ForEach.FINDING):
            raise ValueError("@records: presence needs qtype yes_no and for_each: finding")
        if self.records is Records.BOXES and self.qtype is not QType.DETECTION:
            raise ValueError("@records: boxes needs qtype detection")
        if self.records in (Records.REPORT_FINDINGS, Records.REPORT_IMPRESSION) and self.for_each is not ForEach.NONE:
            raise ValueError("@records: report questions cannot be asked per item (for_each must be none)")
        if self.records is Records.ATTRIBUTES and self.for_each not in (ForEach.FINDING, ForEach.POSITIVE_FINDING):
            raise ValueError("@records: attributes needs for_each: finding or positive_finding")
        return self


class StageDef(_Strict):
    number: int = Field(ge=1, le=8)
    key: str = Field(pattern=r"^[a-z][a-z0-9_]*$")
    title: str = Field(min_length=1)
    enabled: bool = True
    when: Condition | None = None
    questions: list[QuestionDef] = Field(min_length=1)


def _with_slot(slot: str) -> AfterValidator:
    """A prompt text that must contain ``slot``."""

    def check(text: str) -> str:
        if slot not in text:
            raise ValueError(f"must contain {slot}")
        return text

    return AfterValidator(check)


class ImagePrompts(_Strict):
    current: Annotated[str, _with_slot(IMAGE_SLOT)] = "Here is the current X-ray image: {images} ."
    prior: Annotated[str, _with_slot(IMAGE_SLOT)] = "Reference X-ray: {images} ."


class OptionsPrompt(_Strict):
    single_choice: Annotated[str, _with_slot("{options}")] = (
        "Select the correct answer from the options below: [ {options} ].")
    multi_choice: Annotated[str, _with_slot("{options}")] = "Select all that apply: [ {options} ]."


class StageBook(_Strict):
    """The whole stage configuration."""

    version: Literal[1] = 1
    system_prompt: str = ""
    image_prompts: ImagePrompts = Field(default_factory=ImagePrompts)
    options_prompt: OptionsPrompt = Field(default_factory=OptionsPrompt)
    max_new_tokens: dict[QType, int] = Field(default_factory=dict)
    # A yes/no checklist answer whose justification starts with (or contains) one of these is "uncertain".
    hedges: list[str] = Field(default_factory=lambda: list(DEFAULT_HEDGES))
    findings: list[FindingDef] = Field(min_length=1)
    anatomy: list[AnatomyDef] = Field(default_factory=list)
    stages: list[StageDef] = Field(min_length=1)

    @field_validator("max_new_tokens")
    @classmethod
    def _positive(cls, value: dict[QType, int]) -> dict[QType, int]:
        for qtype, n in value.items():
            if not 1 <= n <= 8192:
                raise ValueError(f"{qtype.value}: {n} is not within 1..8192")
        return value

    @model_validator(mode="after")
    def _unique(self) -> StageBook:
        # Messages start with "@dotted.path: " so the loader can point at the offending line.
        items: list[tuple[str, str, Any]] = []
        items += [("finding key", f"findings.{i}.key", f.key) for i, f in enumerate(self.findings)]
        items += [("anatomy key", f"anatomy.{i}.key", a.key) for i, a in enumerate(self.anatomy)]
        items += [("stage number", f"stages.{i}.number", s.number) for i, s in enumerate(self.stages)]
        items += [("question id", f"stages.{i}.questions.{j}.id", q.id)
                  for i, s in enumerate(self.stages) for j, q in enumerate(s.questions)]
        seen: set[tuple[str, Any]] = set()
        for what, where, value in items:
            if (what, value) in seen:
                raise ValueError(f"@{where}: {what} {value!r} appears twice")
            seen.add((what, value))
        for i in range(1, len(self.stages)):
            if self.stages[i].number < self.stages[i - 1].number:
                raise ValueError(f"@stages.{i}.number: stages must be listed in order of their number")
        for i, s in enumerate(self.stages):
            for j, q in enumerate(s.questions):
                if q.for_each is ForEach.POSITIVE_FINDING and s.number <= 2:
                    raise ValueError(f"@stages.{i}.questions.{j}.for_each: positive_finding needs a stage after "
                                     "stage 2 (presence is decided in stage 2)")
        return self

    def is_hedged(self, text: str | None) -> bool:
        """True when ``text`` (a yes/no justification) expresses uncertainty."""
        words = (text or "").casefold()
        return any(words.startswith(h.casefold()) or (" " in h and h.casefold() in words) for h in self.hedges)

    def stage(self, number: int) -> StageDef | None:
        return next((s for s in self.stages if s.number == number), None)

    def finding(self, key: str) -> FindingDef:
        return next(f for f in self.findings if f.key == key)

    def budget(self, question: QuestionDef, default: int = 64) -> int:
        """Max new tokens for a question: its own, else its qtype's, else ``default``."""
        return question.max_new_tokens or self.max_new_tokens.get(question.qtype, default)

    @property
    def presence_questions(self) -> list[QuestionDef]:
        return [q for s in self.stages for q in s.questions if q.records is Records.PRESENCE]


def _line_of(node: yaml.Node | None, loc: tuple[int | str, ...]) -> tuple[int, str]:
    """The 1-based line of the deepest YAML node on ``loc`` and the path walked to it."""
    if node is None:
        return 1, ""
    line = node.start_mark.line + 1
    walked: list[str] = []
    for part in loc:
        child: yaml.Node | None = None
        if isinstance(node, yaml.MappingNode):
            for key_node, value_node in node.value:
                if key_node.value == part or (isinstance(part, str) and str(key_node.value) == part):
                    child = value_node
                    line = key_node.start_mark.line + 1
                    break
        elif isinstance(node, yaml.SequenceNode) and isinstance(part, int) and 0 <= part < len(node.value):
            child = node.value[part]
            line = child.start_mark.line + 1
        if child is None:
            break
        walked.append(f"[{part}]" if isinstance(part, int) else (("." if walked else "") + str(part)))
        node = child
    return line, "".join(walked)


def parse_stages(text: str, source: str = "<stages>") -> StageBook:
    """Validate stage YAML text; raise :class:`StageConfigError` naming the line and the reason."""
    try:
        node = yaml.compose(text, Loader=yaml.SafeLoader)
        data = yaml.safe_load(text)
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        line = mark.line + 1 if mark else 1
        raise StageConfigError(f"{source}:{line}: YAML syntax: {exc.problem or exc.context}") from None
    if not isinstance(data, dict):
        raise StageConfigError(f"{source}:1: the stage file must be a mapping with findings and stages")
    try:
        return StageBook.model_validate(data)
    except ValidationError as exc:
        messages = []
        for err in exc.errors():
            loc = tuple(p for p in err["loc"] if not (isinstance(p, str) and p.startswith(("function-", "list["))))
            reason = err["msg"].removeprefix("Value error, ")
            if reason.startswith("@") and ": " in reason:
                path, reason = reason[1:].split(": ", 1)
                loc = loc + tuple(int(p) if p.isdigit() else p for p in path.split("."))
            line, where = _line_of(node, loc)
            messages.append(f"{source}:{line}: {where or 'top level'}: {reason}")
        raise StageConfigError("\n".join(messages)) from None


def load_stages(path: str | Path | None = None) -> StageBook:
    """Load and validate a stage file (default: the one shipped in the package)."""
    path = Path(path) if path else DEFAULT_STAGES_PATH
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise StageConfigError(f"{path}: cannot read: {exc.strerror or exc}") from None
    return parse_stages(text, str(path))
