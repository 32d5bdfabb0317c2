"""The whole flow on CPU with the tiny NF4 demo models of both families on synthetic DX/CR studies.

Random-weight models write gibberish: the test asserts structure (all stages, conditions, every answer parsed or
flagged with its raw text kept, provenance, token accounting), not content. A thin wrapper around the real model
answers the stage-2 checklist for chosen findings so that the positive-finding branches run with the real engine.
"""
from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pydicom
import pytest
import torch
import yaml
from pydicom.uid import JPEG2000Lossless, RLELossless

from dicomnode.demo.synthetic import StudySpec, make_study, prior_spec
from inference.chat import GRACE_TOKENS, Generation, Turn
from inference.flow import run_flow
from inference.model.profiles import ProfiledModel
from inference.record import Presence, QType, ReasoningRecord, StageStatus
from inference.stages import DEFAULT_STAGES_PATH, StageBook

FAMILIES = ("qwen2_5_vl", "llava")
KEPT_FINDINGS = ("cardiomegaly", "pleural_effusion", "chest_tube")
MAX_SIDE = 224
TOKENS = 4
VISION = {"qwen2_5_vl": ("model.visual",), "llava": ("model.vision_tower", "model.multi_modal_projector")}

pytestmark = pytest.mark.timeout(1800)


def _small_book() -> StageBook:
    """The shipped stage book with a three-item checklist (keeps CPU time low)."""
    data = yaml.safe_load(DEFAULT_STAGES_PATH.read_text(encoding="utf-8"))
    data["findings"] = [f for f in data["findings"] if f["key"] in KEPT_FINDINGS]
    return StageBook.model_validate(data)


BOOK = _small_book()


@pytest.fixture(scope="module", params=FAMILIES)
def loaded(request: pytest.FixtureRequest, demo_model_dirs: dict[str, Path]) -> Iterator[tuple[str, Any]]:
    from inference.model import load_chat_model

    model = load_chat_model(demo_model_dirs[request.param], quantization="nf4", device="cpu")
    yield request.param, model
    del model


class Steered(ProfiledModel):
    """Delegates to the real model (its profile too), but answers "Yes." to the checklist question of the given
    findings."""

    def __init__(self, model: Any, positive_terms: tuple[str, ...]) -> None:
        self.model, self.terms, self.steered = model, positive_terms, 0
        self.info, self.profile = model.info, model.profile

    def answer(self, history: list[Turn], question: Turn, max_new_tokens: int,
               constraint: object = None) -> Generation:
        generation = self.model.answer(history, question, max_new_tokens)
        if any(f"evidence of {t} in the main study" in question.text for t in self.terms):
            self.steered += 1
            return Generation(text="Yes. It is present.", prompt_tokens=generation.prompt_tokens,
                              cached_tokens=generation.cached_tokens, generated_tokens=generation.generated_tokens,
                              seconds=generation.seconds, model_image_sizes=generation.model_image_sizes)
        return generation


def _current_study() -> list[pydicom.Dataset]:
    """DX PA + lateral, MONOCHROME1, one view RLE- and one JPEG 2000-compressed."""
    study = make_study(StudySpec(rows=320, columns=256, views=("LATERAL", "PA"), photometric="MONOCHROME1"))
    study[0].compress(RLELossless)
    study[1].compress(JPEG2000Lossless)
    return study


def _prior_study() -> list[pydicom.Dataset]:
    spec = prior_spec(StudySpec(rows=320, columns=256))
    spec.modality = "CR"
    return make_study(spec)


