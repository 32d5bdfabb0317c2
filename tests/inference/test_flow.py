"""Stage-flow logic with a scripted ChatModel test double (answers chosen by the test, no network, no weights)."""
from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

import pytest

from dicomnode.demo.synthetic import StudySpec, make_study, prior_spec
from inference.chat import IMAGE_PLACEHOLDER, BoxConvention, Generation, Turn
from inference.flow import run_flow
from inference.record import Presence, Provenance, QType, ReasoningRecord, StageStatus
from inference.stages import DEFAULT_STAGES_PATH, load_stages, parse_stages

BOOK = load_stages()
SPEC = StudySpec(rows=200, columns=160, views=("LATERAL", "PA"))
BOX = "<|ref|> region <|/ref|> <|box|>(10.0, 20.0), (50.0, 60.0)<|/box|>."


class ScriptedModel:
    """Answers by rules on the question text; records every call. ``overrides`` maps a substring to an answer."""

    answer_wrapper: str | None = None

    def __init__(self, positives: Iterable[str] = (), overrides: dict[str, str] | None = None,
                 fail_on: str | None = None, convention: BoxConvention = BoxConvention.PERCENT,
                 sizes: tuple[tuple[int, int], ...] = ()) -> None:
        self.terms = {BOOK.finding(k).term for k in positives}
        self.overrides = overrides or {}
        self.fail_on = fail_on
        self.box_convention = convention
        self.sizes = sizes
        self.calls: list[tuple[list[Turn], Turn, int]] = []
        self.info = Provenance(model_dir="/models/scripted", model_name="scripted", weights_sha256="0" * 64,
                               profile="scripted", quantization="none", dtype="float32", device="cpu",
                               demo_model=True, software_version="test")

    def answer(self, history: list[Turn], question: Turn, max_new_tokens: int,
               constraint: object = None) -> Generation:
        self.calls.append((history, question, max_new_tokens))
        text = question.text
        if self.fail_on and self.fail_on in text:
            raise RuntimeError("simulated out of memory")
        reply = next((a for s, a in self.overrides.items() if s in text), None)
        if reply is None:
            if text.startswith("[detection]") or "[detection]" in text:
                reply = BOX
            elif "Is there any evidence of" in text:
                term = text.split("evidence of ", 1)[1].split(" in the main study")[0]
                reply = f"Yes. There is {term}." if term in self.terms else "No."
            elif "Select the correct answer" in text:
                reply = "B."
            elif "Select all that apply" in text:
                reply = "A, C"
            else:
                reply = f"Open answer {len(self.calls)}."
        prompt = sum(len(t.text) for t in [*history, question])
        return Generation(text=reply, prompt_tokens=prompt, cached_tokens=prompt // 2, generated_tokens=5,
                          seconds=0.001, model_image_sizes=self.sizes)


def _study(prior: bool = False) -> tuple[list, list]:
    current = make_study(SPEC)
    return current, (make_study(prior_spec(SPEC)) if prior else [])


def _ids(record: ReasoningRecord, stage: int) -> list[str]:
    return [q.id for q in record.stage(stage).questions]


def test_no_positive_finding_no_prior() -> None:
    model = ScriptedModel()
    current, _ = _study()
    record = run_flow(model, current)
    assert [s.number for s in record.stages] == list(range(1, 9))
    assert [s.key for s in record.stages] == ["quality_view", "findings", "attributes", "relationships",
                                              "comparison", "trend", "advice", "report"]
    status = {s.number: s.status for s in record.stages}
    assert status == {1: "completed", 2: "completed", 3: "completed", 4: "not_applicable", 5: "not_applicable",
                      6: "not_applicable", 7: "completed", 8: "completed"}
    assert "0 positive finding" in record.stage(4).reason
    assert record.stage(5).reason == record.stage(6).reason == "no prior study was given"
    assert len(record.findings) == len(BOOK.findings) == 18
    assert all(f.presence is Presence.ABSENT for f in record.findings)
    assert _ids(record, 3) == ["s3.ground:heart", "s3.ground:right_lung", "s3.ground:left_lung"]
    ground = record.stage(3).questions[0].parsed.boxes[0]
    assert ground.target == "heart" and ground.image_index == 0
    assert ground.pixels == pytest.approx((16, 40, 80, 120))  # 10..50 % of 160 columns, 20..60 % of 200 rows
    assert record.report.findings.startswith("Open answer") and record.report.impression.startswith("Open answer")
    assert record.unparsed_questions == []
    assert record.prior_study_instance_uid is None
    assert [i.view for i in record.images] == ["PA", "LL"]


