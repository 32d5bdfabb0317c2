"""Memory of the real Qwen2.5-VL-3B shape (3.755 B params, random weights) on CPU: bf16 against NF4.

Builds the model once in bf16 and saves it (``build_demo_model(size="qwen2_5_vl_3b_shape")``), then loads it
from disk through the product loader (``load_chat_model``) three times, each in a fresh process: bf16 unquantized,
NF4 + double quant with the vision tower / projector / lm_head kept in bf16 (the default), and NF4 with the vision
tower quantized too (only lm_head kept). For each: ``model.get_memory_footprint()``, peak RSS, peak anonymous RSS
(memory not backed by the mmapped safetensors file) and load time. Quantization happens while the weights stream
from disk, so the NF4 loads must never hold a second full-precision copy: their peak anonymous RSS stays well
below the bf16 footprint.

Reference (transformers 5.23, bitsandbytes 0.50.2): bf16 6.99 GiB; NF4 vision kept 3.12 GiB (0.45x).
Goals: vision kept within 2% of 0.45x; vision quantized <= 0.35x. Takes minutes and ~16 GB RAM;
``--size medium`` is a quick check of the script on the ~50 M model.

    .venv/bin/python -m benchmarks.memory [--size qwen2_5_vl_3b_shape|medium] [--work DIR] [--keep]
"""
from __future__ import annotations

import argparse
import json
import resource
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

GIB = 1024 ** 3
REPO = Path(__file__).resolve().parents[1]  # the child runs as ``-m benchmarks.memory`` from here
VARIANTS: dict[str, dict] = {
    "bf16": {"quantization": "none", "skip_modules": None},
    "nf4_vision_kept": {"quantization": "nf4", "skip_modules": None},
    "nf4_vision_quantized": {"quantization": "nf4", "skip_modules": ["lm_head"]},
}


class _Sampler(threading.Thread):
    """Samples RssAnon from /proc/self/status; ru_maxrss gives the overall peak."""

    def __init__(self) -> None:
        super().__init__(daemon=True)
        self.peak_anon = 0
        self.stop = threading.Event()

    def run(self) -> None:
        while not self.stop.is_set():
            self.peak_anon = max(self.peak_anon, _anon_rss())
            time.sleep(0.05)


def _anon_rss() -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("RssAnon:"):
            return int(line.split()[1]) * 1024
    return 0


def _measure(fn) -> dict:
    baseline = _anon_rss()  # interpreter, torch and transformers already imported
    sampler = _Sampler()
    sampler.start()
    start = time.perf_counter()
    result = fn()
    seconds = time.perf_counter() - start
    sampler.stop.set()
    sampler.join()
    peak_rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    return {**result, "seconds": round(seconds, 1), "peak_rss": peak_rss,
            "peak_anon_rss": sampler.peak_anon, "baseline_anon_rss": baseline,
            "peak_anon_above_baseline": sampler.peak_anon - baseline}


def _child_build(model_dir: str, size: str) -> dict:
    from inference.model.demo import build_demo_model

    def build() -> dict:
        build_demo_model(model_dir, family="qwen2_5_vl", size=size)
        return {}
    return _measure(build)


def _child_load(model_dir: str, variant: str) -> dict:
    import torch

    from inference.model import load_chat_model
    from inference.model.quantization import quantized_module_names

    spec = VARIANTS[variant]

    def load() -> dict:
        loaded = load_chat_model(model_dir, quantization=spec["quantization"], skip_modules=spec["skip_modules"],
                                 dtype="bfloat16", device="cpu")
        names = quantized_module_names(loaded.model)
        model = loaded.model
        with torch.no_grad():  # touch every page: mmapped bf16 weights are only resident once read
            for p in model.parameters():
                p.detach().reshape(-1)[::1024].float().sum()
        vision_4bit = sum(1 for n in names["linear4bit"] if n.startswith("model.visual."))
        return {"footprint": model.get_memory_footprint(), "parameters": loaded.info.parameters,
                "linear4bit": len(names["linear4bit"]), "vision_linear4bit": vision_4bit,
                "plain_linear": len(names["linear"]), "params_dtype": str(next(model.parameters()).dtype),
                "torch_threads": torch.get_num_threads()}
    return _measure(load)


