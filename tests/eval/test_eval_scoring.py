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
    with pytest.raises(SystemExit):
        main(["eval", str(demo_path), "--oracle", "--predictions", str(tmp_path / "p.json")])
