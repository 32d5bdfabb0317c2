"""Quick start command 1 as a function: the demo brings SR and SC pages back into Orthanc and writes page PNGs."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
from PIL import Image

from dicomnode.demo.run import run_demo

pytestmark = pytest.mark.slow


def test_demo_round_trip(tmp_path: Path) -> None:
    lines: list[str] = []
    result = run_demo(tmp_path / "demo", timeout=600, say=lines.append)
    assert any("UNTRAINED" in line.upper() for line in lines)
    assert result.sr_urls and result.page_preview_urls
    assert len(result.page_pngs) == len(result.page_preview_urls) == len(result.sc_files)
    assert len(result.sr_files) == len(result.sr_urls) == 1
    assert all(p.is_file() for p in [*result.sr_files, *result.sc_files])
    assert [p.name for p in result.page_pngs] == [f"page-{n}.png" for n in range(1, len(result.page_pngs) + 1)]
    for png in result.page_pngs:
        with Image.open(png) as image:
            assert image.size == (1536, 2048) and image.mode == "RGB"
    previews = sorted((tmp_path / "demo" / "out").glob("orthanc-preview-*.png"))
    assert len(previews) == len(result.page_pngs)  # Orthanc rendered every page
    record = json.loads(result.record_json.read_text())
    assert record["provenance"]["demo_model"] is True
    assert record["study_instance_uid"] == result.study_instance_uid
