"""Load a local VLM directory into a ``LoadedModel``: profile, quantization, device, provenance.

Models load only from a local directory (``local_files_only=True``; a hub name is refused). Weights are
quantized while they are read from disk (transformers loads on the meta device first), so no second
full-precision copy is ever held.
"""
from __future__ import annotations

import hashlib
import json
import logging
import os
import time
from pathlib import Path
from typing import Any

import torch
import transformers

from inference.model.demo import DEMO_MODEL_NAME, MARKER_FILE
from inference.model.engine import LoadedModel, ModelInfo
from inference.model.processors import load_processor
from inference.model.profiles import ModelProfile, select_profile
from inference.model.quantization import bnb_config, describe_saved_quantization, dtype_name, parse_dtype
from inference.threads import ensure_threads

log = logging.getLogger(__name__)
WEIGHT_PATTERNS = ("*.safetensors", "pytorch_model*.bin")
HASH_SIDECAR = ".cxr_node_weights_sha256.json"


class ModelLoadError(RuntimeError):
    """The model directory cannot be loaded (missing, incomplete, unknown family)."""


def count_parameters(model: torch.nn.Module) -> int:
    """Parameters as in the unquantized model (a 4-bit tensor stores two values per byte)."""
    total = 0
    for p in model.parameters():
        state = getattr(p, "quant_state", None)
        total += state.shape.numel() if state is not None else p.numel()
    return total


def resolve_device(device: str = "auto") -> str:
    """"auto" -> "cuda" when a CUDA device is present, else "cpu"; anything else is checked and returned."""
    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise ModelLoadError(f"device {device!r} requested but no CUDA device is available")
    return device


def read_marker(model_dir: Path) -> dict[str, Any]:
    """The ``cxr_node_model.json`` marker (demo flag, name, version, profile), or {} when absent."""
    path = model_dir / MARKER_FILE
    if not path.is_file():
        return {}
    return json.loads(path.read_text(encoding="utf-8"))


def weight_files(model_dir: Path) -> list[Path]:
    files = sorted({p for pattern in WEIGHT_PATTERNS for p in model_dir.glob(pattern)})
    return files


def _sidecar_path(model_dir: Path) -> Path:
    if os.access(model_dir, os.W_OK):
        return model_dir / HASH_SIDECAR
    key = hashlib.sha256(str(model_dir.resolve()).encode()).hexdigest()[:16]
    return Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "cxr-node" / f"weights-{key}.json"


def weights_sha256(model_dir: str | Path) -> str:
    """SHA-256 over the weight files (name and content hash of each, sorted by name).

    The result is cached in a sidecar keyed by the files' names, sizes and mtimes, so a restart does not re-read
    gigabytes; any change to a weight file recomputes it.
    """
    model_dir = Path(model_dir)
    files = weight_files(model_dir)
    if not files:
        raise ModelLoadError(f"{model_dir}: no weight files ({', '.join(WEIGHT_PATTERNS)})")
    key = {p.name: [p.stat().st_size, p.stat().st_mtime_ns] for p in files}
    sidecar = _sidecar_path(model_dir)
    try:
        cached = json.loads(sidecar.read_text(encoding="utf-8"))
        if cached.get("files") == key:
            return str(cached["sha256"])
    except (OSError, ValueError, KeyError):
        pass
    total = hashlib.sha256()
    for p in files:
        h = hashlib.sha256()
        with p.open("rb") as fh:
            for block in iter(lambda: fh.read(1 << 22), b""):
                h.update(block)
        total.update(f"{p.name}\t{h.hexdigest()}\n".encode())
    digest = total.hexdigest()
    try:
        sidecar.parent.mkdir(parents=True, exist_ok=True)
        sidecar.write_text(json.dumps({"files": key, "sha256": digest}) + "\n", encoding="utf-8")
    except OSError as exc:
        log.warning("cannot cache the weights hash in %s: %s", sidecar, exc)
    return digest


def read_config(model_dir: str | Path) -> dict[str, Any]:
    model_dir = Path(model_dir)
    if not model_dir.is_dir():
        raise ModelLoadError(f"{model_dir}: not a local model directory (models load from local directories only)")
    path = model_dir / "config.json"
    if not path.is_file():
        raise ModelLoadError(f"{model_dir}: no config.json")
    return json.loads(path.read_text(encoding="utf-8"))


def profile_for(model_dir: str | Path, override: str | None = None) -> ModelProfile:
    """The profile of a model directory: ``override``, else the marker's ``profile``, else from config.json."""
    model_dir = Path(model_dir)
    return select_profile(read_config(model_dir), override or read_marker(model_dir).get("profile"))


def load_chat_model(model_dir: str | Path, quantization: str = "nf4", device: str = "auto",
                    skip_modules: list[str] | None = None, dtype: str | torch.dtype | None = None,
                    profile: str | None = None, cache: str = "prefix", seed: int = 0,
                    threads: int | None = None) -> LoadedModel:
    """Load a local model directory as a ``ChatModel``.

    quantization: nf4 | fp4 | int8 | none (ignored for a pre-quantized checkpoint, which keeps its own).
    skip_modules: modules kept unquantized (default: the profile's vision tower, projector and lm_head).
    dtype: dtype of unquantized weights and 4-bit compute (default bfloat16).
    cache: "prefix" reuses the KV cache of the conversation so far; "none" recomputes every prompt.
    threads: torch threads (default: the process's plan, e.g. the node's, else every usable core unless
    OMP_NUM_THREADS says otherwise; inference/threads.py).
    """
    from transformers import AutoModelForImageTextToText

    start = time.perf_counter()
    ensure_threads(threads)
    model_dir = Path(model_dir)
    config = read_config(model_dir)
    marker = read_marker(model_dir)
    prof = select_profile(config, profile or marker.get("profile"))
    dev = resolve_device(device)
    torch_dtype = parse_dtype(dtype)
    saved = describe_saved_quantization(config)
    kwargs: dict[str, Any] = {"local_files_only": True, "dtype": torch_dtype,
                              "device_map": {"": 0 if dev == "cuda" else dev}}
    if saved:
        if quantization not in (saved, "none") and quantization:
            log.info("%s is pre-quantized as %s; requested %s ignored", model_dir, saved, quantization)
        quantization = saved
    else:
        qconfig = bnb_config(quantization, skip_modules if skip_modules is not None else prof.skip_modules,
                             torch_dtype)
        if qconfig is not None:
            kwargs["quantization_config"] = qconfig
    torch.manual_seed(seed)
    try:
        processor = load_processor(str(model_dir), config.get("model_type", ""))
        model = AutoModelForImageTextToText.from_pretrained(str(model_dir), **kwargs)
    except (OSError, ValueError) as exc:
        raise ModelLoadError(f"{model_dir}: {exc}") from exc
    model.eval()
    demo = bool(marker.get("demo", False))
    info = ModelInfo(
        model_dir=str(model_dir.resolve()),
        model_name=str(marker.get("name") or (DEMO_MODEL_NAME if demo else model_dir.name)),
        model_version=str(marker.get("version", "")),
        weights_sha256=weights_sha256(model_dir),
        profile=prof.name,
        quantization=quantization,
        dtype=dtype_name(torch_dtype),
        device=dev,
        demo_model=demo,
        transformers_version=transformers.__version__,
        seed=seed,
        parameters=count_parameters(model),
        load_seconds=time.perf_counter() - start,
    )
    log.info("loaded %s (%s, %s, %s on %s) in %.1f s", info.model_name, prof.name, quantization, info.dtype, dev,
             info.load_seconds)
    return LoadedModel(model, processor, prof, info, cache=cache, seed=seed)