def test_images_enter_once_in_the_first_question_frontal_first() -> None:
    model = ScriptedModel()
    current, _ = _study()
    run_flow(model, current)
    first = model.calls[0][1]
    assert first.text.startswith(f"Here is the current X-ray image: {IMAGE_PLACEHOLDER} {IMAGE_PLACEHOLDER} . ")
    assert len(first.images) == 2 and first.images[0].size == (160, 200)
    assert all(not q.images and IMAGE_PLACEHOLDER not in q.text for _, q, _ in model.calls[1:])
    # one growing conversation: every call sees all earlier turns
    for n, (history, _, _) in enumerate(model.calls):
        assert len(history) == 2 * n
        if n:
            assert history[-2] is model.calls[n - 1][1]
    assert model.calls[0][0] == []


def test_one_positive_finding() -> None:
    model = ScriptedModel(positives=["pleural_effusion"])
    record = run_flow(model, _study()[0])
    assert [f.key for f in record.positive_findings] == ["pleural_effusion"]
    assert _ids(record, 3) == ["s3.describe:pleural_effusion", "s3.severity:pleural_effusion",
                               "s3.box:pleural_effusion", "s3.ground:heart", "s3.ground:right_lung",
                               "s3.ground:left_lung"]
    effusion = next(f for f in record.findings if f.key == "pleural_effusion")
    assert effusion.question_id == "s2.present:pleural_effusion"
    assert effusion.attributes[1] == "Moderate" and effusion.attributes[0].startswith("Open answer")
    assert [b.target for b in effusion.boxes] == ["pleural_effusion"]
    assert record.stage(4).status is StageStatus.NOT_APPLICABLE and "1 positive finding" in record.stage(4).reason
    severity = next(q for q in record.stage(3).questions if q.id.startswith("s3.severity"))
    assert severity.question.endswith("[ A. Mild; B. Moderate; C. Severe ].")
    assert severity.parsed.choices == ["Moderate"]


def test_device_findings_skip_severity() -> None:
    record = run_flow(ScriptedModel(positives=["chest_tube", "edema"]), _study()[0])
    ids = _ids(record, 3)
    assert "s3.severity:edema" in ids and "s3.severity:chest_tube" not in ids
    assert "s3.box:chest_tube" in ids and "s3.describe:chest_tube" in ids


def test_two_positive_findings_with_prior() -> None:
    model = ScriptedModel(positives=["cardiomegaly", "pleural_effusion"])
    current, prior = _study(prior=True)
    record = run_flow(model, current, prior)
    assert all(s.status is StageStatus.COMPLETED for s in record.stages)
    assert record.prior_study_instance_uid == prior[0].StudyInstanceUID
    assert [(i.index, i.role) for i in record.images] == [(0, "current"), (1, "current"), (2, "prior")]
    assert _ids(record, 5) == ["s5.differences", "s5.change:cardiomegaly", "s5.change:pleural_effusion"]
    with_images = [(n, q) for n, (_, q, _) in enumerate(model.calls) if q.images]
    assert len(with_images) == 2
    (n0, q0), (n1, q1) = with_images
    assert n0 == 0 and len(q0.images) == 2
    assert q1.text.startswith(f"Reference X-ray: {IMAGE_PLACEHOLDER} . What are the key differences")
    assert len(q1.images) == 1
    first_s5 = record.stage(5).questions[0]
    assert first_s5.question == q1.text
    assert record.stage(4).questions[0].id == "s4.relations"
    p = record.provenance
    assert p.demo_model and p.model_name == "scripted" and p.seed == 0
    assert p.prompt_tokens == sum(q.prompt_tokens for s in record.stages for q in s.questions) > 0
    assert p.generated_tokens == 5 * len(model.calls)
    assert p.started_at and p.finished_at and p.seconds >= 0
    assert ReasoningRecord.from_json(record.to_json()) == record


