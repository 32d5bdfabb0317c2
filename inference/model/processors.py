"""Processor helpers: an image-only Qwen-VL processor for machines without torchvision.

transformers 5.x builds the stock Qwen2-VL / Qwen2.5-VL processors with a video processor, which needs
torchvision. The CPU torch pin cannot have torchvision, so we use an image-only subclass (same text and image
handling, no video). It is registered with ``AutoProcessor`` so that ``AutoProcessor.from_pretrained`` returns it
instead of silently falling back to a bare tokenizer.
"""
from __future__ import annotations

import importlib.util
from typing import Any

from transformers import AutoProcessor
from transformers.models.qwen2_5_vl import Qwen2_5_VLConfig
from transformers.models.qwen2_5_vl.processing_qwen2_5_vl import Qwen2_5_VLProcessor
from transformers.models.qwen2_vl import Qwen2VLConfig
from transformers.models.qwen2_vl.processing_qwen2_vl import Qwen2VLProcessor
from transformers.processing_utils import ProcessorMixin


def torchvision_available() -> bool:
    return importlib.util.find_spec("torchvision") is not None


def _init_image_only(self: Any, image_processor: Any, tokenizer: Any, chat_template: str | None) -> None:
    self.image_token = getattr(tokenizer, "image_token", None) or "<|image_pad|>"
    self.video_token = getattr(tokenizer, "video_token", None) or "<|video_pad|>"
    self.image_token_id = getattr(tokenizer, "image_token_id", None) or tokenizer.convert_tokens_to_ids(
        self.image_token
    )
    self.video_token_id = getattr(tokenizer, "video_token_id", None) or tokenizer.convert_tokens_to_ids(
        self.video_token
    )
    ProcessorMixin.__init__(self, image_processor, tokenizer, chat_template=chat_template)


class Qwen2_5_VLImageOnlyProcessor(Qwen2_5_VLProcessor):
    """Qwen2.5-VL processor without a video processor (no torchvision needed)."""

    def __init__(self, image_processor: Any = None, tokenizer: Any = None, chat_template: str | None = None,
                 **kwargs: Any) -> None:
        _init_image_only(self, image_processor, tokenizer, chat_template)


class Qwen2VLImageOnlyProcessor(Qwen2VLProcessor):
    """Qwen2-VL processor without a video processor (no torchvision needed)."""

    def __init__(self, image_processor: Any = None, tokenizer: Any = None, chat_template: str | None = None,
                 **kwargs: Any) -> None:
        _init_image_only(self, image_processor, tokenizer, chat_template)


IMAGE_ONLY_PROCESSORS: dict[str, type[ProcessorMixin]] = {
    "qwen2_5_vl": Qwen2_5_VLImageOnlyProcessor,
    "qwen2_vl": Qwen2VLImageOnlyProcessor,
}
_registered = False


def register_image_only_processors() -> None:
    """Map the Qwen configs to the image-only processors in ``AutoProcessor`` (once; only without torchvision)."""
    global _registered
    if _registered or torchvision_available():
        return
    AutoProcessor.register(Qwen2_5_VLConfig, Qwen2_5_VLImageOnlyProcessor, exist_ok=True)
    AutoProcessor.register(Qwen2VLConfig, Qwen2VLImageOnlyProcessor, exist_ok=True)
    _registered = True


def load_processor(model_dir: str, model_type: str) -> Any:
    """Load the processor of a local model directory (image-only subclass for Qwen without torchvision)."""
    register_image_only_processors()
    if model_type in IMAGE_ONLY_PROCESSORS and not torchvision_available():
        processor = IMAGE_ONLY_PROCESSORS[model_type].from_pretrained(model_dir, local_files_only=True)
    else:
        processor = AutoProcessor.from_pretrained(model_dir, local_files_only=True)
    if not isinstance(processor, ProcessorMixin):
        raise ValueError(f"{model_dir}: no multimodal processor found (got {type(processor).__name__})")
    return processor
