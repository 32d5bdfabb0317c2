"""Shared fixtures of the evaluation-harness tests: the CXRTrek demo file (skip when absent)."""
from __future__ import annotations

from pathlib import Path

import pytest

DEMO = Path(__file__).resolve().parents[2] / ".." / "shared" / "cxrtrek" / "cxrtrek_demo_80.json"


@pytest.fixture(scope="session")
def demo_path() -> Path:
    if not DEMO.is_file():
        pytest.skip(f"CXRTrek demo data not found at {DEMO}")
    return DEMO.resolve()


@pytest.fixture(scope="session")
def demo_studies(demo_path: Path):
    from inference.evaluation.dataset import load_dataset

    return load_dataset(demo_path)
