"""``open_chat_model(spec)``: the one place that turns a model choice (a local directory or a serving engine) into
a ``ChatModel``. The node (``model:`` in its config) and the ``reason``, ``run`` and ``eval`` commands all call it."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from inference.chat import ChatModel

REMOTE_DEFAULT_PROFILE = "qwen2_5_vl"


@dataclass(frozen=True)
class ModelSpec:
    """Which model, and how to run it. ``backend: transformers`` loads ``path`` in this process (quantized);
    ``openai`` talks to an OpenAI-compatible engine at ``url`` (``name``: the served model id, default the first
    one the engine lists; the API key from the environment variable ``api_key_env``)."""

    backend: Literal["transformers", "openai"] = "transformers"
    path: Path | None = None
    quantization: str = "nf4"
    device: str = "auto"
    skip_modules: list[str] | None = None
    dtype: str | None = None
    profile: str | None = None  # None: from the model's config (local), REMOTE_DEFAULT_PROFILE (engine)
    cache: Literal["prefix", "none"] = "prefix"
    seed: int = 0
    threads: int | None = None  # torch threads of a local model (None: the process's plan, inference/threads.py)
    url: str | None = None
    name: str | None = None
    api_key_env: str | None = None
    timeout_seconds: float = 120.0
    min_pixels: int | None = None  # engine: the image grid's bounds (keep max_pixels <= the served processor's)
    max_pixels: int | None = None

    @property
    def where(self) -> str:
        """The model directory or the engine's URL (for messages)."""
        return str(self.url if self.backend == "openai" else self.path)


def open_chat_model(spec: ModelSpec) -> ChatModel:
    """The ``ChatModel`` of ``spec``. Local: ``ModelLoadError``/``OSError`` when it cannot load. Engine: checks
    ``/v1/models`` (``EngineUnavailable`` when the engine does not answer)."""
    if spec.backend == "openai":
        from inference.model.remote import connect

        if not spec.url:
            raise ValueError("an engine-served model needs its url")
        grid: dict[str, Any] = {key: value for key, value in (("min_pixels", spec.min_pixels),
                                                              ("max_pixels", spec.max_pixels)) if value is not None}
        return connect(spec.url, name=spec.name, api_key_env=spec.api_key_env, timeout_seconds=spec.timeout_seconds,
                       profile=spec.profile or REMOTE_DEFAULT_PROFILE, seed=spec.seed, **grid)
    from inference.model.loading import load_chat_model

    if spec.path is None:
        raise ValueError("a local model needs its directory (path)")
    return load_chat_model(spec.path, quantization=spec.quantization, device=spec.device,
                           skip_modules=spec.skip_modules, dtype=spec.dtype, profile=spec.profile, cache=spec.cache,
                           seed=spec.seed, threads=spec.threads)
