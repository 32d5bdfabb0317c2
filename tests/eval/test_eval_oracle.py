"""Oracle and perturbed-gold scoring on the 80 CXRTrek demo studies: exact expected scores."""
from __future__ import annotations

import pytest
from rouge_score import tokenize

from inference.evaluation.dataset import EvalItem, EvalStudy
from inference.evaluation.predictions import oracle, parse_for_item, parsed_answers
from inference.evaluation.scoring import METRIC_NAMES, score_dataset
from inference.record import QType


def test_oracle_scores_100_percent_everywhere(demo_studies: list[EvalStudy]) -> None:
    assert len(demo_studies) == 80
    scores = score_dataset(demo_studies, parsed_answers(oracle(demo_studies)))
    assert scores.overall.count == sum(len(s.items) for s in demo_studies) == 2157
    groups = [scores.overall, *scores.by_stage.values(), *scores.by_qtype.values(), scores.report]
    assert sorted(scores.by_stage) == list(range(1, 9))
    assert set(scores.by_qtype) == {q.value for q in QType}
    for group in groups:
        assert group is not None and group.unparsed == 0
        assert group.score == 1.0
        present = [m for m in METRIC_NAMES if group.metrics[m] is not None]
        assert present, group
        for metric in present:
            assert group.metrics[metric] == 1.0, (metric, group)
    for metric in METRIC_NAMES:
        assert scores.overall.metrics[metric] == 1.0
    counts = scores.overall.counts
    assert counts == {"yes_no": 448, "single_choice": 185, "multi_choice": 80, "detection": 396, "open": 1048}


def _items(studies: list[EvalStudy], qtype: QType) -> list[tuple[EvalStudy, EvalItem]]:
    return [(s, i) for s in studies for i in s.items if i.qtype is qtype]


def _box_text(target: str, box: tuple[float, float, float, float]) -> str:
    x1, y1, x2, y2 = box
    return f"<|ref|> {target} <|/ref|> <|box|>({x1:.2f}, {y1:.2f}), ({x2:.2f}, {y2:.2f})<|/box|>."


def _iou(a: tuple[float, ...], b: tuple[float, ...]) -> float:
    iw = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    ih = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = iw * ih
    return inter / ((a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter)


def test_perturbed_gold_gives_exact_expected_scores(demo_studies: list[EvalStudy]) -> None:
    texts = {s.key: [i.answer for i in s.items] for s in demo_studies}

    def put(study: EvalStudy, item: EvalItem, text: str) -> None:
        texts[study.key][item.position] = text

    # yes/no: flip three answers, make one unparseable.
    yes_no = _items(demo_studies, QType.YES_NO)
    for study, item in yes_no[:3]:
        put(study, item, ("No. " if item.yes_no else "Yes. ") + "Flipped on purpose.")
    put(*yes_no[3], "Perhaps, hard to say.")

    # single choice: pick a wrong option once.
    singles = _items(demo_studies, QType.SINGLE_CHOICE)
    s_study, s_item = singles[0]
    put(s_study, s_item, next(o for o in s_item.options if o not in s_item.answer_list))

    # multi choice: drop one option from an answer with g >= 3 gold options.
    multis = _items(demo_studies, QType.MULTI_CHOICE)
    m_study, m_item = next((s, i) for s, i in multis if len(i.answer_list) >= 3)
    g = len(m_item.answer_list)
    put(m_study, m_item, ", ".join(m_item.answer_list[:-1]))

    # detection: shift one box right by dx, another right and down; both in percent, two decimals.
    dets = _items(demo_studies, QType.DETECTION)
    shifted: list[float] = []
    fitting = [(s, i) for s, i in dets if i.boxes[0][2] * 100 <= 90 and i.boxes[0][3] * 100 <= 90]
    for (study, item), (dx, dy) in zip(fitting[:2], ((5.0, 0.0), (4.0, 6.0)), strict=False):
        gold = tuple(round(v * 100, 2) for v in item.boxes[0])
        moved = (gold[0] + dx, gold[1] + dy, gold[2] + dx, gold[3] + dy)
        put(study, item, _box_text(item.target or "finding", moved))
        w, h = gold[2] - gold[0], gold[3] - gold[1]
        inter = max(0.0, w - dx) * max(0.0, h - dy)
        expected = inter / (2 * w * h - inter)  # analytic IoU of a box and its shifted copy
        assert expected == pytest.approx(_iou(gold, moved))
        shifted.append(expected)

    # open text: answer with the first k of n reference tokens (LCS = k: P = 1, R = k/n, F = 2k/(n+k)),
    # and one empty answer (unparsed, ROUGE-L 0).
    opens = _items(demo_studies, QType.OPEN)
    o_study, o_item = next((s, i) for s, i in opens if len(tokenize.tokenize(i.answer, None)) >= 20)
    ref_tokens = tokenize.tokenize(o_item.answer, None)
    n, k = len(ref_tokens), len(ref_tokens) // 2
    put(o_study, o_item, " ".join(ref_tokens[:k]))
    put(*opens[-1], "")

    answers = {
        s.key: [parse_for_item(item, text) for item, text in zip(s.items, texts[s.key], strict=False)]
        for s in demo_studies
    }
    m = score_dataset(demo_studies, answers).overall

    assert m.unparsed == 2
    assert m.metrics["yes_no_accuracy"] == pytest.approx((len(yes_no) - 4) / len(yes_no))
    assert m.metrics["single_choice_accuracy"] == pytest.approx((len(singles) - 1) / len(singles))
    assert m.metrics["multi_choice_exact"] == pytest.approx((len(multis) - 1) / len(multis))
    f1 = 2 * (g - 1) / (2 * g - 1)  # precision 1, recall (g-1)/g
    assert m.metrics["multi_choice_f1"] == pytest.approx((len(multis) - 1 + f1) / len(multis))
    assert m.metrics["detection_mean_iou"] == pytest.approx((len(dets) - 2 + sum(shifted)) / len(dets), abs=1e-6)
    misses = sum(v < 0.5 for v in shifted)
    assert m.metrics["detection_iou50"] == pytest.approx((len(dets) - misses) / len(dets))
    rouge = 2 * k / (n + k)
    assert m.metrics["rouge_l"] == pytest.approx((len(opens) - 2 + rouge) / len(opens), abs=1e-9)
    assert 0.0 < m.metrics["bleu"] < 1.0


def test_unanswered_and_capped_items(demo_studies: list[EvalStudy]) -> None:
    """Items beyond a shorter answer list are left out; a None answer counts as unparsed."""
    study = demo_studies[0]
    runs = oracle([study])
    answers = parsed_answers(runs)
    answers[study.key] = answers[study.key][:5]
    capped = score_dataset([study], answers)
    assert capped.overall.count == 5 and capped.overall.unparsed == 0 and capped.overall.score == 1.0
    answers[study.key][0] = parse_for_item(study.items[0], None)
    missing = score_dataset([study], answers)
    assert missing.overall.unparsed == 1 and missing.overall.score < 1.0
