"""The model runner's conversation (teacher-forced vs free, image placement) and the predictions file formats."""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from PIL import Image

from inference.chat import BoxConvention, Generation, Turn
from inference.evaluation.dataset import EvalStudy, load_dataset
from inference.evaluation.predictions import (
    PredictionsError,
    default_budgets,
    load_predictions,
    oracle,
    parsed_answers,
    run_model,
    save_predictions,
)
from inference.evaluation.scoring import score_dataset
from inference.record import QType


@dataclass
class EchoModel:
    """A scripted ChatModel: answers every question with a fixed text per qtype and records what it was given."""

    answers: dict[str, str]
    calls: list[tuple[list[Turn], Turn]] = field(default_factory=list)
    budgets: list[int] = field(default_factory=list)

    @property
    def box_convention(self) -> BoxConvention:
        return BoxConvention.PERCENT

    @property
    def answer_wrapper(self) -> str | None:
        return None

    def answer(self, history: list[Turn], question: Turn, max_new_tokens: int,
               constraint: object = None) -> Generation:
        self.calls.append((list(history), question))
        self.budgets.append(max_new_tokens)
        text = self.answers.get(question.text, "No.")
        return Generation(text=text, prompt_tokens=1, cached_tokens=0, generated_tokens=1, seconds=0.0)


def _write_images(study: EvalStudy, root: Path) -> list[tuple[int, int]]:
    sizes = []
    for i, rel in enumerate(study.image_relpaths):
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        size = (40 + 8 * i, 48 + 4 * i)
        Image.new("L", size, color=30 * (i + 1)).save(path)
        sizes.append(size)
    return sizes


@pytest.mark.parametrize("free", [False, True])
def test_runner_builds_the_conversation(demo_studies: list[EvalStudy], tmp_path: Path, free: bool) -> None:
    study = next(s for s in demo_studies if len(s.image_relpaths) == 4)
    sizes = _write_images(study, tmp_path)
    model = EchoModel({i.question: f"model answer {i.position}" for i in study.items})
    runs = run_model(model, [study], tmp_path, free=free, max_questions=12, show_progress=False)
    run = runs[study.key]
    assert len(model.calls) == len(run.predictions) == 12
    seen_sizes = []
    for n, (history, question) in enumerate(model.calls):
        item = study.items[n]
        assert question.role == "user" and question.text == item.question
        assert len(question.images) == item.n_images
        seen_sizes += [img.size for img in question.images]
        assert len(history) == 2 * n
        if n:
            previous = study.items[n - 1]
            expected = f"model answer {n - 1}" if free else previous.answer
            assert history[-1] == Turn("assistant", expected)
            assert history[-2].text == previous.question
    assert seen_sizes == sizes[: len(seen_sizes)]  # images enter at their placeholders, in study order
    assert all(img.mode == "RGB" for _, q in model.calls for img in q.images)
    # Answer budgets are the stage book's per question type (config/stages.yaml), as in production.
    assert model.budgets == [default_budgets()[i.qtype] for i in study.items[:12]]
    capped = EchoModel({})
    run_model(capped, [study], tmp_path, free=free, max_questions=3, max_new_tokens=5, show_progress=False)
    assert capped.budgets == [5, 5, 5]


def test_runner_reports_a_missing_image(demo_studies: list[EvalStudy], tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="image 1 not found"):
        run_model(EchoModel({}), demo_studies[:1], tmp_path, show_progress=False)


def test_predictions_file_round_trip_and_forms(demo_studies: list[EvalStudy], tmp_path: Path) -> None:
    studies = demo_studies[:3]
    runs = oracle(studies)
    path = tmp_path / "pred.json"
    save_predictions(path, runs)
    loaded = load_predictions(path, studies)
    assert score_dataset(studies, parsed_answers(loaded)).overall.score == 1.0

    # A list per study in dataset order, with a null (unparsed) and a shorter list (rest left out).
    data = [[i.answer for i in s.items] for s in studies]
    data[0][0] = None
    data[1] = data[1][:4]
    path.write_text(json.dumps(data))
    scores = score_dataset(studies, parsed_answers(load_predictions(path, studies)))
    assert scores.overall.unparsed == 1
    assert scores.overall.count == sum(len(s.items) for s in studies) - (len(studies[1].items) - 4)

    for bad, message in (
        ({"nope": ["x"]}, "no study key matches"),
        ({studies[0].key: [1, 2]}, "list of answer strings"),
        ({studies[0].key: ["x"] * 999}, "999 answers"),
        ({studies[0].key: {"schema_version": 1}}, "not a reasoning record"),
    ):
        path.write_text(json.dumps(bad))
        with pytest.raises(PredictionsError, match=message):
            load_predictions(path, studies)