def test_unparsed_answers_are_flagged_and_kept() -> None:
    model = ScriptedModel(
        positives=["pneumothorax"],
        overrides={"evidence of cardiomegaly": "Possibly, hard to say.",
                   "evidence of a fracture": "Yes. A rib fracture cannot be excluded.",
                   "evidence of pulmonary edema": "No. Possible mild interstitial edema.",
                   "evidence of consolidation": "Yes. Likely right lower lobe consolidation.",
                   "regions affected by pneumothorax": "I cannot draw boxes.",
                   "Which technical deficiencies": "Everything is fine."},
    )
    record = run_flow(model, _study()[0])
    presence = {f.key: f.presence for f in record.findings}
    assert presence["cardiomegaly"] is Presence.UNCERTAIN  # unparsed
    assert presence["fracture"] is Presence.UNCERTAIN and presence["edema"] is Presence.UNCERTAIN  # hedged
    assert presence["consolidation"] is Presence.PRESENT and presence["atelectasis"] is Presence.ABSENT
    unparsed = {q.id: q for q in record.unparsed_questions}
    assert set(unparsed) == {"s1.deficiencies", "s2.present:cardiomegaly", "s3.box:pneumothorax"}
    assert unparsed["s3.box:pneumothorax"].raw_answer == "I cannot draw boxes."
    assert unparsed["s3.box:pneumothorax"].parsed.error == "no box found"
    assert "s3.box:consolidation" in [q.id for q in record.stage(3).questions]
    pneumothorax = next(f for f in record.findings if f.key == "pneumothorax")
    assert pneumothorax.presence is Presence.PRESENT and pneumothorax.boxes == []
    # uncertain findings are not "positive": no stage-3 questions about cardiomegaly
    assert not any("cardiomegaly" in q.id for q in record.stage(3).questions)
    assert all(s.status is not StageStatus.FAILED for s in record.stages)


def test_model_failure_fails_the_stage_and_the_flow_goes_on() -> None:
    model = ScriptedModel(fail_on="What relationships exist", positives=["edema", "atelectasis"])
    record = run_flow(model, _study()[0])
    s4 = record.stage(4)
    assert s4.status is StageStatus.FAILED and "simulated out of memory" in s4.reason
    assert s4.questions[0].parsed.ok is False and s4.questions[0].raw_answer == ""
    assert record.stage(7).status is StageStatus.COMPLETED
    # the failed turn is not in the history of later questions
    assert all("What relationships exist" not in t.text for t in model.calls[-1][0])


def test_model_failure_on_first_question_shows_images_again() -> None:
    model = ScriptedModel(fail_on="Which views")
    record = run_flow(model, _study()[0])
    assert record.stage(1).status is StageStatus.FAILED
    assert len(model.calls[1][1].images) == 2 and model.calls[1][1].text.startswith("Here is the current X-ray")


def test_hospital_edits_are_honoured(tmp_path: Path) -> None:
    text = DEFAULT_STAGES_PATH.read_text(encoding="utf-8")
    start, end = text.index("  - number: 4\n"), text.index("  - number: 5\n")
    text = text[:start] + text[end:]
    text = text.replace("  - number: 7\n", "  - number: 7\n    enabled: false\n")
    text = text.replace("      - id: s8.findings\n",
                        "      - id: s8.devices\n        text: Are there any medical devices visible?\n"
                        "        qtype: yes_no\n      - id: s8.findings\n")
    book = parse_stages(text)
    model = ScriptedModel(positives=["edema", "atelectasis"], overrides={"medical devices visible": "No."})
    record = run_flow(model, _study()[0], stages=book)
    assert [s.number for s in record.stages] == list(range(1, 9))
    assert record.stage(4).status is StageStatus.NOT_APPLICABLE
    assert record.stage(4).reason == "not in the stage configuration" and record.stage(4).key == "relationships"
    assert record.stage(7).reason == "disabled in the stage configuration"
    assert _ids(record, 8) == ["s8.devices", "s8.findings", "s8.impression"]
    assert record.stage(8).questions[0].parsed.yes_no is False


