"""A running node keeps what it loaded at start-up out of the garbage collector's walks (``dicomnode.heap``): a full
collection in a worker holding the model walked millions of objects (0.30-0.34 s, about one study in three)."""
from __future__ import annotations

import gc
from pathlib import Path

from ingest_support import make_config, running_node


def test_a_started_node_freezes_its_start_up_objects_and_a_stopped_one_thaws_them(tmp_path: Path) -> None:
    gc.unfreeze()
    with running_node(make_config(tmp_path / "var")) as node:
        assert gc.get_freeze_count() > 10_000
        tracked = gc.get_objects()  # what a full collection walks: the permanent generation is not in it
        assert not any(obj is node.config for obj in tracked)
        assert not any(obj is node.listener for obj in tracked)
        del tracked
        later = [[], []]  # made after start-up (lists are always tracked): collected as before
        assert any(obj is later[1] for obj in gc.get_objects())
    assert gc.get_freeze_count() == 0
