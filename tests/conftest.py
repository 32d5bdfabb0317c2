"""Suite-wide pytest configuration: the ``gpu`` marker skips without CUDA."""
from __future__ import annotations

import pytest

# Session-scoped tiny demo models (tests/inference/model_fixtures.py) and the vLLM CPU engine
# (tests/inference/engine_fixtures.py), both on ``pythonpath``, for every test directory.
pytest_plugins = ("model_fixtures", "engine_fixtures")


def _cuda_available() -> bool:
    try:
        import torch
    except ImportError:
        return False
    return bool(torch.cuda.is_available())


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    if _cuda_available():
        return
    skip_gpu = pytest.mark.skip(reason="needs a CUDA device")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip_gpu)


def pytest_configure(config: pytest.Config) -> None:
    """Set pynetdicom's process-wide switches as ``cxr-node`` does at start-up, for tests that call the SCU
    functions directly."""
    from dicomnode.association import configure_pynetdicom

    configure_pynetdicom()
