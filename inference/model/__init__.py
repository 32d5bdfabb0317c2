"""Model half of the reasoning engine: loading (quantized, local only), profiles, the prefix-cached ChatModel,
the offline demo-model builder and pre-quantized checkpoints."""
from __future__ import annotations

import os

# No network at run time: models load from local directories only (every from_pretrained also passes
# local_files_only=True). Set before huggingface_hub is imported, where that has not happened yet.
os.environ.setdefault("HF_HUB_OFFLINE", "1")

from inference.threads import passive_wait  # noqa: E402 - imports no torch

# OpenMP reads its wait policy once, when torch loads it (just below): idle threads sleep instead of spinning
# (inference/threads.py), unless the environment names a policy.
passive_wait()

from inference.model.demo import build_demo_model  # noqa: E402
from inference.model.engine import LoadedModel, ModelInfo  # noqa: E402
from inference.model.loading import ModelLoadError, load_chat_model, resolve_device  # noqa: E402
from inference.model.open import ModelSpec, open_chat_model  # noqa: E402

__all__ = ["LoadedModel", "ModelInfo", "ModelLoadError", "ModelSpec", "build_demo_model", "load_chat_model",
           "open_chat_model", "resolve_device"]
