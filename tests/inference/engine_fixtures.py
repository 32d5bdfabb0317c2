"""A real vLLM CPU engine for the whole pytest session (registered as a plugin by ``tests/conftest.py``).

``vllm_engine`` builds the head-size-32 demo model (``size="engine"``: vLLM's CPU attention takes head sizes 32..512
only), starts ``scripts/vllm_server.py`` from the vLLM venv (``scripts/vllm_venv.sh``, which bootstrap runs) with
``--enforce-eager --max-model-len 4096`` and ``VLLM_CPU_KVCACHE_SPACE=1`` on a free 127.0.0.1 port, waits for
``/v1/models`` and stops it at the end of the session: one engine start per session, shared by every test that
asks for it. Without the venv the tests FAIL (CI installs it); only ``CXR_SKIP_VLLM=1`` skips them, on purpose.
"""
from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from inference.model.demo import build_demo_model
from tests.vllm_engine import SKIP_ENV, VllmError, VllmServer, engine_disabled

START_TIMEOUT = 1200.0  # seconds; ~45 s on an idle 2-core machine, several minutes under load
ENGINE_TEST_TIMEOUT = 1800  # pytest-timeout of a test that may be the one starting the engine

_started: list[VllmServer] = []


@pytest.fixture(scope="session")
def engine_model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The demo model the engine serves (random weights; its marker file says ``demo``)."""
    return build_demo_model(tmp_path_factory.mktemp("engine_model") / "demo", size="engine", seed=0)


@pytest.fixture(scope="session")
def vllm_engine(engine_model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[VllmServer]:
    """A running vLLM CPU engine serving ``engine_model_dir`` (``.url`` is its ``/v1`` base URL)."""
    if engine_disabled():
        pytest.skip(f"{SKIP_ENV}=1: the vLLM engine is switched off")
    server = VllmServer(engine_model_dir, tmp_path_factory.mktemp("vllm"))
    try:
        server.start(START_TIMEOUT)
    except VllmError as exc:
        pytest.fail(str(exc), pytrace=False)
    _started.append(server)
    try:
        yield server
    finally:
        server.stop()


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    for server in _started:
        terminalreporter.write_line(f"vLLM CPU engine: started in {server.start_seconds:.1f} s "
                                    f"(port {server.port}, log {server.log_path})")
