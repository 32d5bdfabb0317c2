"""Score parsed answers against gold items, per stage and per question type.

Metrics (all fractions in [0, 1]):
- yes/no accuracy; single-choice accuracy (chosen option set equals the gold set);
- multi-choice exact match and F1 over options (per item, averaged);
- detection: per item, boxes are matched one-to-one on the same image (greedy by IoU) and the item's IoU is the sum
  of matched IoUs over max(#gold, #predicted) boxes; reported as the mean IoU and the share of items with IoU >= 0.5;
- open-ended text (captioning, report): ROUGE-L F-measure (``rouge-score``, per item, averaged) and corpus BLEU
  (``sacrebleu`` with effective order, divided by 100);
- unparsed: answers the parser flagged (they score 0 on their metric).
Each item also gets one unified score (correctness, F1, IoU or ROUGE-L) whose mean per stage drives the radar chart.
"""
from __future__ import annotations

import logging
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from functools import lru_cache, partial
from statistics import fmean

from inference.evaluation.dataset import EvalItem, EvalStudy, NormBox
from inference.record import ParsedAnswer, QType

IOU_HIT = 0.5

METRIC_NAMES: tuple[str, ...] = (
    "yes_no_accuracy",
    "single_choice_accuracy",
    "multi_choice_exact",
    "multi_choice_f1",
    "detection_mean_iou",
    "detection_iou50",
    "rouge_l",
    "bleu",
)


@dataclass(frozen=True)
class ItemScore:
    study_key: str
    position: int
    stage: int
    qtype: QType
    task_type: str
    unparsed: bool
    score: float  # unified: 1/0 correctness, F1, IoU or ROUGE-L
    correct: bool | None = None  # yes/no and single choice
    exact: bool | None = None  # multi choice
    f1: float | None = None  # multi choice
    iou: float | None = None  # detection
    rouge_l: float | None = None  # open text
    hypothesis: str | None = None  # open text, for corpus BLEU
    reference: str | None = None


@dataclass(frozen=True)
class GroupMetrics:
    """Counts and metrics of a group of items; a metric is None when the group has no item of its kind."""

    count: int
    unparsed: int
    score: float | None
    metrics: dict[str, float | None]
    counts: dict[str, int]  # items behind each metric

    @property
    def unparsed_rate(self) -> float:
        return self.unparsed / self.count if self.count else 0.0

    def to_dict(self) -> dict[str, object]:
        return {
            "count": self.count,
            "unparsed": self.unparsed,
            "unparsed_rate": self.unparsed_rate,
            "score": self.score,
            **self.metrics,
            "metric_counts": dict(self.counts),
        }


@dataclass
class EvalScores:
    overall: GroupMetrics
    by_stage: dict[int, GroupMetrics]
    by_qtype: dict[str, GroupMetrics]
    report: GroupMetrics | None  # report-generation text items only
    items: list[ItemScore] = field(default_factory=list)

    def stage_scores(self) -> dict[int, float]:
        """Unified score per stage present (radar chart input)."""
        return {s: g.score for s, g in self.by_stage.items() if g.score is not None}

    def to_dict(self) -> dict[str, object]:
        return {
            "overall": self.overall.to_dict(),
            "by_stage": {str(k): v.to_dict() for k, v in sorted(self.by_stage.items())},
            "by_qtype": {k: v.to_dict() for k, v in self.by_qtype.items()},
            "report": self.report.to_dict() if self.report else None,
        }


def iou(a: NormBox, b: NormBox) -> float:
    """Intersection over union of two (x1, y1, x2, y2) boxes; corners may come in any order."""
    ax1, ax2 = sorted((a[0], a[2]))
    ay1, ay2 = sorted((a[1], a[3]))
    bx1, bx2 = sorted((b[0], b[2]))
    by1, by2 = sorted((b[1], b[3]))
    iw = max(0.0, min(ax2, bx2) - max(ax1, bx1))
    ih = max(0.0, min(ay2, by2) - max(ay1, by1))
    inter = iw * ih
    union = (ax2 - ax1) * (ay2 - ay1) + (bx2 - bx1) * (by2 - by1) - inter
    return inter / union if union > 0 else 0.0


def match_boxes(gold: Sequence[tuple[int, NormBox]], predicted: Sequence[tuple[int, NormBox]]) -> float:
    """Item IoU: greedy one-to-one matching on the same image index, summed over max(#gold, #predicted)."""
    if not gold and not predicted:
        return 1.0
    pairs = sorted(
        (
            (iou(g, p), gi, pi)
            for gi, (g_img, g) in enumerate(gold)
            for pi, (p_img, p) in enumerate(predicted)
            if g_img == p_img
        ),
        reverse=True,
    )
    used_g: set[int] = set()
    used_p: set[int] = set()
    total = 0.0
    for value, gi, pi in pairs:
        if gi in used_g or pi in used_p:
            continue
        used_g.add(gi)
        used_p.add(pi)
        total += value
    return total / max(len(gold), len(predicted))


def choice_f1(predicted: set[str], gold: set[str]) -> float:
    if not predicted and not gold:
        return 1.0
    hits = len(predicted & gold)
    if hits == 0:
        return 0.0
    precision, recall = hits / len(predicted), hits / len(gold)
    return 2 * precision * recall / (precision + recall)


@lru_cache(maxsize=1)
def _rouge_scorer():  # third-party type
    from rouge_score import rouge_scorer

    logging.getLogger("absl").setLevel(logging.WARNING)  # rouge-score logs its tokenizer choice at INFO
    return rouge_scorer.RougeScorer(["rougeL"])


