"""Per-finding evaluation: AUROC, sensitivity / specificity at an operating point, calibration (ECE) on small sets
computed by hand; thresholds proposed for a target sensitivity, written as YAML the node config accepts; the CLI on
the CXRTrek demo file with a predictions file that carries probabilities."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from dicomnode.cli import main
from dicomnode.config import config_from_dict
from inference.evaluation.dataset import EvalStudy
from inference.evaluation.findings import (
    POOLED,
    ChecklistItem,
    auroc,
    choose_thresholds,
    expected_calibration_error,
    finding_key,
    metrics,
    reliability,
    target_text,
    thresholds_yaml,
)
from inference.operating_points import read_thresholds
from inference.stages import load_stages

BOOK = load_stages()


def _item(gold: bool, probability: float | None, answer: bool | None = None, finding: str = "pneumothorax",
          hedged: bool = False) -> ChecklistItem:
    if answer is None and probability is not None:
        answer = probability >= 0.5
    return ChecklistItem("s", 0, finding, finding, gold, answer, probability, hedged)


def test_auroc_by_hand() -> None:
    # positives 0.9, 0.4; negatives 0.6, 0.1: 0.9 beats both, 0.4 beats 0.1 only -> 3 of 4 pairs
    assert auroc([True, True, False, False], [0.9, 0.4, 0.6, 0.1]) == 0.75
    assert auroc([True, False], [0.5, 0.5]) == 0.5  # a tie counts one half
    assert auroc([True, True, False], [0.2, 0.3, 0.1]) == 1.0
    assert auroc([True, True], [0.2, 0.3]) is None


def test_reliability_bins_and_ece_by_hand() -> None:
    bins = reliability([False, True, False, True], [0.05, 0.15, 0.15, 1.0])
    assert [b.count for b in bins] == [1, 1 + 1, 0, 0, 0, 0, 0, 0, 0, 1]  # 1.0 falls in the last bin
    assert (bins[1].mean_probability, bins[1].observed) == (pytest.approx(0.15), 0.5)
    # (1 * |0 - 0.05| + 2 * |0.5 - 0.15| + 1 * |1 - 1.0|) / 4 = 0.75 / 4
    assert expected_calibration_error(bins) == pytest.approx(0.1875)
    assert expected_calibration_error(reliability([], [])) is None


def test_sensitivity_and_specificity_follow_the_operating_point() -> None:
    items = [_item(True, 0.9), _item(True, 0.4), _item(False, 0.6), _item(False, 0.1),
             _item(True, None, answer=None), _item(False, 0.2, answer=False, hedged=True)]
    answer = metrics("pneumothorax", items, {})
    assert (answer.count, answer.positives, answer.unparsed, answer.scored) == (6, 3, 1, 5)
    assert answer.sensitivity == pytest.approx(1 / 3) and answer.specificity == pytest.approx(2 / 3)
    assert answer.uncertain == 2  # the unparsed and the hedged answer
    assert answer.auroc == pytest.approx(5 / 6)  # 0.9, 0.4 against 0.6, 0.1, 0.2; the unparsed one is left out
    tuned = metrics("pneumothorax", items, {"pneumothorax": 0.3})
    assert tuned.threshold == 0.3 and tuned.sensitivity == pytest.approx(2 / 3)  # 0.9 and 0.4 reach 0.3
    assert tuned.specificity == pytest.approx(2 / 3) and tuned.uncertain == 1  # the hedge no longer matters
    assert metrics(POOLED, items, {"pneumothorax": 0.3}).threshold is None


def test_hard_answers_rank_when_there_is_no_probability() -> None:
    items = [_item(True, None, answer=True), _item(False, None, answer=False), _item(False, None, answer=True)]
    row = metrics("pneumothorax", items, {"pneumothorax": 0.5})
    assert row.scored == 0 and row.auroc == pytest.approx(0.75) and row.ece is None
    assert row.sensitivity == 1.0 and row.specificity == 0.5  # no probability: the threshold cannot decide


def test_choose_thresholds_reaches_the_target_with_the_most_specific_point() -> None:
    items = [*(_item(True, p) for p in (0.9, 0.8, 0.3, 0.2)), _item(False, 0.5), _item(False, 0.1),
             _item(True, 0.7, finding="edema"), _item(False, 0.2, finding="edema"),
             _item(False, 0.4, finding="fracture")]
    chosen, skipped = choose_thresholds(items, 0.75)  # 3 of 4 positives: the third largest, 0.3
    assert [(c.finding, c.threshold, c.sensitivity, c.specificity) for c in chosen] == [
        ("pneumothorax", 0.3, 0.75, 0.5), ("edema", 0.7, 1.0, 1.0)]
    assert skipped == ["fracture"]  # no positive item
    assert choose_thresholds([_item(True, 0.123456)], 1.0)[0][0].threshold == 0.1234  # rounded down: still reached
    with pytest.raises(ValueError):
        choose_thresholds(items, 0.0)


def test_the_proposed_yaml_is_a_node_config_section() -> None:
    chosen, skipped = choose_thresholds([_item(True, 0.31), _item(False, 0.2), _item(True, 0.7, finding="edema")],
                                        0.9)
    text = thresholds_yaml(chosen, skipped, 0.9, "demo.json (2 studies, model)", demo=True)
    assert "DEMO model" in text and "sensitivity 1.00 of 1 positive" in text
    config = config_from_dict({"processing": {"processor": "passthrough"}, **yaml.safe_load(text)}, environ={})
    assert config.thresholds == {"pneumothorax": 0.31, "edema": 0.7} == read_thresholds(text)
    assert config_from_dict({"processing": {"processor": "passthrough"},
                             **yaml.safe_load(thresholds_yaml([], ["edema"], 0.9, "x"))}, environ={}).thresholds == {}
    with pytest.raises(ValueError, match="findings.edema.threshold"):
        read_thresholds("findings:\n  edema: {threshold: 2}\n")


@pytest.mark.parametrize(("target", "key"), [
    ("abnormality_[pleural effusions]", "pleural_effusion"), ("abnormality_[Pneumothorax]", "pneumothorax"),
    ("abnormality_[a fracture]", "fracture"), ("abnormality_[heart enlarged]", "cardiomegaly"),
    ("abnormality_[pulmonary edema]", "edema"), ("abnormality_[low lung volumes]", None)])
def test_cxrtrek_targets_map_to_finding_keys(target: str, key: str | None) -> None:
    text = target_text(target)
    assert text is not None and finding_key(text, BOOK) == key
    assert target_text("region_heart") is None


def _predictions(studies: list[EvalStudy], probability) -> dict:
    """The gold answers, each checklist yes/no with ``probability(gold)`` as the model's P(yes)."""
    out = {}
    for study in studies:
        answers = []
        for item in study.items:
            if item.yes_no is not None and target_text(item.target):
                p = probability(item.yes_no)
                answers.append({"answer": "Yes." if p >= 0.5 else "No.", "probabilities": {"Yes.": p, "No.": 1 - p}})
            else:
                answers.append(item.answer)
        out[study.key] = answers
    return out


