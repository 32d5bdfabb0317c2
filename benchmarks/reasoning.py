"""Prefix KV cache against naive full-prompt recompute, one study through all eight stages, same run.

A ~50 M-parameter random model of the Qwen2.5-VL shape (built offline unless --model is given) answers the
stage flow (``inference.flow.run_flow``) on a synthetic PA + lateral study with a prior, once with
``cache="prefix"`` and once with ``cache="none"`` (the same loaded weights). Prints the prompt tokens computed per
study for both, the lower bound (every prompt token computed once: the length of the last prompt), and the
wall-time ratio. Goals: cached <= 1.1x the lower bound; wall time >= 2x faster than naive.

    .venv/bin/python -m benchmarks.reasoning [--model DIR] [--quantization nf4] [--max-new-tokens 16]
"""
from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

from dicomnode.demo.synthetic import StudySpec, make_study, prior_spec
from inference.flow import run_flow
from inference.model import build_demo_model, load_chat_model
from inference.model.engine import LoadedModel
from inference.record import ReasoningRecord
from inference.threads import ensure_threads


def _run(model: LoadedModel, current: list, prior: list, max_new_tokens: int) -> tuple[ReasoningRecord, float]:
    start = time.perf_counter()
    record = run_flow(model, current, prior, max_new_tokens=max_new_tokens)
    return record, time.perf_counter() - start


def _summary(record: ReasoningRecord) -> dict[str, int]:
    questions = [q for s in record.stages for q in s.questions]
    last = questions[-1]
    return {"questions": len(questions), "computed": sum(q.prompt_tokens for q in questions),
            "reused": sum(q.cached_tokens for q in questions), "generated": sum(q.generated_tokens for q in questions),
            "lower_bound": last.prompt_tokens + last.cached_tokens}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", type=Path, help="model directory (default: build the ~50 M demo model)")
    ap.add_argument("--quantization", default="nf4", choices=("nf4", "fp4", "int8", "none"))
    ap.add_argument("--dtype", default=None, help="bfloat16 (default) or float32")
    ap.add_argument("--max-new-tokens", type=int, default=16, help="cap per answer (default 16)")
    ap.add_argument("--size", default="medium", choices=("tiny", "medium"), help="demo size when building")
    ap.add_argument("--no-prior", action="store_true", help="current study only (stages 5-6 not applicable)")
    ap.add_argument("--threads", type=int, default=1,
                    help="torch threads (default 1: a shared machine's other work distorts multi-thread timings; 0 = "
                    "the node's thread policy, inference/threads.py)")
    ap.add_argument("--json", type=Path, help="also write the figures as JSON")
    args = ap.parse_args(argv)
    threads = ensure_threads(args.threads or None).threads  # before the model loads
    with tempfile.TemporaryDirectory() as tmp:
        model_dir = args.model or build_demo_model(Path(tmp) / "demo", family="qwen2_5_vl", size=args.size)
        cached = load_chat_model(model_dir, quantization=args.quantization, dtype=args.dtype, cache="prefix")
        naive = LoadedModel(cached.model, cached.processor, cached.profile, cached.info, cache="none")
        spec = StudySpec(views=("PA", "LATERAL"), rows=512, columns=416)
        current = make_study(spec)
        prior = [] if args.no_prior else make_study(prior_spec(spec))
        print(f"model {cached.info.model_name} ({cached.info.parameters / 1e6:.1f} M params, {cached.info.profile}, "
              f"{cached.info.quantization}, {cached.info.dtype}, {cached.info.device}, "
              f"{threads} threads); images {len(current)} current + {len(prior)} prior; "
              f"max_new_tokens {args.max_new_tokens}")
        _run(cached, current[:1], [], 2)  # warm-up (allocator, kernels)
        rec_cached, t_cached = _run(cached, current, prior, args.max_new_tokens)
        rec_naive, t_naive = _run(naive, current, prior, args.max_new_tokens)
    c, n = _summary(rec_cached), _summary(rec_naive)
    same = [q.raw_answer for s in rec_cached.stages for q in s.questions] == \
        [q.raw_answer for s in rec_naive.stages for q in s.questions]
    lower = c["lower_bound"]
    figures = {
        "questions": c["questions"], "lower_bound_tokens": lower,
        "cached_computed_tokens": c["computed"], "cached_reused_tokens": c["reused"],
        "naive_computed_tokens": n["computed"], "generated_tokens": c["generated"],
        "cached_vs_lower_bound": round(c["computed"] / lower, 3),
        "naive_vs_lower_bound": round(n["computed"] / lower, 2),
        "cached_seconds": round(t_cached, 2), "naive_seconds": round(t_naive, 2),
        "speedup": round(t_naive / t_cached, 2), "same_answers": same,
    }
    print(f"questions per study:          {c['questions']} (naive {n['questions']})")
    print(f"prompt tokens computed:       cached {c['computed']}  naive {n['computed']}  "
          f"lower bound {lower} (each token once)")
    print(f"cached / lower bound:         {figures['cached_vs_lower_bound']:.3f}x   (goal <= 1.1x)")
    print(f"naive / lower bound:          {figures['naive_vs_lower_bound']:.1f}x")
    print(f"wall time:                    cached {t_cached:.1f} s  naive {t_naive:.1f} s  "
          f"speed-up {figures['speedup']:.2f}x (goal >= 2x)")
    print(f"identical answers:            {same}")
    if args.json:
        args.json.write_text(json.dumps(figures, indent=2) + "\n", encoding="utf-8")
    ok = figures["cached_vs_lower_bound"] <= 1.1 and figures["speedup"] >= 2.0
    print("GOALS MET" if ok else "GOALS NOT MET")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
