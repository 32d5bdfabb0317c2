"""The reasoning record: one typed, JSON-serializable result per study.

This is the contract between the reasoning engine (which fills it), the result-object writer (which renders it
into SR and SC), the evaluation harness (which scores it) and the node (which stores it next to the job).
"""
from __future__ import annotations

from enum import StrEnum
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

# 2: choice probabilities on closed questions, probability and threshold on findings (version 1 records still load:
# the new fields have defaults).
SCHEMA_VERSION = 2

UNVERIFIED_STATEMENT = "AI-generated, not verified by a physician."
DEMO_STATEMENT = "DEMO: output of an untrained demo model with random weights; meaningless, for testing only."


class QType(StrEnum):
    OPEN = "open"
    YES_NO = "yes_no"
    SINGLE_CHOICE = "single_choice"
    MULTI_CHOICE = "multi_choice"
    DETECTION = "detection"


class Presence(StrEnum):
    PRESENT = "present"
    ABSENT = "absent"
    UNCERTAIN = "uncertain"


class StageStatus(StrEnum):
    COMPLETED = "completed"
    NOT_APPLICABLE = "not_applicable"  # condition not met (no prior, fewer than two positive findings, ...)
    FAILED = "failed"


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=False)


class ImageRef(_Model):
    """One image the model saw, and where it came from."""

    index: int  # 0-based position in ReasoningRecord.images; answers' image ids point here
    role: Literal["current", "prior"]
    study_instance_uid: str
    series_instance_uid: str
    sop_instance_uid: str
    sop_class_uid: str
    frame: int = 1  # 1-based frame number within the source instance
    view: str = "UNKNOWN"  # PA, AP, LATERAL, LL, RL, UNKNOWN
    rows: int  # source pixel matrix (boxes in pixels refer to this)
    columns: int


class Box(_Model):
    """A detection box: the model's own numbers, the normalized box, and source-image pixels."""

    target: str
    image_index: int  # index into ReasoningRecord.images
    raw: tuple[float, float, float, float]  # as the model wrote it, in its profile's convention
    normalized: tuple[float, float, float, float]  # x1, y1, x2, y2 as fractions of width / height, in [0, 1]
    pixels: tuple[float, float, float, float]  # x1 (column), y1 (row), x2, y2 in the source image's pixels


class ParsedAnswer(_Model):
    """The typed value of one answer. ``ok`` False means it did not parse: ``error`` says why; raw text is kept."""

    ok: bool
    error: str | None = None
    think: str | None = None  # reasoning inside <think>...</think>, when the model wrote one
    text: str = ""  # the answer with wrappers removed
    yes_no: bool | None = None
    justification: str | None = None  # text after the yes/no or after the chosen option(s)
    choices: list[str] = Field(default_factory=list)  # chosen option texts, as in the option list
    boxes: list[Box] = Field(default_factory=list)


class QuestionResult(_Model):
    id: str  # question id from stages.yaml (with a suffix for per-finding questions, e.g. "s3.box:pneumothorax")
    stage: int
    qtype: QType
    question: str  # exactly as asked (placeholders filled)
    options: list[str] = Field(default_factory=list)
    finding: str | None = None  # finding key this question is about, if any
    raw_answer: str
    parsed: ParsedAnswer
    prompt_tokens: int = 0  # prompt tokens computed by the model for this answer
    cached_tokens: int = 0  # prompt tokens reused from the prefix cache
    generated_tokens: int = 0
    seconds: float = 0.0
    # Closed questions with enumerable choices (yes/no heads, single choice): each choice's probability, normalised
    # over the choices (inference.scores); empty when the backend gave none or the answer was not constrained.
    choice_probabilities: dict[str, float] = Field(default_factory=dict)
    answer_probability: float | None = None  # the probability of the choice the answer made


class StageResult(_Model):
    number: int  # 1..8
    key: str  # e.g. "quality_view"
    title: str  # e.g. "Quality assessment and view"
    status: StageStatus
    reason: str | None = None  # why not applicable / why failed
    questions: list[QuestionResult] = Field(default_factory=list)
    seconds: float = 0.0


class Finding(_Model):
    key: str  # finding key from stages.yaml, e.g. "pleural_effusion"
    label: str  # display name, e.g. "Pleural effusion"
    presence: Presence
    question_id: str  # the checklist question that decided presence
    attributes: list[str] = Field(default_factory=list)  # stage-3 attribute answers (text)
    boxes: list[Box] = Field(default_factory=list)
    # The model's probability that the finding is present (P("Yes.") of its checklist question), None when the
    # backend gave none; and the operating point that decided ``presence`` (present at probability >= threshold),
    # None when the model's own answer decided (no threshold configured for the finding, or no probability).
    probability: float | None = None
    threshold: float | None = None


class Report(_Model):
    findings: str = ""
    impression: str = ""


class Provenance(_Model):
    model_dir: str
    model_name: str  # e.g. "Qwen2.5-VL-3B-CXR" or "cxr-node demo (untrained)"
    model_version: str = ""
    weights_sha256: str
    profile: str  # model profile name, e.g. "qwen2_5_vl"
    quantization: str  # nf4 | fp4 | int8 | none
    dtype: str
    device: str
    demo_model: bool  # True for a random-weight demo model: every output must say so
    software_version: str
    transformers_version: str = ""
    engine_url: str = ""  # remote backend: the OpenAI-compatible base URL
    engine_version: str = ""  # remote backend: the engine's /version
    parallel_within_stage: bool = False  # a stage's independent questions were asked together, blind to each other
    seed: int = 0
    started_at: str = ""  # ISO 8601 UTC
    finished_at: str = ""
    seconds: float = 0.0
    prompt_tokens: int = 0
    cached_tokens: int = 0
    generated_tokens: int = 0
    # header hygiene (sr_writer.hygiene): what was done to attributes copied from the sources, by keyword, no values
    header_repairs: list[str] = Field(default_factory=list)


class ReasoningRecord(_Model):
    schema_version: int = SCHEMA_VERSION
    study_instance_uid: str
    prior_study_instance_uid: str | None = None
    images: list[ImageRef]
    stages: list[StageResult]
    findings: list[Finding] = Field(default_factory=list)
    report: Report = Field(default_factory=Report)
    provenance: Provenance

    @property
    def positive_findings(self) -> list[Finding]:
        return [f for f in self.findings if f.presence is Presence.PRESENT]

    @property
    def unparsed_questions(self) -> list[QuestionResult]:
        return [q for s in self.stages for q in s.questions if not q.parsed.ok]

    def stage(self, number: int) -> StageResult:
        return next(s for s in self.stages if s.number == number)

    def to_json(self) -> str:
        return self.model_dump_json(indent=2)

    @classmethod
    def from_json(cls, text: str) -> ReasoningRecord:
        return cls.model_validate_json(text)

    @classmethod
    def load(cls, path: str | Path) -> ReasoningRecord:
        return cls.from_json(Path(path).read_text(encoding="utf-8"))
