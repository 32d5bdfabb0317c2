"""The ``findings:`` section: operating points per checklist finding, checked against the stage book."""
from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from dicomnode.config import ConfigError, config_from_dict, load_config

REPO = Path(__file__).resolve().parents[2]
EXAMPLE = REPO / "config" / "node.example.yaml"
BASE = {"processing": {"processor": "passthrough"}}


def test_thresholds_load_and_default_to_none() -> None:
    assert config_from_dict(BASE, environ={}).thresholds == {}
    config = config_from_dict({**BASE, "findings": {"pneumothorax": {"threshold": 0.3}, "edema": {"threshold": 1}}},
                              environ={})
    assert config.thresholds == {"pneumothorax": 0.3, "edema": 1.0}


@pytest.mark.parametrize(("findings", "expected"), [
    ({"pneumothorax": {"threshold": 1.2}}, "findings.pneumothorax.threshold: Input should be less than or equal"),
    ({"pneumothorax": {"threshold": -0.1}}, "findings.pneumothorax.threshold: Input should be greater than or"),
    ({"pneumothorax": {}}, "findings.pneumothorax.threshold: Field required"),
    ({"pneumothorax": {"threshold": 0.3, "band": 1}}, "findings.pneumothorax.band: unknown key"),
    ({"pnemothorax": {"threshold": 0.3}}, "findings: pnemothorax not in the stage book's checklist (known: "),
])
def test_bad_operating_points_are_named(findings: dict, expected: str) -> None:
    with pytest.raises(ConfigError) as caught:
        config_from_dict({**BASE, "findings": findings}, environ={})
    assert any(line.startswith(expected) for line in caught.value.problems), caught.value.problems


def test_keys_come_from_the_configured_stage_book(tmp_path: Path) -> None:
    book = yaml.safe_load((REPO / "config" / "stages.yaml").read_text())
    book["findings"].append({"key": "hernia", "label": "Hiatal hernia", "term": "a hiatal hernia",
                             "group": "disease"})
    path = tmp_path / "stages.yaml"
    path.write_text(yaml.safe_dump(book))
    data = {**BASE, "findings": {"hernia": {"threshold": 0.4}}}
    with pytest.raises(ConfigError, match="hernia not in the stage book"):
        config_from_dict(data, environ={})
    assert config_from_dict({**data, "reasoning": {"stages_file": str(path)}}, environ={}).thresholds == {
        "hernia": 0.4}


def test_environment_overrides_reach_a_threshold() -> None:
    config = config_from_dict(BASE, environ={"CXR_NODE__FINDINGS__PNEUMOTHORAX__THRESHOLD": "0.25"})
    assert config.thresholds == {"pneumothorax": 0.25}


def test_the_example_documents_the_section_and_its_commented_example_is_valid() -> None:
    text = EXAMPLE.read_text()
    assert load_config(EXAMPLE, environ={}).findings == {}
    lines = text.splitlines()
    start = next(i for i, line in enumerate(lines) if line.strip() == "# findings:")
    block = []
    for line in lines[start:]:
        body = line.split("#", 1)[1] if "#" in line else ""
        if block and not body.startswith("   "):
            break
        block.append(body[1:])
    example = yaml.safe_load("\n".join(block))
    assert config_from_dict({**BASE, **example}, environ={}).thresholds == {"pneumothorax": 0.3}