def _run_child(*args: str) -> dict:
    proc = subprocess.run([sys.executable, "-m", "benchmarks.memory", *args], cwd=REPO, capture_output=True,
                          text=True)
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(args)} failed:\n{proc.stderr[-4000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv and argv[0] == "_build":
        print(json.dumps(_child_build(argv[1], argv[2])))
        return 0
    if argv and argv[0] == "_load":
        print(json.dumps(_child_load(argv[1], argv[2])))
        return 0
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--size", default="qwen2_5_vl_3b_shape", choices=("qwen2_5_vl_3b_shape", "medium", "tiny"))
    ap.add_argument("--work", type=Path, help="where to build the model (default: a temp dir, removed afterwards)")
    ap.add_argument("--keep", action="store_true", help="keep the built model")
    ap.add_argument("--json", type=Path, help="also write the figures as JSON")
    ap.add_argument("--variants", nargs="+", choices=tuple(VARIANTS), default=list(VARIANTS),
                    help="which loads to measure (bf16 is always needed for the ratios)")
    args = ap.parse_args(argv)
    work = args.work or Path(tempfile.mkdtemp(prefix="cxr-memory-"))
    model_dir = work / f"qwen2_5_vl-{args.size}"
    results: dict[str, dict] = {}
    try:
        if not (model_dir / "config.json").is_file():
            results["build"] = _run_child("_build", str(model_dir), args.size)
            b = results["build"]
            print(f"build+save bf16: {b['seconds']:.0f} s, peak RSS {b['peak_rss'] / GIB:.2f} GiB", flush=True)
        for variant in dict.fromkeys(["bf16", *args.variants]):
            r = results[variant] = _run_child("_load", str(model_dir), variant)
            print(f"{variant:22s} footprint {r['footprint'] / GIB:6.2f} GiB  peak RSS {r['peak_rss'] / GIB:6.2f} GiB"
                  f"  peak anon +{r['peak_anon_above_baseline'] / GIB:5.2f} GiB  load {r['seconds']:5.0f} s  "
                  f"Linear4bit {r['linear4bit']} (vision {r['vision_linear4bit']})", flush=True)
    finally:
        if not args.keep and args.work is None:
            shutil.rmtree(work, ignore_errors=True)
    base = results["bf16"]["footprint"]
    ratios = {v: results[v]["footprint"] / base for v in results if v in VARIANTS}
    print(f"parameters: {results['bf16']['parameters'] / 1e9:.3f} B")
    ok = True
    if "nf4_vision_kept" in ratios:
        kept = ratios["nf4_vision_kept"]
        print(f"NF4 vision kept / bf16:      {kept:.3f}x  (reference 0.45x, goal within 2%)")
        ok &= args.size != "qwen2_5_vl_3b_shape" or abs(kept - 0.45) <= 0.02 * 0.45
    if "nf4_vision_quantized" in ratios:
        print(f"NF4 vision quantized / bf16: {ratios['nf4_vision_quantized']:.3f}x  (goal <= 0.35x)")
        ok &= ratios["nf4_vision_quantized"] <= 0.35
    nf4 = [v for v in ratios if v != "bf16"]
    no_copy = all(results[v]["peak_anon_above_baseline"] < base for v in nf4)
    print("NF4 loads' anonymous memory above the import baseline stays below the bf16 footprint "
          f"(no second full-precision copy): {no_copy}")
    summary = {"ratios": {v: round(r, 4) for v, r in ratios.items()}, "no_second_full_precision_copy": no_copy,
               **results}
    if args.json:
        args.json.write_text(json.dumps(summary, indent=2) + "\n", encoding="utf-8")
    ok &= no_copy
    print("GOALS MET" if ok else "GOALS NOT MET")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
