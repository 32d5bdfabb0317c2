"""The GPU engine path of ``benchmarks/engine.py``: vLLM for CUDA serving a random-weight Qwen2.5-VL-3B-shape model
in bfloat16, studies in flight against the transformers backend on the same GPU. Needs a CUDA device (``gpu``
marker) and a venv with vLLM for CUDA (``CXR_VLLM_GPU_PYTHON``: its python). The throughput goal (>= 4 studies/min
per H100) is printed by the benchmark, not asserted here."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]

pytestmark = [pytest.mark.gpu, pytest.mark.timeout(3600)]


def test_engine_benchmark_on_gpu(tmp_path: Path) -> None:
    python = os.environ.get("CXR_VLLM_GPU_PYTHON")
    if not python:
        pytest.skip("CXR_VLLM_GPU_PYTHON (python of a venv with vLLM for CUDA) is not set")
    out = tmp_path / "engine.json"
    result = subprocess.run([sys.executable, "-m", "benchmarks.engine", "--gpu", "--vllm-python", python,
                             "--studies", "8", "--in-flight", "1,8", "--json", str(out)],
                            cwd=ROOT, capture_output=True, text=True, timeout=3300)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    figures = json.loads(out.read_text())
    assert figures["device"] == "cuda" and set(figures["engine"]) == {"1", "8"}
    for row in figures["engine"].values():
        assert row["studies_per_hour"] > 0 and row["closed_unparsed"] == 0
        assert 0.0 <= row["hit_rate_per_study"]["median"] <= 1.0
    assert figures["engine"]["8"]["peak_requests_in_flight"] > 1
