"""bitsandbytes quantization settings: nf4 | fp4 | int8 | none, with anchored skip lists per model family."""
from __future__ import annotations

from typing import Any

import torch
from transformers import BitsAndBytesConfig

QUANTIZATIONS: tuple[str, ...] = ("nf4", "fp4", "int8", "none")
DTYPES: dict[str, torch.dtype] = {"bfloat16": torch.bfloat16, "bf16": torch.bfloat16, "float16": torch.float16,
                                  "fp16": torch.float16, "float32": torch.float32, "fp32": torch.float32}


def parse_dtype(dtype: str | torch.dtype | None, default: torch.dtype = torch.bfloat16) -> torch.dtype:
    if dtype is None:
        return default
    if isinstance(dtype, torch.dtype):
        return dtype
    if dtype not in DTYPES:
        raise ValueError(f"unknown dtype {dtype!r}; choose one of {', '.join(DTYPES)}")
    return DTYPES[dtype]


def dtype_name(dtype: torch.dtype) -> str:
    return str(dtype).removeprefix("torch.")


def bnb_config(quantization: str, skip_modules: list[str] | tuple[str, ...],
               compute_dtype: torch.dtype = torch.bfloat16) -> BitsAndBytesConfig | None:
    """The ``BitsAndBytesConfig`` for ``quantization`` (None for "none").

    ``skip_modules`` are anchored module-name prefixes kept unquantized (e.g. ``model.visual``, ``lm_head``); the
    list replaces transformers' default, so it must name ``lm_head`` itself. 4-bit uses double quantization.
    """
    if quantization not in QUANTIZATIONS:
        raise ValueError(f"unknown quantization {quantization!r}; choose one of {', '.join(QUANTIZATIONS)}")
    skip = list(skip_modules)
    if quantization == "none":
        return None
    if quantization == "int8":
        return BitsAndBytesConfig(load_in_8bit=True, llm_int8_skip_modules=skip)
    return BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type=quantization, bnb_4bit_use_double_quant=True,
                              bnb_4bit_compute_dtype=compute_dtype, llm_int8_skip_modules=skip)


def describe_saved_quantization(config: dict[str, Any]) -> str | None:
    """The quantization of a pre-quantized checkpoint from its config.json dict (None if not quantized)."""
    q = config.get("quantization_config")
    if not q:
        return None
    if q.get("quant_method") != "bitsandbytes":
        return str(q.get("quant_method"))
    if q.get("load_in_8bit"):
        return "int8"
    return str(q.get("bnb_4bit_quant_type") or "fp4")


def quantized_module_names(model: torch.nn.Module) -> dict[str, list[str]]:
    """Names of bitsandbytes 4-bit / 8-bit Linear modules and of plain ``nn.Linear`` modules."""
    import bitsandbytes as bnb

    out: dict[str, list[str]] = {"linear4bit": [], "linear8bit": [], "linear": []}
    for name, module in model.named_modules():
        if isinstance(module, bnb.nn.Linear4bit):
            out["linear4bit"].append(name)
        elif isinstance(module, bnb.nn.Linear8bitLt):
            out["linear8bit"].append(name)
        elif isinstance(module, torch.nn.Linear):
            out["linear"].append(name)
    return out