def _assert_common(record: ReasoningRecord, family: str) -> None:
    assert [s.number for s in record.stages] == list(range(1, 9))
    for stage in record.stages:
        if stage.status is StageStatus.COMPLETED:
            assert stage.questions and stage.seconds > 0
        for q in stage.questions:
            assert q.parsed.ok or q.parsed.error, q.id  # parsed, or flagged with a reason
            assert q.raw_answer or q.parsed.error
            # a constrained choice/box answer may run past its budget to finish its grammar (yes/no keeps it)
            limit = TOKENS if q.qtype in (QType.OPEN, QType.YES_NO) else TOKENS + GRACE_TOKENS
            assert q.generated_tokens <= limit
            if q.parsed.ok and q.qtype is QType.DETECTION:
                assert q.parsed.boxes
    assert not any(s.status is StageStatus.FAILED for s in record.stages)
    assert [f.key for f in record.findings] == list(KEPT_FINDINGS)
    positives = len(record.positive_findings)
    assert (record.stage(4).status is StageStatus.COMPLETED) == (positives >= 2)
    p = record.provenance
    assert p.demo_model and p.quantization == "nf4" and p.profile == family and p.device == "cpu"
    assert p.weights_sha256 and p.model_dir
    questions = [q for s in record.stages for q in s.questions]
    assert p.prompt_tokens == sum(q.prompt_tokens for q in questions) > 0
    assert p.cached_tokens == sum(q.cached_tokens for q in questions) > 0  # the prefix cache is reused
    assert ReasoningRecord.from_json(record.to_json()) == record


def test_model_is_nf4_with_vision_tower_kept(loaded: tuple[str, Any]) -> None:
    import bitsandbytes as bnb

    family, model = loaded
    linears = {n: m for n, m in model.model.named_modules() if isinstance(m, torch.nn.Linear)}
    four_bit = [n for n, m in linears.items() if isinstance(m, bnb.nn.Linear4bit)]
    assert four_bit and all(n.startswith("model.language_model.") for n in four_bit)
    for prefix in VISION[family]:
        vision = [n for n in linears if n.startswith(prefix)]
        assert vision and not any(isinstance(linears[n], bnb.nn.Linear4bit) for n in vision)


def test_flow_with_prior_monochrome1_compressed(loaded: tuple[str, Any]) -> None:
    family, model = loaded
    current, prior = _current_study(), _prior_study()
    record = run_flow(model, current, prior, BOOK, max_new_tokens=TOKENS, max_side=MAX_SIDE)
    _assert_common(record, family)
    assert record.prior_study_instance_uid == prior[0].StudyInstanceUID
    assert [(i.role, i.view) for i in record.images] == [("current", "PA"), ("current", "LL"), ("prior", "PA")]
    assert (record.images[0].rows, record.images[0].columns) == (320, 256)
    assert record.stage(5).status is StageStatus.COMPLETED and record.stage(6).status is StageStatus.COMPLETED
    assert record.stage(5).questions[0].question.startswith("Reference X-ray: <image> .")
    assert len(record.stage(2).questions) == 1 + len(KEPT_FINDINGS)


def test_flow_without_prior_two_positive_findings(loaded: tuple[str, Any]) -> None:
    family, model = loaded
    steered = Steered(model, ("cardiomegaly", "pleural effusion"))
    record = run_flow(steered, make_study(StudySpec(rows=288, columns=240, modality="CR", views=("PA",))),
                      stages=BOOK, max_new_tokens=TOKENS, max_side=MAX_SIDE)
    assert steered.steered == 2
    _assert_common(record, family)
    assert [f.key for f in record.positive_findings] == ["cardiomegaly", "pleural_effusion"]
    assert next(f for f in record.findings if f.key == "chest_tube").presence in (Presence.ABSENT, Presence.UNCERTAIN)
    ids = [q.id for q in record.stage(3).questions]
    assert ids == ["s3.describe:cardiomegaly", "s3.describe:pleural_effusion", "s3.severity:cardiomegaly",
                   "s3.severity:pleural_effusion", "s3.box:cardiomegaly", "s3.box:pleural_effusion",
                   "s3.ground:heart", "s3.ground:right_lung", "s3.ground:left_lung"]
    assert record.stage(4).status is StageStatus.COMPLETED
    for number in (5, 6):
        assert record.stage(number).status is StageStatus.NOT_APPLICABLE
        assert record.stage(number).reason == "no prior study was given"
    assert record.prior_study_instance_uid is None and len(record.images) == 1