def test_token_budgets_per_qtype_and_cap() -> None:
    model = ScriptedModel()
    run_flow(model, _study()[0])
    assert "Which views" in model.calls[0][1].text and model.calls[0][2] == 40  # the question's own budget
    assert {n for _, q, n in model.calls if "evidence of" in q.text} == {BOOK.max_new_tokens[QType.YES_NO]}
    capped = ScriptedModel()
    run_flow(capped, _study()[0], max_new_tokens=8)
    assert {n for _, _, n in capped.calls} == {8}
    per_type = ScriptedModel()
    run_flow(per_type, _study()[0], max_new_tokens={QType.DETECTION: 7})
    assert {n for _, q, n in per_type.calls if "[detection]" in q.text} == {7}


def test_resized_pixel_boxes_map_through_model_sizes() -> None:
    # the model saw the 160x200 PA at 80x100: a box at (8, 20)-(40, 60) resized pixels is 10-50 % / 20-60 %
    model = ScriptedModel(convention=BoxConvention.RESIZED_PIXELS, sizes=((80, 100), (80, 100)),
                          overrides={"[detection]": '{"bbox_2d": [8, 20, 40, 60], "label": "heart"}'})
    record = run_flow(model, _study()[0])
    box = record.stage(3).questions[0].parsed.boxes[0]
    assert box.normalized == pytest.approx((0.1, 0.2, 0.5, 0.6))
    assert box.pixels == pytest.approx((16, 40, 80, 120))


def test_max_side_shrinks_model_images_but_boxes_use_source_pixels() -> None:
    model = ScriptedModel()
    record = run_flow(model, _study()[0], max_side=100)
    assert model.calls[0][1].images[0].size == (80, 100)
    assert (record.images[0].rows, record.images[0].columns) == (200, 160)
    assert record.stage(3).questions[0].parsed.boxes[0].pixels == pytest.approx((16, 40, 80, 120))


def test_think_answer_model_keeps_reasoning_in_record_not_in_history() -> None:
    model = ScriptedModel(positives=["pneumothorax"])
    model.answer_wrapper = "think_answer"
    model.overrides = {"evidence of pneumothorax": "<think>Pleural line at the apex.</think><answer>Yes. Apical "
                                                   "pneumothorax.</answer>"}
    record = run_flow(model, _study()[0])
    q = next(q for q in record.stage(2).questions if q.id == "s2.present:pneumothorax")
    assert q.raw_answer.startswith("<think>") and q.parsed.think == "Pleural line at the apex."
    assert q.parsed.yes_no is True
    assert next(f for f in record.findings if f.key == "pneumothorax").presence is Presence.PRESENT
    history_answers = [t.text for t in model.calls[-1][0] if t.role == "assistant"]
    assert "Yes. Apical pneumothorax." in history_answers
    assert not any("<think>" in t for t in history_answers)


def test_pixel_box_grammar_is_bounded_even_before_the_model_reports_its_image_size() -> None:
    """A backend that reports no image sizes with its answers (or a box asked before the image was seen) still gets
    box grammars bounded by the frontal image as the model will see it (``model_image_size``)."""
    from inference.constraints import int_upto_pattern

    class PixelModel(ScriptedModel):
        def __init__(self) -> None:
            super().__init__(positives=["cardiomegaly"], convention=BoxConvention.RESIZED_PIXELS)
            self.constraints: list[object] = []

        def model_image_size(self, image) -> tuple[int, int]:  # type: ignore[no-untyped-def]
            return image.width // 4, image.height // 4

        def answer(self, history: list[Turn], question: Turn, max_new_tokens: int,
                   constraint: object = None) -> Generation:
            self.constraints.append(constraint)
            return super().answer(history, question, max_new_tokens, constraint)

    model = PixelModel()
    current, _ = _study()
    run_flow(model, current)
    boxes = [c for c in model.constraints if getattr(c, "kind", None) == "detection"]
    assert boxes
    width, height = current[0].Columns // 4, current[0].Rows // 4  # every image of SPEC has one size
    for constraint in boxes:
        assert "\\d{1,4}" not in constraint.pattern  # the unbounded number
        assert int_upto_pattern(width) in constraint.pattern and int_upto_pattern(height) in constraint.pattern
