"""Start vLLM's OpenAI-compatible server for a local model directory, in the vLLM venv (scripts/vllm_venv.sh).

Run with that venv's python (``scripts/vllm_venv.sh`` builds it); arguments go to
``vllm.entrypoints.openai.api_server``. The venv has no torchvision, so the stock Qwen-VL processors cannot be
built there: this sets ``CXR_NODE_PROCESSORS`` to this checkout's ``inference/model/processors.py`` and the
venv's sitecustomize (``scripts/vllm_sitecustomize.py``) puts the image-only processors in place in every vLLM
process. Videos are limited to 0 per prompt.
"""
from __future__ import annotations

import importlib.util
import os
import runpy
import sys
from pathlib import Path

PROCESSORS = Path(__file__).resolve().parents[1] / "inference" / "model" / "processors.py"


def main() -> None:
    os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ["CXR_NODE_PROCESSORS"] = str(PROCESSORS)
    args = sys.argv[1:]
    if importlib.util.find_spec("torchvision") is None and "--limit-mm-per-prompt" not in args:
        args += ["--limit-mm-per-prompt", '{"video": 0}']
    if "--enable-prompt-tokens-details" not in args:
        args.append("--enable-prompt-tokens-details")  # usage reports cached (prefix-cache) prompt tokens
    sys.argv = ["vllm.entrypoints.openai.api_server", *args]
    runpy.run_module("vllm.entrypoints.openai.api_server", run_name="__main__")


if __name__ == "__main__":
    main()
