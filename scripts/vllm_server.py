"""Start vLLM's OpenAI-compatible server with the project's image-only Qwen-VL processors registered.

Run with the vLLM venv's python (``.cache/vllm-venv``; ``scripts/vllm_venv.sh`` builds it); arguments go to
``vllm.entrypoints.openai.api_server``. That venv has no torchvision, so the stock Qwen-VL processors cannot be
built there: ``inference/model/processors.py`` is loaded from this checkout by file path (the ``inference``
package itself needs the node's dependencies) and registered before vLLM loads the model. The engine core runs
in this process (``VLLM_ENABLE_V1_MULTIPROCESSING=0``) so the registration applies to it too.
"""
from __future__ import annotations

import importlib.util
import os
import runpy
import sys
from pathlib import Path

PROCESSORS = Path(__file__).resolve().parents[1] / "inference" / "model" / "processors.py"


class _NoVideo:
    """Stands in for the video processor an image-only processor lacks."""

    class valid_kwargs:  # noqa: N801 - the attribute name vLLM reads
        pass


def _image_only_from_pretrained(module) -> None:  # type: ignore[no-untyped-def]
    """vLLM loads Qwen-VL processors by class (``Qwen2_5_VLProcessor.from_pretrained``), not through
    ``AutoProcessor``: route those calls to the image-only subclasses."""
    for stock, image_only in ((module.Qwen2_5_VLProcessor, module.Qwen2_5_VLImageOnlyProcessor),
                              (module.Qwen2VLProcessor, module.Qwen2VLImageOnlyProcessor)):
        original = stock.from_pretrained.__func__

        def from_pretrained(cls, *args, _stock=stock, _image_only=image_only, _original=original, **kwargs):
            processor = _original(_image_only if cls is _stock else cls, *args, **kwargs)
            if not hasattr(processor, "video_processor"):
                processor.video_processor = _NoVideo()  # vLLM reads its kwargs; videos are never sent
            return processor

        stock.from_pretrained = classmethod(from_pretrained)


def main() -> None:
    os.environ.setdefault("VLLM_ENABLE_V1_MULTIPROCESSING", "0")
    os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    spec = importlib.util.spec_from_file_location("cxr_image_only_processors", PROCESSORS)
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    module.register_image_only_processors()
    if not module.torchvision_available():
        _image_only_from_pretrained(module)
    args = sys.argv[1:]
    if not module.torchvision_available() and "--limit-mm-per-prompt" not in args:
        args += ["--limit-mm-per-prompt", '{"video": 0}']  # no video processor here
    sys.argv = ["vllm.entrypoints.openai.api_server", *args]
    runpy.run_module("vllm.entrypoints.openai.api_server", run_name="__main__")


if __name__ == "__main__":
    main()