def test_cli_per_finding_table_thresholds_and_proposals(demo_path: Path, demo_studies: list[EvalStudy],
                                                         tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    predictions = tmp_path / "predictions.json"
    predictions.write_text(json.dumps(_predictions(demo_studies, lambda gold: 0.7 if gold else 0.2)))
    out, proposed, html, png = (tmp_path / n for n in ("doc.json", "t.yaml", "report.html", "calibration.png"))
    assert main(["eval", str(demo_path), "--predictions", str(predictions), "--json", str(out), "--html", str(html),
                 "--calibration", str(png), "--choose-thresholds", str(proposed), "--target-sensitivity", "0.9"]) == 0
    printed = capsys.readouterr().out
    assert "Per finding" in printed and "pleural_effusion" in printed and "Calibration" in printed
    rows = {row["finding"]: row for row in json.loads(out.read_text())["findings"]}
    effusion, pooled = rows["pleural_effusion"], rows[POOLED]
    assert (effusion["count"], effusion["positives"], effusion["scored"]) == (30, 14, 30)
    assert effusion["auroc"] == 1.0 and effusion["sensitivity"] == effusion["specificity"] == 1.0
    assert pooled["count"] == 212 and pooled["positives"] == 113
    # two probabilities: 0.2 (99 items, none present) and 0.7 (113, all present)
    assert pooled["ece"] == pytest.approx((99 * 0.2 + 113 * 0.3) / 212)
    assert html.read_text().count("<img") == 1 and "pleural_effusion" in html.read_text()
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    config = config_from_dict({"processing": {"processor": "passthrough"}, **yaml.safe_load(proposed.read_text())},
                              environ={})
    assert config.thresholds["pleural_effusion"] == 0.7  # every positive has 0.7

    # the proposal file back as --thresholds: at 0.7 the same; a stricter point for effusion misses every positive
    text = proposed.read_text()
    block = "  pleural_effusion:\n    threshold: "
    proposed.write_text(text.replace(block + "0.7000", block + "0.9"))
    assert proposed.read_text() != text
    assert main(["eval", str(demo_path), "--predictions", str(predictions), "--json", str(out),
                 "--thresholds", str(proposed)]) == 0
    rows = {row["finding"]: row for row in json.loads(out.read_text())["findings"]}
    assert rows["pleural_effusion"]["threshold"] == 0.9
    assert (rows["pleural_effusion"]["sensitivity"], rows["pleural_effusion"]["specificity"]) == (0.0, 1.0)
    assert (rows["edema"]["threshold"], rows["edema"]["sensitivity"]) == (0.7, 1.0)
    assert main(["eval", str(demo_path), "--oracle", "--thresholds", str(tmp_path / "missing.yaml")]) == 2
    bad = tmp_path / "bad.yaml"
    bad.write_text("findings:\n  pnemothorax: {threshold: 0.3}\n")
    assert main(["eval", str(demo_path), "--oracle", "--thresholds", str(bad)]) == 2
    assert "pnemothorax: not a checklist finding" in capsys.readouterr().err
