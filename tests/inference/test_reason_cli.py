"""`cxr-node reason` end to end with the tiny Qwen2.5-VL demo model: summary, DEMO label, JSON, clear errors."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from dicomnode.demo.synthetic import StudySpec, write_study
from inference.record import DEMO_STATEMENT, UNVERIFIED_STATEMENT, ReasoningRecord, StageStatus
from inference.stages import DEFAULT_STAGES_PATH

pytestmark = pytest.mark.timeout(1200)


def _cli(*args: str) -> subprocess.CompletedProcess[str]:
    code = "import sys; from dicomnode.cli import main; sys.exit(main())"
    return subprocess.run([sys.executable, "-c", code, *args], capture_output=True, text=True, timeout=1100,
                          env={**os.environ, "COLUMNS": "160", "HF_HUB_OFFLINE": "1"})


@pytest.fixture(scope="module")
def small_stages(tmp_path_factory: pytest.TempPathFactory) -> Path:
    data = yaml.safe_load(DEFAULT_STAGES_PATH.read_text(encoding="utf-8"))
    data["findings"] = [f for f in data["findings"] if f["key"] in ("cardiomegaly", "pneumothorax")]
    path = tmp_path_factory.mktemp("stages") / "stages.yaml"
    path.write_text(yaml.safe_dump(data, sort_keys=False), encoding="utf-8")
    return path


def test_reason_prints_summary_and_writes_json(tmp_path: Path, qwen_demo_dir: Path, small_stages: Path) -> None:
    files = write_study(tmp_path / "study", StudySpec(rows=256, columns=208, views=("PA",)))
    out = tmp_path / "out" / "record.json"
    result = _cli("reason", str(files[0].parent), "--model", str(qwen_demo_dir), "--stages", str(small_stages),
                  "--max-new-tokens", "3", "--max-side", "160", "--device", "cpu", "--json", str(out))
    assert result.returncode == 0, result.stderr
    text = result.stdout
    assert DEMO_STATEMENT in text and "DEMO / untrained" in text and UNVERIFIED_STATEMENT in text
    for number, title in ((1, "Quality assessment and view"), (4, "Relationship analysis"),
                          (5, "Comparison with prior study"), (8, "Report generation")):
        assert f"Stage {number}: {title}" in text
    assert "no prior study was given" in text
    record = ReasoningRecord.load(out)
    assert record.provenance.demo_model and record.provenance.quantization == "nf4"
    assert [s.number for s in record.stages] == list(range(1, 9))
    assert record.stage(5).status is StageStatus.NOT_APPLICABLE
    assert "s2.present:cardiomegaly" in text


def test_reason_refuses_bad_input_clearly(tmp_path: Path) -> None:
    junk = tmp_path / "junk.dcm"
    junk.write_text("not dicom")
    result = _cli("reason", str(junk), "--model", str(tmp_path))
    assert result.returncode == 2 and f"{junk}: not a readable DICOM file" in result.stderr

    bad_stages = tmp_path / "stages.yaml"
    bad_stages.write_text(DEFAULT_STAGES_PATH.read_text().replace("qtype: yes_no", "qtype: maybe"))
    result = _cli("reason", str(junk), "--model", str(tmp_path), "--stages", str(bad_stages))
    assert result.returncode == 2 and f"{bad_stages}:" in result.stderr and "qtype" in result.stderr

    files = write_study(tmp_path / "study", StudySpec(rows=64, columns=64, views=("PA",)))
    result = _cli("reason", *map(str, files), "--model", str(tmp_path / "no-model"))
    assert result.returncode == 2 and "cannot load model" in result.stderr


def test_reason_applies_operating_points(tmp_path: Path, qwen_demo_dir: Path, small_stages: Path) -> None:
    """A threshold of 0 makes a finding present and 1 absent whatever the answer; the record says which decided."""
    files = write_study(tmp_path / "study", StudySpec(rows=256, columns=208, views=("PA",)))
    points = tmp_path / "points.yaml"
    points.write_text("findings:\n  pneumothorax: {threshold: 0.0}\n  cardiomegaly: {threshold: 1.0}\n")
    out = tmp_path / "record.json"
    result = _cli("reason", str(files[0].parent), "--model", str(qwen_demo_dir), "--stages", str(small_stages),
                  "--max-new-tokens", "3", "--max-side", "160", "--device", "cpu", "--json", str(out),
                  "--thresholds", str(points))
    assert result.returncode == 0, result.stderr
    findings = {f.key: f for f in ReasoningRecord.load(out).findings}
    assert (findings["pneumothorax"].presence.value, findings["pneumothorax"].threshold) == ("present", 0.0)
    assert findings["cardiomegaly"].presence.value == "absent" or findings["cardiomegaly"].probability == 1.0
    assert all(f.probability is not None and 0.0 <= f.probability <= 1.0 for f in findings.values())
    assert "%)" in result.stdout  # the summary gives each scored answer's probability
    points.write_text("findings:\n  pnemothorax: {threshold: 0.3}\n")
    bad = _cli("reason", str(files[0].parent), "--model", str(qwen_demo_dir), "--stages", str(small_stages),
               "--thresholds", str(points))
    assert bad.returncode == 2 and "pnemothorax: not a checklist finding" in bad.stderr
