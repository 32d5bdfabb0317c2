"""Hand-made reasoning records for synthetic studies: what tests, benchmarks and demos use where no model runs.

``make_record(current, prior, positive=...)`` builds a full 8-stage record for real source datasets (e.g. from
``dicomnode.demo.synthetic.make_study``), with boxes in the source images' pixel coordinates.
"""
from __future__ import annotations

from collections.abc import Mapping, Sequence

from pydicom.dataset import Dataset

from inference.constraints import NO_HEAD, YES_HEAD
from inference.operating_points import applied_threshold, decide_presence
from inference.record import (
    Box,
    Finding,
    ImageRef,
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
from inference.stages import CANONICAL_STAGES

FINDING_LABELS: dict[str, str] = {
    "enlarged_cardiomediastinum": "Enlarged cardiomediastinum",
    "cardiomegaly": "Cardiomegaly",
    "lung_opacity": "Lung opacity",
    "lung_lesion": "Lung lesion",
    "edema": "Pulmonary edema",
    "consolidation": "Consolidation",
    "pneumonia": "Pneumonia",
    "atelectasis": "Atelectasis",
    "pneumothorax": "Pneumothorax",
    "pleural_effusion": "Pleural effusion",
    "pleural_other": "Other pleural abnormality",
    "fracture": "Fracture",
    "support_devices": "Support devices",
    "endotracheal_tube": "Endotracheal tube",
    "chest_tube": "Chest tube",
    "central_venous_catheter": "Central venous catheter",
    "nasogastric_tube": "Nasogastric tube",
    "cardiac_pacemaker": "Cardiac pacemaker",
}
# Normalized boxes (x1, y1, x2, y2) per target, roughly where a phantom's structures are.
BOX_AT: dict[str, tuple[float, float, float, float]] = {
    "heart": (0.40, 0.50, 0.72, 0.75),
    "right_lung": (0.12, 0.18, 0.46, 0.72),
    "left_lung": (0.54, 0.18, 0.88, 0.72),
}
_DEFAULT_BOX = (0.55, 0.25, 0.85, 0.55)
_FINDING_BOXES = (  # positive findings take these in turn
    (0.55, 0.25, 0.85, 0.55), (0.15, 0.55, 0.42, 0.80), (0.58, 0.60, 0.86, 0.82),
    (0.20, 0.15, 0.40, 0.35), (0.45, 0.40, 0.60, 0.52), (0.62, 0.10, 0.80, 0.25),
)


def image_refs(current: Sequence[Dataset], prior: Sequence[Dataset] = ()) -> list[ImageRef]:
    refs: list[ImageRef] = []
    for role, datasets in (("current", current), ("prior", prior)):
        for ds in datasets:
            position = str(ds.get("ViewPosition", ""))
            refs.append(
                ImageRef(
                    index=len(refs),
                    role=role,
                    study_instance_uid=str(ds.StudyInstanceUID),
                    series_instance_uid=str(ds.SeriesInstanceUID),
                    sop_instance_uid=str(ds.SOPInstanceUID),
                    sop_class_uid=str(ds.SOPClassUID),
                    view={"LL": "LATERAL", "RL": "LATERAL"}.get(position, position or "UNKNOWN"),
                    rows=int(ds.Rows),
                    columns=int(ds.Columns),
                )
            )
    return refs


def make_box(target: str, ref: ImageRef, normalized: tuple[float, float, float, float] | None = None) -> Box:
    n = normalized or BOX_AT.get(target, _DEFAULT_BOX)
    return Box(
        target=target,
        image_index=ref.index,
        raw=tuple(round(v * 100, 2) for v in n),  # CXRTrek percent convention
        normalized=n,
        pixels=(n[0] * ref.columns, n[1] * ref.rows, n[2] * ref.columns, n[3] * ref.rows),
    )


def _q(qid: str, stage: int, qtype: QType, question: str, answer: str, parsed: ParsedAnswer, **kw) -> QuestionResult:
    return QuestionResult(id=qid, stage=stage, qtype=qtype, question=question, raw_answer=answer, parsed=parsed, **kw)


def _yes_no(qid: str, stage: int, question: str, yes: bool, why: str, finding: str | None = None,
            probability: float | None = None) -> QuestionResult:
    answer = f"{'Yes' if yes else 'No'}. {why}"
    scores = {YES_HEAD: probability, NO_HEAD: 1.0 - probability} if probability is not None else {}
    return _q(qid, stage, QType.YES_NO, question, answer,
              ParsedAnswer(ok=True, text=answer, yes_no=yes, justification=why), finding=finding,
              choice_probabilities=scores,
              answer_probability=scores[YES_HEAD if yes else NO_HEAD] if scores else None)


def demo_probability(index: int, presence: Presence) -> float:
    """A made-up probability of presence that agrees with ``presence`` (the ``index``-th finding's)."""
    if presence is Presence.PRESENT:
        return 0.62 + 0.07 * (index % 5)
    if presence is Presence.UNCERTAIN:
        return 0.45
    return 0.03 + 0.05 * (index % 6)


def _open(qid: str, stage: int, question: str, answer: str, ok: bool = True) -> QuestionResult:
    parsed = ParsedAnswer(ok=ok, text=answer) if ok else ParsedAnswer(ok=False, error="no answer wrapper", text=answer)
    return _q(qid, stage, QType.OPEN, question, answer, parsed)


def make_provenance(demo: bool = True, weights_sha256: str = "ab" * 32) -> Provenance:
    return Provenance(
        model_dir="/models/demo" if demo else "/models/cxr",
        model_name="cxr-node demo (untrained)" if demo else "Qwen2.5-VL-3B-CXR",
        model_version="0.1" if demo else "1.0",
        weights_sha256=weights_sha256,
        profile="qwen2_vl",
        quantization="nf4",
        dtype="bfloat16",
        device="cpu",
        demo_model=demo,
        software_version="0.1.0",
        transformers_version="5.23.0",
        seed=0,
        started_at="2026-01-01T10:15:00Z",
        finished_at="2026-01-01T10:16:00Z",
        seconds=60.0,
    )


def make_record(
    current: Sequence[Dataset],
    prior: Sequence[Dataset] = (),
    positive: Sequence[str] = (),
    uncertain: Sequence[str] = (),
    unparsed: bool = False,
    failed_stage: int | None = None,
    language: str = "en",
    demo: bool = True,
    long_text: int = 0,
    anatomy_boxes: bool = True,
    probabilities: bool = True,
    thresholds: Mapping[str, float] | None = None,
) -> ReasoningRecord:
    """A complete 8-stage record. ``positive`` findings get one box each on the first current image.

    language: "en", "zh" (Chinese answers) or "el" (Greek answers). ``long_text`` repeats the stage-7 advice
    that many times (to force page overflow). ``unparsed`` makes one stage-1 and one stage-4 answer unparsed.
    ``probabilities``: every checklist answer has a probability of presence agreeing with it (``demo_probability``;
    False: none, as from a backend without scores). ``thresholds``: finding key -> operating point; such a
    finding's presence is what the threshold decides from its probability (``inference.operating_points``).
    """
    refs = image_refs(current, prior)
    frontal = refs[0]
    has_prior = bool(prior)
    words = {
        "en": ("The lungs are clear apart from the listed findings.", "Follow-up radiograph is advised."),
        "zh": ("除所列发现外，双肺清晰。心影大小正常。", "建议随访胸部X线检查。"),
        "el": ("Οι πνεύμονες είναι καθαροί εκτός από τα ευρήματα.", "Συνιστάται επανέλεγχος με ακτινογραφία."),
    }[language]

    findings: list[Finding] = []
    s2: list[QuestionResult] = []
    s3: list[QuestionResult] = []
    for index, (key, label) in enumerate(FINDING_LABELS.items()):
        presence = (Presence.PRESENT if key in positive else Presence.UNCERTAIN if key in uncertain
                    else Presence.ABSENT)
        qid = f"s2.check:{key}"
        probability = demo_probability(index, presence) if probabilities else None
        answer = presence is Presence.PRESENT
        threshold = applied_threshold(probability, (thresholds or {}).get(key))
        presence = decide_presence(answer, probability, threshold, hedged=presence is Presence.UNCERTAIN)
        s2.append(_yes_no(qid, 2, f"Is there evidence of {label.lower()} in this image?",
                          answer, f"{label} {'is' if answer else 'is not'} seen.",
                          finding=key, probability=probability))
        boxes: list[Box] = []
        attributes: list[str] = []
        if presence is Presence.PRESENT:
            box = make_box(key, frontal, _FINDING_BOXES[len(s3) // 2 % len(_FINDING_BOXES)])
            boxes.append(box)
            raw = f"<|ref|> {key} <|/ref|> <|box|>({box.raw[0]}, {box.raw[1]}), ({box.raw[2]}, {box.raw[3]})<|/box|>"
            s3.append(_q(f"s3.box:{key}", 3, QType.DETECTION, f"Please locate the {label.lower()} in the image.",
                         raw, ParsedAnswer(ok=True, text=raw, boxes=[box]), finding=key))
            side = "right" if len(findings) % 2 else "left"
            attributes.append(f"{label}: moderate, in the {side} mid zone. {words[0]}")
            s3.append(_open(f"s3.attr:{key}", 3, f"Describe the {label.lower()}.", attributes[-1]))
        findings.append(Finding(key=key, label=label, presence=presence, question_id=qid, attributes=attributes,
                                boxes=boxes, probability=probability, threshold=threshold))
    if anatomy_boxes:
        for target in ("heart", "right_lung", "left_lung"):
            box = make_box(target, frontal)
            raw = f"<|ref|> {target} <|/ref|> <|box|>({box.raw[0]}, {box.raw[1]}), ({box.raw[2]}, {box.raw[3]})<|/box|>"
            s3.append(_q(f"s3.ground:{target}", 3, QType.DETECTION, f"Please ground the {target.replace('_', ' ')}.",
                         raw, ParsedAnswer(ok=True, text=raw, boxes=[box])))

    positives = [f for f in findings if f.presence is Presence.PRESENT]
    stage_questions: dict[int, list[QuestionResult]] = {
        1: [
            _q("s1.view", 1, QType.SINGLE_CHOICE, "What is the view of this image? A. PA or B. AP or C. Lateral",
               "PA", ParsedAnswer(ok=True, text="PA", choices=["PA"]), options=["PA", "AP", "Lateral"]),
            _open("s1.quality", 1, "Assess the image quality.",
                  "Adequate inspiration, no rotation. " + words[0] if not unparsed else "<answer>unterminated",
                  ok=not unparsed),
        ],
        2: s2,
        3: s3,
        4: [_open("s4.relation", 4, "How are the findings related?",
                  f"The findings {', '.join(f.label for f in positives)} may share one cause.", ok=not unparsed)]
        if len(positives) >= 2 else [],
        5: [_open("s5.compare", 5, "Compare with the reference X-ray.", "Stable compared with the prior study.")]
        if has_prior else [],
        6: [_open("s6.trend", 6, "What is the likely trend?", "Likely to resolve with treatment.")]
        if positives else [],
        7: [_open("s7.advice", 7, "What do you advise?", " ".join([words[1]] * max(1, long_text)))],
        8: [_open("s8.report", 8, "Write the report.", "FINDINGS: see above. IMPRESSION: see above.")],
    }
    stages: list[StageResult] = []
    for number, (key, title) in CANONICAL_STAGES.items():
        questions = stage_questions[number]
        if number == failed_stage:
            status, reason = StageStatus.FAILED, "model error: out of memory"
        elif number == 4 and len(positives) < 2:
            status, reason = StageStatus.NOT_APPLICABLE, "fewer than two positive findings"
        elif number == 5 and not has_prior:
            status, reason = StageStatus.NOT_APPLICABLE, "no prior study"
        elif number == 6 and not positives:
            status, reason = StageStatus.NOT_APPLICABLE, "no positive findings"
        else:
            status, reason = StageStatus.COMPLETED, None
        stages.append(StageResult(number=number, key=key, title=title, status=status, reason=reason,
                                  questions=questions, seconds=1.0))
    impression = ("; ".join(f.label for f in positives) or "No acute cardiopulmonary finding.")
    return ReasoningRecord(
        study_instance_uid=str(current[0].StudyInstanceUID),
        prior_study_instance_uid=str(prior[0].StudyInstanceUID) if prior else None,
        images=refs,
        stages=stages,
        findings=findings,
        report=Report(findings=words[0] + " " + "; ".join(a for f in positives for a in f.attributes),
                      impression=impression),
        provenance=make_provenance(demo=demo),
    )
