"""sitecustomize for the vLLM venv (copied there by scripts/vllm_venv.sh): run without torchvision.

PyPI's torchvision is a CUDA build that cannot load next to the CPU torch, so the venv has none. vLLM's Qwen-VL
models import ``smart_resize`` from transformers' torchvision image processor module, which imports torchvision
at module level. This finder serves that module from transformers' PIL image processor instead (same
``smart_resize``; ``Qwen2VLImageProcessor`` is the PIL class). It applies in every process of the venv, including
the subprocesses vLLM starts to inspect models.
"""
import importlib
import importlib.abc
import importlib.util
import sys

_TARGET = "transformers.models.qwen2_vl.image_processing_qwen2_vl"
_PIL = "transformers.models.qwen2_vl.image_processing_pil_qwen2_vl"


class _PilQwenLoader(importlib.abc.Loader):
    def create_module(self, spec):
        return None

    def exec_module(self, module):
        pil = importlib.import_module(_PIL)
        module.__dict__.update({k: v for k, v in vars(pil).items() if not k.startswith("__")})
        module.Qwen2VLImageProcessor = pil.Qwen2VLImageProcessorPil


class _PilQwenFinder(importlib.abc.MetaPathFinder):
    def find_spec(self, fullname, path, target=None):
        if fullname != _TARGET or importlib.util.find_spec("torchvision") is not None:
            return None
        return importlib.util.spec_from_loader(fullname, _PilQwenLoader())


sys.meta_path.insert(0, _PilQwenFinder())
