"""`cxr-node config init`'s rewriting of the shipped example: each key found in its own section, comments kept."""
from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from dicomnode.site_config import InitError, set_value, site_config_text


def test_site_config_points_into_the_site_folder(tmp_path: Path) -> None:
    data = yaml.safe_load(site_config_text(tmp_path))
    assert data["storage"]["data_dir"] == str(tmp_path / "var")
    assert data["model"]["path"] == str(tmp_path / "model")
    assert data["reasoning"]["stages_file"] == str(tmp_path / "stages.yaml")


@pytest.mark.timeout(60)
def test_key_after_many_continued_comments_is_found() -> None:
    """Keys after long runs of commented continuation lines (the example's model section has them): each line is
    one step of the search (a search whose steps could span lines backtracked for minutes here)."""
    filler = "".join(f"  k{n}: v{n}   # comment {n}\n                               # continued {n}\n"
                     for n in range(30))
    text = f"model:\n{filler}  path: ./model   # the model\nother:\n  path: keep\n"
    out = set_value(text, "model", "path", "/site/model")
    assert "  path: /site/model # the model\n" in out and "  path: keep\n" in out
    with pytest.raises(InitError, match="model.missing not found"):
        set_value(text, "model", "missing", "x")