def rouge_l(hypothesis: str, reference: str) -> float:
    return float(_rouge_scorer().score(reference, hypothesis)["rougeL"].fmeasure)


def corpus_bleu(hypotheses: Sequence[str], references: Sequence[str]) -> float:
    """Corpus BLEU as a fraction (sacrebleu, effective order so short answers are scored fairly)."""
    from sacrebleu.metrics import BLEU

    if not hypotheses:
        return 0.0
    return float(BLEU(effective_order=True).corpus_score(list(hypotheses), [list(references)]).score) / 100.0


def score_item(study_key: str, item: EvalItem, parsed: ParsedAnswer) -> ItemScore:
    """Score one answer against its gold item."""
    scored = partial(
        ItemScore,
        study_key=study_key,
        position=item.position,
        stage=item.stage,
        qtype=item.qtype,
        task_type=item.task_type,
        unparsed=not parsed.ok,
    )
    if item.qtype is QType.YES_NO:
        correct = parsed.ok and parsed.yes_no is not None and parsed.yes_no == item.yes_no
        return scored(score=float(correct), correct=correct)
    if item.qtype is QType.SINGLE_CHOICE:
        correct = parsed.ok and set(parsed.choices) == set(item.answer_list)
        return scored(score=float(correct), correct=correct)
    if item.qtype is QType.MULTI_CHOICE:
        chosen = set(parsed.choices) if parsed.ok else set()
        gold = set(item.answer_list)
        f1 = choice_f1(chosen, gold) if parsed.ok else 0.0
        return scored(score=f1, exact=parsed.ok and chosen == gold, f1=f1)
    if item.qtype is QType.DETECTION:
        gold_boxes = [(item.image_index, b) for b in item.boxes]
        predicted = [(b.image_index, b.normalized) for b in parsed.boxes] if parsed.ok else []
        value = _fraction(match_boxes(gold_boxes, predicted)) if parsed.ok else 0.0
        return scored(score=value, iou=value)
    hypothesis = parsed.text if parsed.ok else ""
    value = rouge_l(hypothesis, item.answer)
    return scored(score=value, rouge_l=value, hypothesis=hypothesis, reference=item.answer)


def _fraction(value: float) -> float:
    """Clamp to [0, 1] and drop float noise (identical boxes give 0.9999999999999998)."""
    return min(1.0, max(0.0, round(value, 9)))


def _mean(values: Iterable[float]) -> float | None:
    values = list(values)
    return _fraction(fmean(values)) if values else None


def aggregate(items: Sequence[ItemScore]) -> GroupMetrics:
    """Metrics of a group of scored items."""
    by = {q: [i for i in items if i.qtype is q] for q in QType}
    open_items = by[QType.OPEN]
    detections = by[QType.DETECTION]
    metrics: dict[str, float | None] = {
        "yes_no_accuracy": _mean(float(bool(i.correct)) for i in by[QType.YES_NO]),
        "single_choice_accuracy": _mean(float(bool(i.correct)) for i in by[QType.SINGLE_CHOICE]),
        "multi_choice_exact": _mean(float(bool(i.exact)) for i in by[QType.MULTI_CHOICE]),
        "multi_choice_f1": _mean(i.f1 or 0.0 for i in by[QType.MULTI_CHOICE]),
        "detection_mean_iou": _mean(i.iou or 0.0 for i in detections),
        "detection_iou50": _mean(float((i.iou or 0.0) >= IOU_HIT) for i in detections),
        "rouge_l": _mean(i.rouge_l or 0.0 for i in open_items),
        "bleu": (
            _fraction(corpus_bleu([i.hypothesis or "" for i in open_items], [i.reference or "" for i in open_items]))
            if open_items
            else None
        ),
    }
    counts = {
        "yes_no": len(by[QType.YES_NO]),
        "single_choice": len(by[QType.SINGLE_CHOICE]),
        "multi_choice": len(by[QType.MULTI_CHOICE]),
        "detection": len(detections),
        "open": len(open_items),
    }
    return GroupMetrics(
        count=len(items),
        unparsed=sum(i.unparsed for i in items),
        score=_mean(i.score for i in items),
        metrics=metrics,
        counts=counts,
    )


def score_dataset(studies: Sequence[EvalStudy], answers: Mapping[str, Sequence[ParsedAnswer]]) -> EvalScores:
    """Score every answered item. ``answers[study.key]`` is aligned with the study's items; items beyond a shorter
    list were not asked (``--max-questions``) and are left out; a study missing from ``answers`` is left out."""
    scored: list[ItemScore] = []
    report_keys: set[tuple[str, int]] = set()
    for study in studies:
        for item, parsed in zip(study.items, answers.get(study.key, ()), strict=False):
            scored.append(score_item(study.key, item, parsed))
            if item.is_report and item.qtype is QType.OPEN:
                report_keys.add((study.key, item.position))
    stages = sorted({i.stage for i in scored})
    report_items = [i for i in scored if (i.study_key, i.position) in report_keys]
    return EvalScores(
        overall=aggregate(scored),
        by_stage={s: aggregate([i for i in scored if i.stage == s]) for s in stages},
        by_qtype={q.value: aggregate([i for i in scored if i.qtype is q])
                  for q in QType if any(i.qtype is q for i in scored)},
        report=aggregate(report_items) if report_items else None,
        items=scored,
    )
