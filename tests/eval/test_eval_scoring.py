"""Scoring primitives and the `cxr-node eval --oracle` command (table, JSON, radar PNG)."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from inference.evaluation.scoring import choice_f1, iou, match_boxes

CLI = "import sys; from dicomnode.cli import main; sys.exit(main(sys.argv[1:]))"


def test_iou_and_box_matching() -> None:
    a = (0.1, 0.1, 0.5, 0.5)
    assert iou(a, a) == pytest.approx(1.0)
    assert iou(a, (0.5, 0.5, 0.9, 0.9)) == 0.0
    assert iou(a, (0.3, 0.1, 0.7, 0.5)) == pytest.approx(0.08 / 0.24)  # half overlap: 0.2*0.4 / (2*0.16 - 0.08)
    assert iou((0.5, 0.5, 0.1, 0.1), a) == pytest.approx(1.0)  # corner order does not matter
    # One gold box; an exact prediction plus an extra box halves the item IoU; a box on another image scores 0.
    assert match_boxes([(0, a)], [(0, a)]) == pytest.approx(1.0)
    assert match_boxes([(0, a)], [(0, a), (0, (0.6, 0.6, 0.9, 0.9))]) == pytest.approx(0.5)
    assert match_boxes([(0, a)], [(1, a)]) == 0.0
    assert match_boxes([(0, a), (1, a)], [(1, a)]) == pytest.approx(0.5)


def test_choice_f1() -> None:
    assert choice_f1({"A", "B"}, {"A", "B"}) == 1.0
    assert choice_f1({"A"}, {"A", "B", "C"}) == pytest.approx(0.5)  # P 1, R 1/3
    assert choice_f1({"A", "D"}, {"A", "B"}) == pytest.approx(0.5)
    assert choice_f1({"D"}, {"A"}) == 0.0


def test_cli_oracle_writes_table_json_and_radar(demo_path: Path, tmp_path: Path) -> None:
    out, png = tmp_path / "scores.json", tmp_path / "radar.png"
    proc = subprocess.run(
        [sys.executable, "-c", CLI, "eval", str(demo_path), "--oracle", "--json", str(out),
         "--radar", str(png)],
        capture_output=True, text=True, timeout=300,
    )
    assert proc.returncode == 0, proc.stderr
    assert "cxr-node eval: oracle" in proc.stdout and "stage 8" in proc.stdout
    doc = json.loads(out.read_text())
    assert doc["studies"] == 80 and doc["questions"] == 2157 and doc["unparsed"] == 0
    groups = [doc["overall"], *doc["by_stage"].values(), *doc["by_qtype"].values(), doc["report"]]
    assert sorted(doc["by_stage"]) == [str(s) for s in range(1, 9)]
    assert set(doc["by_qtype"]) == {"open", "yes_no", "single_choice", "multi_choice", "detection"}
    for group in groups:
        assert group["count"] > 0 and group["unparsed"] == 0
        values = [v for k, v in group.items() if k not in ("count", "unparsed", "unparsed_rate", "metric_counts")]
        assert values and all(v is None or v == 1.0 for v in values)
        assert any(v == 1.0 for v in values)
    assert doc["by_qtype"]["open"]["bleu"] == 1.0 and doc["by_qtype"]["detection"]["detection_iou50"] == 1.0
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png.stat().st_size > 10_000


def test_cli_refuses_bad_arguments(demo_path: Path, tmp_path: Path) -> None:
    from dicomnode.cli import main

    assert main(["eval", str(demo_path), "--model", str(tmp_path)]) == 2  # --model needs --images
    assert main(["eval", str(tmp_path / "missing.json"), "--oracle"]) == 2
    assert main(["eval", str(demo_path), "--model", str(tmp_path / "nope"), "--images", str(tmp_path)]) == 2
    assert main(["eval", str(demo_path), "--predictions", str(tmp_path / "nope.json")]) == 2
    assert main(["eval", str(demo_path), "--model", str(tmp_path), "--images", str(tmp_path),
                 "--compare-quantization", "none"]) == 2
    with pytest.raises(SystemExit):
        main(["eval", str(demo_path), "--oracle", "--predictions", str(tmp_path / "p.json")])


def test_quantization_agreement_figures_are_exact(demo_studies) -> None:
    """Setting B = gold with known changes; agreement against setting A = gold."""
    from inference.evaluation.predictions import oracle, parse_for_item, parsed_answers
    from inference.evaluation.quantization import agreement
    from inference.record import QType

    study = next(s for s in demo_studies if sum(i.is_checklist and i.qtype is QType.YES_NO for i in s.items) >= 2)
    a = parsed_answers(oracle([study]))
    b = {study.key: list(a[study.key])}
    items = study.items
    yes_no = [i for i in items if i.qtype is QType.YES_NO]
    checklist_yn = [i for i in yes_no if i.is_checklist]
    flipped = checklist_yn[0]
    b[study.key][flipped.position] = parse_for_item(flipped, "Yes." if not flipped.yes_no else "No.")
    unparsed_both = checklist_yn[1]
    a[study.key][unparsed_both.position] = parse_for_item(unparsed_both, "unclear")
    b[study.key][unparsed_both.position] = parse_for_item(unparsed_both, "unclear")
    det = next(i for i in items if i.qtype is QType.DETECTION)
    x1, y1, x2, y2 = (round(v * 100, 2) for v in det.boxes[0])
    w = x2 - x1
    b[study.key][det.position] = parse_for_item(
        det, f"<|ref|> t <|/ref|> <|box|>({x1 + w / 2:.2f}, {y1:.2f}), ({x2 + w / 2:.2f}, {y2:.2f})<|/box|>")
    opens = [i for i in items if i.qtype is QType.OPEN]
    words = opens[0].answer.split()
    b[study.key][opens[0].position] = parse_for_item(opens[0], " ".join(words[: len(words) // 2]))

    figures = agreement([study], a, b)
    n_yn = len(yes_no) - 1  # the both-unparsed item is left out
    assert figures["yes_no"].count == n_yn and figures["yes_no"].both_unparsed == 1
    assert figures["yes_no"].value == pytest.approx((n_yn - 1) / n_yn)
    n_ck = sum(i.is_checklist and i.qtype is not QType.OPEN for i in items) - 1
    assert figures["checklist"].value == pytest.approx((n_ck - 1) / n_ck)
    assert figures["choice"].value == 1.0
    n_det = sum(i.qtype is QType.DETECTION for i in items)
    half = (w - round(w / 2, 2)) / (w + round(w / 2, 2))  # box shifted by half its width: IoU 1/3
    assert figures["box_mean_iou"].value == pytest.approx((n_det - 1 + half) / n_det, abs=1e-4)
    k, n = len(words) // 2, len(words)
    assert figures["open_token"].value == pytest.approx((len(opens) - 1 + 2 * k / (n + k)) / len(opens))
