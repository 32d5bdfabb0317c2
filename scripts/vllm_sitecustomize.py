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


# The project's image-only Qwen-VL processors (inference/model/processors.py, path in CXR_NODE_PROCESSORS, set by
# scripts/vllm_server.py) are put in place when vLLM's processor loader is imported, in every vLLM process (the
# engine core runs in a process of its own). vLLM loads Qwen-VL processors by class, not through AutoProcessor,
# so the stock classes' from_pretrained is routed to the image-only subclasses; a stand-in answers for the video
# processor they lack (videos are never sent).
_HOOKED = "vllm.transformers_utils.processor"


class _NoVideo:
    class valid_kwargs:  # the attribute name vLLM reads
        pass


def _use_image_only_processors():
    import os

    path = os.environ.get("CXR_NODE_PROCESSORS")
    if not path or importlib.util.find_spec("torchvision") is not None:
        return
    spec = importlib.util.spec_from_file_location("cxr_image_only_processors", path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    module.register_image_only_processors()
    for stock, image_only in ((module.Qwen2_5_VLProcessor, module.Qwen2_5_VLImageOnlyProcessor),
                              (module.Qwen2VLProcessor, module.Qwen2VLImageOnlyProcessor)):
        original = stock.from_pretrained.__func__

        def from_pretrained(cls, *args, _stock=stock, _image_only=image_only, _original=original, **kwargs):
            processor = _original(_image_only if cls is _stock else cls, *args, **kwargs)
            if not hasattr(processor, "video_processor"):
                processor.video_processor = _NoVideo()
            return processor

        stock.from_pretrained = classmethod(from_pretrained)


class _AfterImport(importlib.abc.MetaPathFinder):
    def find_spec(self, fullname, path, target=None):
        if fullname != _HOOKED:
            return None
        for finder in sys.meta_path:
            if finder is self or not hasattr(finder, "find_spec"):
                continue
            spec = finder.find_spec(fullname, path, target)
            if spec is not None:
                break
        else:
            return None
        real = spec.loader

        class _Loader(importlib.abc.Loader):
            def create_module(self, spec):
                return real.create_module(spec)

            def exec_module(self, module):
                real.exec_module(module)
                _use_image_only_processors()

        spec.loader = _Loader()
        return spec


sys.meta_path.insert(0, _AfterImport())