def test_predictions_from_reasoning_records(demo_studies: list[EvalStudy], tmp_path: Path) -> None:
    """A record's questions are matched to items by their text; its parsed answers are scored as they are."""
    from inference.evaluation.predictions import parse_for_item
    from inference.record import Provenance, QuestionResult, ReasoningRecord, StageResult, StageStatus

    study = demo_studies[0]
    asked = study.items[:6]
    questions = [
        QuestionResult(
            id=f"item:{it.position}",
            stage=it.stage,
            qtype=it.qtype,
            question="  " + it.question.replace(" ", "  ") + " ",  # whitespace differences do not matter
            options=list(it.options),
            raw_answer=it.answer,
            parsed=parse_for_item(it, it.answer),
        )
        for it in asked
    ]
    record = ReasoningRecord(
        study_instance_uid="1.2.3",
        images=[],
        stages=[StageResult(number=1, key="all", title="all", status=StageStatus.COMPLETED, questions=questions)],
        provenance=Provenance(
            model_dir="x", model_name="x", weights_sha256="0", profile="x", quantization="none", dtype="fp32",
            device="cpu", demo_model=True, software_version="0",
        ),
    )
    path = tmp_path / "records.json"
    path.write_text(json.dumps({study.key: json.loads(record.to_json())}))
    scores = score_dataset([study], parsed_answers(load_predictions(path, [study])))
    assert scores.overall.count == len(study.items)
    assert scores.overall.unparsed == len(study.items) - len(asked)
    answered = [i for i in scores.items if i.position < len(asked)]
    assert all(i.score == 1.0 for i in answered)


def test_dataset_errors_name_the_item(tmp_path: Path, demo_path: Path) -> None:
    from inference.evaluation.dataset import DatasetError

    data = json.loads(demo_path.read_text())[:2]
    data[1]["cxrtrek_data"]["content"][3]["qtype"] = "essay"
    path = tmp_path / "bad.json"
    path.write_text(json.dumps(data))
    with pytest.raises(DatasetError, match=r"study 1 \(.*\) item 3: unknown qtype 'essay'"):
        load_dataset(path)
    det = next(i for i, it in enumerate(data[0]["cxrtrek_data"]["content"]) if it["qtype"] == "detection")
    data[1]["cxrtrek_data"]["content"][3]["qtype"] = "captioning"
    data[0]["cxrtrek_data"]["content"][det]["image_id"] = 9
    path.write_text(json.dumps(data))
    with pytest.raises(DatasetError, match=rf"study 0 .* item {det}: image_id 9 outside"):
        load_dataset(path)


def test_repeated_study_ids_get_unique_keys(demo_studies: list[EvalStudy]) -> None:
    keys = [s.key for s in demo_studies]
    assert len(set(keys)) == len(keys) == 80
    assert "study1#2" in keys and all(s.study_id == s.key.split("#")[0] for s in demo_studies)
    assert {i.qtype for s in demo_studies for i in s.items} == set(QType)


@dataclass
class PixelBoxModel(EchoModel):
    """Writes boxes in pixels of its resized input (half the image here), like Qwen2.5-VL, and records the
    constraint of each question."""

    constraints: list[object] = field(default_factory=list)

    @property
    def box_convention(self) -> BoxConvention:
        return BoxConvention.RESIZED_PIXELS

    def model_image_size(self, image: Image.Image) -> tuple[int, int]:
        return image.width // 2, image.height // 2

    def answer(self, history: list[Turn], question: Turn, max_new_tokens: int,
               constraint: object = None) -> Generation:
        self.constraints.append(constraint)
        generation = super().answer(history, question, max_new_tokens, constraint)
        seen = [img for turn in (*history, question) for img in turn.images]
        return Generation(text=generation.text, prompt_tokens=1, cached_tokens=0, generated_tokens=1, seconds=0.0,
                          model_image_sizes=tuple(self.model_image_size(img) for img in seen))


def test_a_box_question_that_brings_its_image_in_is_bounded_by_that_image(demo_studies: list[EvalStudy],
                                                                          tmp_path: Path) -> None:
    """A detection question asked with its own image (6 of the demo studies open with one) gets the box grammar of
    the image as the model will see it, not an unbounded one; later questions keep the size the model reported."""
    from inference.constraints import constraint_for

    openers = [s for s in demo_studies if s.items[0].qtype is QType.DETECTION and s.items[0].n_images]
    assert len(openers) == 6
    study = openers[0]
    sizes = _write_images(study, tmp_path)
    model = PixelBoxModel({})
    run_model(model, [study], tmp_path, max_questions=3, show_progress=False)
    first = study.items[0]
    width, height = sizes[first.image_index]
    expected = constraint_for(QType.DETECTION, (), BoxConvention.RESIZED_PIXELS, (width // 2, height // 2),
                              first.target or "")
    assert model.constraints[0] == expected
    assert constraint_for(QType.DETECTION, (), BoxConvention.RESIZED_PIXELS, None, first.target or "") != expected
