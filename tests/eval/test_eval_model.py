"""The model path end to end on CPU with a tiny demo model: teacher-forced and free, table + JSON + PNG; the
saved answers re-score identically; and the quantization comparison (none vs nf4) reports every figure."""
from __future__ import annotations

import json
from pathlib import Path

import pytest

from dicomnode.cli import main
from inference.evaluation.dataset import load_dataset
from inference.evaluation.scoring import METRIC_NAMES

pytestmark = pytest.mark.timeout(900)

FAST = ["--max-new-tokens", "8", "--no-progress"]


def _check_groups(doc: dict, asked: int) -> None:
    assert doc["questions"] == doc["overall"]["count"] == asked
    assert 0 <= doc["unparsed"] <= asked
    groups = [doc["overall"], *doc["by_stage"].values(), *doc["by_qtype"].values()]
    assert set(doc["by_qtype"]) == {"open", "yes_no", "single_choice", "multi_choice", "detection"}
    assert sum(g["count"] for g in doc["by_stage"].values()) == asked
    for group in groups:
        for name in (*METRIC_NAMES, "score", "unparsed_rate"):
            assert group[name] is None or 0.0 <= group[name] <= 1.0, (name, group)
    for name in METRIC_NAMES:
        assert doc["overall"][name] is not None, name  # every metric is computed on this mix of items


@pytest.mark.parametrize("free", [False, True], ids=["teacher_forced", "free"])
def test_model_path_end_to_end(
    free: bool, qwen_demo_dir: Path, model_eval_data: tuple[Path, Path], tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    dataset, images = model_eval_data
    out, png, answers = tmp_path / "scores.json", tmp_path / "radar.png", tmp_path / "answers.json"
    args = ["eval", str(dataset), "--model", str(qwen_demo_dir), "--images", str(images), "--json", str(out),
            "--radar", str(png), "--save-predictions", str(answers), *FAST]
    assert main(args + (["--free"] if free else [])) == 0
    printed = capsys.readouterr().out
    assert "cxr-node eval: model" in printed and "DEMO model" in printed and "stage 3" in printed

    doc = json.loads(out.read_text())
    asked = sum(len(s.items) for s in load_dataset(dataset))
    assert doc["source"] == "model" and doc["mode"] == ("free" if free else "teacher_forced")
    assert doc["model"]["demo_model"] is True and doc["model"]["quantization"] == "nf4"
    assert doc["seconds_per_study"] > 0
    _check_groups(doc, asked)
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"

    # The raw answers saved from the run score exactly the same through --predictions (same parser, same scorer).
    saved = json.loads(answers.read_text())
    assert sum(len(v) for v in saved.values()) == asked
    assert all(isinstance(a, str) or set(a) == {"answer", "probabilities"} for v in saved.values() for a in v)
    scored = [a for v in saved.values() for a in v if isinstance(a, dict)]  # the yes/no and single choices
    assert scored and all(abs(sum(a["probabilities"].values()) - 1) < 1e-4 for a in scored)
    assert doc["findings"] and doc["findings"][-1]["finding"] == "all"  # the checklist item, per finding
    rescored = tmp_path / "rescored.json"
    assert main(["eval", str(dataset), "--predictions", str(answers), "--json", str(rescored)]) == 0
    again = json.loads(rescored.read_text())
    for key in ("overall", "by_stage", "by_qtype", "unparsed", "findings"):
        assert again[key] == doc[key], key


def test_compare_quantization_none_nf4(
    qwen_demo_dir: Path, model_eval_data: tuple[Path, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    dataset, images = model_eval_data
    out, png = tmp_path / "compare.json", tmp_path / "radar.png"
    args = ["eval", str(dataset), "--model", str(qwen_demo_dir), "--images", str(images),
            "--compare-quantization", "none,nf4", "--json", str(out), "--radar", str(png), *FAST]
    assert main(args) == 0
    printed = capsys.readouterr().out
    assert "Quantization agreement: none vs nf4" in printed and "box mean IoU" in printed

    doc = json.loads(out.read_text())
    assert doc["compare_quantization"] == ["none", "nf4"]
    asked = sum(len(s.items) for s in load_dataset(dataset))
    assert set(doc["agreement"]) == {"yes_no", "choice", "box_mean_iou", "checklist", "open_token"}
    for name, fig in doc["agreement"].items():
        assert fig["count"] + fig["both_unparsed"] > 0, name  # every figure had items to compare
        assert fig["value"] is None or 0.0 <= fig["value"] <= 1.0
    assert doc["agreement"]["open_token"]["count"] > 0  # open answers always parse
    none, nf4 = doc["settings"]["none"], doc["settings"]["nf4"]
    for setting in (none, nf4):
        assert setting["footprint_bytes"] > 0 and setting["seconds_per_study"] > 0 and setting["load_seconds"] > 0
        assert setting["peak_gpu_bytes"] is None or setting["peak_gpu_bytes"] >= setting["footprint_bytes"]
        assert setting["scores"]["overall"]["count"] == asked
    assert none["model"]["quantization"] == "none" and nf4["model"]["quantization"] == "nf4"
    assert nf4["footprint_bytes"] < none["footprint_bytes"]  # 4-bit decoder weights
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_parallel_within_stage_cost_beside_sequential(
    qwen_demo_dir: Path, model_eval_data: tuple[Path, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    dataset, images = model_eval_data
    out = tmp_path / "parallel.json"
    args = ["eval", str(dataset), "--model", str(qwen_demo_dir), "--images", str(images), "--free",
            "--parallel-within-stage", "--json", str(out), *FAST]
    assert main(args) == 0
    printed = capsys.readouterr().out
    assert "Accuracy cost of parallel_within_stage" in printed and "answer agreement, parallel vs sequential" in printed

    doc = json.loads(out.read_text())
    asked = sum(len(s.items) for s in load_dataset(dataset))
    _check_groups(doc, asked)  # the main scores are the sequential run's
    comparison = doc["parallel_within_stage"]
    sequential, parallel = comparison["modes"]["sequential"], comparison["modes"]["parallel_within_stage"]
    assert sequential["overall"] == doc["overall"]
    assert parallel["overall"]["count"] == asked and parallel["seconds_per_study"] > 0
    cost = comparison["cost"]
    assert cost["overall"]["score"] == pytest.approx(parallel["overall"]["score"] - sequential["overall"]["score"])
    assert cost["overall"]["unparsed"] == parallel["overall"]["unparsed"] - sequential["overall"]["unparsed"]
    assert set(cost["by_stage"]) == set(sequential["by_stage"])
    # the first question of each study is asked the same way in both modes (no history), so its answers agree
    assert comparison["agreement"]["open_token"]["count"] > 0


def test_waves_group_a_stage_and_ask_image_questions_alone(demo_studies) -> None:
    from inference.evaluation.predictions import _waves

    study = demo_studies[0]
    items = study.items
    assert _waves(items, False) == [[i] for i in range(len(items))]
    waves = _waves(items, True)
    assert [i for wave in waves for i in wave] == list(range(len(items)))  # every item once, in order
    for wave in waves:
        assert len({items[i].stage for i in wave}) == 1
        assert len(wave) == 1 or not any(items[i].n_images for i in wave)
    assert len(waves) < len(items)  # some stage has several questions asked together
