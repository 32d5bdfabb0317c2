"""Session-scoped tiny demo models (Qwen2.5-VL and Llava), built once per pytest session.

The root ``tests/conftest.py`` registers this module as a plugin, so every test directory can ask for these
fixtures by name (do not import them into test modules: that would build the models once per module).
Each directory is a normal local model directory (load it with ``inference.model.load_chat_model``); the models are
untrained (``cxr_node_model.json`` says ``"demo": true``). Building both takes a few seconds on CPU.
"""
from __future__ import annotations

from pathlib import Path

import pytest

from inference.model.demo import build_demo_model

DEMO_FAMILIES: tuple[str, ...] = ("qwen2_5_vl", "llava")


@pytest.fixture(scope="session")
def demo_model_dirs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """{family: directory} of tiny demo models, built once per session."""
    root = tmp_path_factory.mktemp("demo_models")
    return {family: build_demo_model(root / family, family=family, size="tiny", seed=0) for family in DEMO_FAMILIES}


@pytest.fixture(scope="session")
def qwen_demo_dir(demo_model_dirs: dict[str, Path]) -> Path:
    """A tiny random Qwen2.5-VL demo model directory."""
    return demo_model_dirs["qwen2_5_vl"]


@pytest.fixture(scope="session")
def llava_demo_dir(demo_model_dirs: dict[str, Path]) -> Path:
    """A tiny random Llava demo model directory."""
    return demo_model_dirs["llava"]


@pytest.fixture(scope="session")
def qwen2_vl_demo_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny random Qwen2-VL demo model directory (built only when a test asks for it)."""
    return build_demo_model(tmp_path_factory.mktemp("demo_qwen2_vl") / "qwen2_vl", family="qwen2_vl", size="tiny")
