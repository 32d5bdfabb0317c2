"""Save a pre-quantized checkpoint: it reloads as bitsandbytes Linear4bit without a quantization config, faster
than quantizing a full-precision checkpoint at every start-up."""
from __future__ import annotations

import json
import shutil
import time
from pathlib import Path

import torch

from inference.model.demo import MARKER_FILE
from inference.model.loading import (
    HASH_SIDECAR,
    WEIGHT_PATTERNS,
    ModelLoadError,
    read_config,
    read_marker,
    resolve_device,
    weights_sha256,
)
from inference.model.profiles import select_profile
from inference.model.quantization import bnb_config, describe_saved_quantization, parse_dtype

_NOT_COPIED = {"config.json", HASH_SIDECAR, MARKER_FILE}


def quantize_checkpoint(src: str | Path, dst: str | Path, quantization: str = "nf4",
                        skip_modules: list[str] | None = None, dtype: str | torch.dtype | None = None,
                        device: str = "auto", profile: str | None = None) -> Path:
    """Quantize the model in ``src`` while loading it and save it to ``dst`` with its processor files and marker."""
    from transformers import AutoModelForImageTextToText

    src, dst = Path(src), Path(dst)
    config = read_config(src)
    if describe_saved_quantization(config):
        raise ModelLoadError(f"{src} is already quantized ({describe_saved_quantization(config)})")
    if quantization not in ("nf4", "fp4", "int8"):
        raise ValueError(f"quantize to nf4, fp4 or int8, not {quantization!r}")
    if dst.exists() and any(dst.iterdir()):
        raise FileExistsError(f"{dst} exists and is not empty")
    marker = read_marker(src)
    prof = select_profile(config, profile or marker.get("profile"))
    torch_dtype = parse_dtype(dtype)
    dev = resolve_device(device)
    skip = list(skip_modules if skip_modules is not None else prof.skip_modules)
    qconfig = bnb_config(quantization, skip, torch_dtype)
    start = time.perf_counter()
    model = AutoModelForImageTextToText.from_pretrained(
        str(src), local_files_only=True, dtype=torch_dtype, quantization_config=qconfig,
        device_map={"": 0 if dev == "cuda" else dev})
    dst.mkdir(parents=True, exist_ok=True)
    weights = {p.name for pattern in WEIGHT_PATTERNS for p in src.glob(pattern)}
    for item in src.iterdir():
        if item.is_file() and item.name not in _NOT_COPIED and item.name not in weights \
                and not item.name.endswith(".index.json"):
            shutil.copy2(item, dst / item.name)
    model.save_pretrained(dst)
    marker.update({"quantized_from": {"model_dir": str(src.resolve()), "weights_sha256": weights_sha256(src),
                                      "quantization": quantization, "skip_modules": skip,
                                      "seconds": round(time.perf_counter() - start, 1)}})
    if profile:
        marker["profile"] = profile
    (dst / MARKER_FILE).write_text(json.dumps(marker, indent=2) + "\n", encoding="utf-8")
    return dst
