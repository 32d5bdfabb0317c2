"""`cxr-node model`: build an untrained demo model, save a pre-quantized checkpoint, describe a model directory."""
from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable
from pathlib import Path


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = subparsers.add_parser("model", help="demo model, pre-quantized checkpoints, model info",
                              description="Model directory tools. Models load from local directories only.")
    sub = p.add_subparsers(dest="model_command", metavar="SUBCOMMAND", required=True)

    demo = sub.add_parser("demo", help="build a tiny untrained random-weight VLM offline (outputs are meaningless)",
                          description="Build an untrained demo vision-language model fully offline (tokenizer trained "
                          "on the fly, random weights). Every output of it is labelled as demo output.")
    demo.add_argument("dir", type=Path, metavar="DIR", help="output directory")
    demo.add_argument("--family", default="qwen2_5_vl", choices=("qwen2_5_vl", "qwen2_vl", "llava"),
                      help="architecture (default qwen2_5_vl)")
    demo.add_argument("--size", default="tiny", choices=("tiny", "engine", "medium", "qwen2_5_vl_3b_shape"),
                      help="tiny (tests, ~0.2 M params), medium (~50 M), qwen2_5_vl_3b_shape (3.75 B, bf16, ~7 GB)")
    demo.add_argument("--seed", type=int, default=0, help="weight seed (default 0)")
    demo.set_defaults(func=run_demo)

    quant = sub.add_parser("quantize", help="save a pre-quantized 4-bit checkpoint that loads faster",
                           description="Quantize SRC while loading it and save the result to DST; DST reloads as "
                           "bitsandbytes 4-bit layers without quantizing again.")
    quant.add_argument("src", type=Path, metavar="SRC", help="full-precision model directory")
    quant.add_argument("dst", type=Path, metavar="DST", help="new directory for the quantized checkpoint")
    quant.add_argument("--quantization", default="nf4", choices=("nf4", "fp4", "int8"), help="default nf4")
    quant.add_argument("--quantize-vision", action="store_true",
                       help="quantize the vision tower and projector too (default: keep them in bf16)")
    quant.add_argument("--device", default="auto", help="auto (CUDA when present), cpu, cuda")
    quant.add_argument("--profile", help="model profile override")
    quant.set_defaults(func=run_quantize)

    info = sub.add_parser("info", help="describe a model directory (profile, demo flag, quantization, weights hash)")
    info.add_argument("dir", type=Path, metavar="DIR", help="model directory")
    info.add_argument("--profile", help="model profile override")
    info.set_defaults(func=run_info)


def _reported(command: str, make: Callable[[], str], errors: tuple[type[Exception], ...]) -> int:
    """Print what ``make()`` returns (exit 0), or ``cxr-node model <command>: <error>`` on stderr for one of
    ``errors`` (exit 2)."""
    try:
        text = make()
    except errors as exc:
        print(f"cxr-node model {command}: {exc}", file=sys.stderr)
        return 2
    print(text)
    return 0


def run_demo(args: argparse.Namespace) -> int:
    from inference.model.demo import build_demo_model

    def make() -> str:
        out = build_demo_model(args.dir, family=args.family, size=args.size, seed=args.seed)
        return f"demo model ({args.family}, {args.size}; UNTRAINED, outputs are meaningless) written to {out}"

    return _reported("demo", make, (ValueError, OSError))


def run_quantize(args: argparse.Namespace) -> int:
    from inference.model.loading import ModelLoadError, profile_for
    from inference.model.quantize import quantize_checkpoint

    def make() -> str:
        skip = ["lm_head"] if args.quantize_vision else None
        if skip is None and args.profile:
            skip = list(profile_for(args.src, args.profile).skip_modules)
        out = quantize_checkpoint(args.src, args.dst, quantization=args.quantization, skip_modules=skip,
                                  device=args.device, profile=args.profile)
        return f"{args.quantization} checkpoint written to {out}"

    return _reported("quantize", make, (ModelLoadError, ValueError, OSError))


def run_info(args: argparse.Namespace) -> int:
    from inference.model.loading import ModelLoadError, profile_for, read_config, read_marker, weights_sha256
    from inference.model.quantization import describe_saved_quantization

    def make() -> str:
        config = read_config(args.dir)
        prof = profile_for(args.dir, args.profile)
        marker = read_marker(args.dir)
        info = {"model_dir": str(args.dir.resolve()), "model_type": config.get("model_type"),
                "architectures": config.get("architectures"), "profile": prof.name,
                "box_convention": str(prof.box_convention), "answer_wrapper": prof.answer_wrapper,
                "demo_model": bool(marker.get("demo", False)), "name": marker.get("name", args.dir.name),
                "saved_quantization": describe_saved_quantization(config) or "none",
                "weights_sha256": weights_sha256(args.dir)}
        return json.dumps(info, indent=2)

    return _reported("info", make, (ModelLoadError, ValueError, OSError))
