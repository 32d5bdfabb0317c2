"""Suite-wide pytest configuration: one torch thread per test process, the ``gpu`` marker skips without CUDA, and
the order and grouping of tests for pytest-xdist (``scripts/test.sh`` runs ``-n 2 --dist loadscope``)."""
from __future__ import annotations

import os
from typing import Any

import pytest

# One OpenMP/torch thread in every test process and in what it starts (cxr-node, page processes, the vLLM engine
# inherit the environment), set before anything imports torch. The suite runs two xdist workers on a 2-core machine,
# each often with a reasoning node beside it; torch's default (every core, spinning OpenMP threads) in two processes
# at once collapses (issue 23: 7.7x instead of 2x). Export other values to measure threads; tests of the thread
# policy pass their own environment.
os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

# Session-scoped tiny demo models (tests/inference/model_fixtures.py) and the vLLM CPU engine
# (tests/inference/engine_fixtures.py), both on ``pythonpath``, for every test directory.
pytest_plugins = ("model_fixtures", "engine_fixtures")


def _cuda_available() -> bool:
    try:
        import torch
    except ImportError:
        return False
    return bool(torch.cuda.is_available())


# Test modules whose tests may run on different xdist workers: long tests with fixtures of their own. Any other
# module runs on one worker, so its module-scoped fixtures (a site, a venv, a set of sent studies) are made once.
SPREAD_MODULES = frozenset({"tests/e2e/test_crash_one_result.py"})  # four crash phases, 2-4 minutes each


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    _order(items)
    if _cuda_available():
        return
    skip_gpu = pytest.mark.skip(reason="needs a CUDA device")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip_gpu)


def _order(items: list[pytest.Item]) -> None:
    """Modules with ``slow`` tests first, so the longest work does not start last; modules that start the vLLM
    engine last (``scripts/test.sh`` builds its venv while the other tests run). Stable: a module's tests stay
    together, in file order. xdist hands out modules in this order (``--no-loadscope-reorder``)."""
    slow_modules = {item.path for item in items if item.get_closest_marker("slow") is not None}
    engine_modules = {item.path for item in items if "engine_model_dir" in getattr(item, "fixturenames", ())}

    def rank(item: pytest.Item) -> int:
        return 2 if item.path in engine_modules else 0 if item.path in slow_modules else 1

    items.sort(key=rank)


@pytest.hookimpl(tryfirst=True, optionalhook=True)
def pytest_xdist_make_scheduler(config: pytest.Config, log: Any) -> Any:
    """``--dist loadscope`` (``scripts/test.sh``): a module is one unit of work, except ``SPREAD_MODULES``, whose
    tests are units of their own. (xdist's ``loadgroup`` cannot do this with pytest 9: it renames items through an
    attribute pytest 9 no longer reads.)"""
    if config.getvalue("dist") != "loadscope":
        return None
    from xdist.scheduler import LoadScopeScheduling

    class ModuleScheduling(LoadScopeScheduling):  # type: ignore[misc]
        def _split_scope(self, nodeid: str) -> str:
            module = nodeid.split("::", 1)[0]
            return nodeid if module in SPREAD_MODULES else module

    return ModuleScheduling(config, log)


def pytest_configure(config: pytest.Config) -> None:
    """Set pynetdicom's process-wide switches as ``cxr-node`` does at start-up, for tests that call the SCU
    functions directly."""
    from dicomnode.association import configure_pynetdicom

    configure_pynetdicom()
