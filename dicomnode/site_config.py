"""`cxr-node config init DIR`: a site's starting config and stage book, copied from the package data.

``DIR/node.yaml`` is the commented example config with its paths pointed into DIR (model, stage book, data
directory, all absolute so the node can start from any directory); ``DIR/stages.yaml`` is the stage book shipped
with the package, for the site to edit. ``cxr-node config check DIR/node.yaml`` passes on what was written.
"""
from __future__ import annotations

import re
from importlib import resources
from pathlib import Path

EXAMPLE_CONFIG = "node.example.yaml"
CONFIG_NAME = "node.yaml"
STAGES_NAME = "stages.yaml"


class InitError(RuntimeError):
    """The files cannot be written (they exist, or the directory is not writable)."""


def example_config_text() -> str:
    """The commented example config shipped in the package."""
    return resources.files("dicomnode.data").joinpath(EXAMPLE_CONFIG).read_text(encoding="utf-8")


def stage_book_text() -> str:
    """The stage book shipped in the package."""
    return resources.files("inference.data").joinpath(STAGES_NAME).read_text(encoding="utf-8")


def set_value(text: str, section: str, key: str, value: str) -> str:
    """``text`` with ``section.key``'s value replaced, its trailing comment kept in its column."""
    # one line per repetition ([^\n], never DOTALL's "."), so a long section cannot make the search backtrack
    pattern = re.compile(rf"(?m)^{re.escape(section)}:\n(?:(?:[ #][^\n]*)?\n)*?(?P<line>  {re.escape(key)}:[^\n]*)")
    match = pattern.search(text)
    if match is None:
        raise InitError(f"{section}.{key} not found in the example config")
    line = match.group("line")
    comment_at = line.find("#")
    new = f"  {key}: {value}"
    if comment_at > 0:
        new = new.ljust(comment_at - 1) + " " + line[comment_at:]
    return text[:match.start("line")] + new + text[match.end("line"):]


def site_config_text(directory: Path) -> str:
    """The example config with model, stage book and data directory inside ``directory``."""
    text = example_config_text()
    text = set_value(text, "storage", "data_dir", str(directory / "var"))
    text = set_value(text, "model", "path", str(directory / "model"))
    text = set_value(text, "reasoning", "stages_file", str(directory / STAGES_NAME))
    return text


def write_site_config(directory: Path, force: bool = False) -> list[Path]:
    """Write ``node.yaml`` and ``stages.yaml`` into ``directory`` (created); refuses to overwrite unless ``force``."""
    directory = directory.resolve()
    targets = {directory / CONFIG_NAME: site_config_text(directory), directory / STAGES_NAME: stage_book_text()}
    existing = [str(p) for p in targets if p.exists()]
    if existing and not force:
        raise InitError(f"{', '.join(existing)} exist(s); use --force to overwrite")
    try:
        directory.mkdir(parents=True, exist_ok=True)
        for path, text in targets.items():
            path.write_text(text, encoding="utf-8")
    except OSError as exc:
        raise InitError(f"cannot write into {directory}: {exc.strerror or exc}") from None
    return list(targets)
