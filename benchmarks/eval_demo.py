"""Closed answers with and without decoding constraints: ``cxr-node eval --model`` on the CXRTrek demo studies.

The untrained demo model (built offline unless ``--model`` is given) answers every question of the demo file
(80 studies, 2,157 questions; teacher-forced) twice in the same run: closed answers decoded under their grammar
(the default) and with ``--no-constrain``. The images are synthetic phantoms written at the file's relative image
paths (the public file carries no images). Prints, per question type, the unparsed answers and the score of each
run side by side; open questions are never constrained, so their figures must agree. Goal: 0 unparsed closed
answers constrained. ``--parallel-within-stage`` adds the eval's own comparison of the sequential and the
parallel-within-stage modes (constrained run only). Then the constrained run's per-finding table of the checklist
(AUROC, sensitivity / specificity at the model's own answer, ECE of the probability of presence; issue 26): the
free run has no probabilities (its closed answers are not decoded as choices), so only the constrained one is shown.

Each run is its own ``cxr-node eval`` process (``--jobs 2`` runs them side by side, one thread each).

    .venv/bin/python -m benchmarks.eval_demo [--limit N] [--model DIR] [--jobs 2] [--out DIR]
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from dicomnode.demo.synthetic import write_cxrtrek_phantoms
from inference.model import build_demo_model

DEMO_FILE = Path(__file__).resolve().parents[1] / "tests" / "data" / "cxrtrek" / "cxrtrek_demo_80.json"
CLOSED = ("yes_no", "single_choice", "multi_choice", "detection")
MAX_NEW_TOKENS = 24
CLI = "import sys; from dicomnode.cli import main; sys.exit(main(sys.argv[1:]))"


def run_eval(name: str, extra: list[str], args: argparse.Namespace, model: Path, images: Path,
             out: Path) -> dict[str, Any]:
    """One ``cxr-node eval`` process; its JSON document, with the wall time added."""
    doc_path = out / f"{name}.json"
    command = [sys.executable, "-c", CLI, "eval", str(args.dataset), "--model", str(model),
               "--images", str(images), "--quantization", "none", "--device", "cpu", "--max-new-tokens",
               str(MAX_NEW_TOKENS), "--no-progress", "--json", str(doc_path),
               "--save-predictions", str(out / f"{name}.predictions.json"), *extra]
    if args.limit:
        command += ["--limit", str(args.limit)]
    if args.jobs > 1:  # side by side: one thread each (else the node's thread policy, inference/threads.py)
        command += ["--threads", "1"]
    start = time.perf_counter()
    with (out / f"{name}.log").open("w") as log:
        subprocess.run(command, check=True, stdout=log, stderr=subprocess.STDOUT)
    doc = json.loads(doc_path.read_text())
    doc["wall_seconds"] = time.perf_counter() - start
    return doc


def closed_sum(doc: dict[str, Any], key: str) -> int:
    """``key`` (unparsed, count) summed over the closed question types present in an eval document."""
    return sum(group[key] for kind, group in doc["by_qtype"].items() if kind in CLOSED)


def _pct(value: float | None) -> str:
    return "–" if value is None else f"{100 * value:.1f}"


def print_table(constrained: dict[str, Any], free: dict[str, Any]) -> None:
    print(f"{'question type':<16}{'N':>6}{'unparsed constrained':>22}{'unparsed free':>15}"
          f"{'score constrained':>19}{'score free':>12}")
    for kind in (*CLOSED, "open"):
        if kind not in constrained["by_qtype"]:
            continue
        c, f = constrained["by_qtype"][kind], free["by_qtype"][kind]
        print(f"{kind:<16}{c['count']:>6}{c['unparsed']:>22}{f['unparsed']:>15}{_pct(c['score']):>19}"
              f"{_pct(f['score']):>12}")
    closed_c, closed_f, asked = (closed_sum(constrained, "unparsed"), closed_sum(free, "unparsed"),
                                 closed_sum(constrained, "count"))
    print(f"closed answers unparsed: {closed_c}/{asked} constrained, {closed_f}/{asked} free")
    for doc, name in ((constrained, "constrained"), (free, "free")):
        print(f"{name}: {doc['studies']} studies, {doc['questions']} questions, "
              f"{doc['seconds_per_study']:.1f} s/study of answering, {doc['wall_seconds']:.0f} s wall")


def print_findings(doc: dict[str, Any]) -> None:
    """The per-finding rows of an eval document (``findings``), and its calibration bins."""
    rows = doc.get("findings") or []
    if not rows:
        print("no checklist items")
        return
    print(f"{'finding':<28}{'N':>5}{'pos':>5}{'unp':>5}{'scored':>8}{'AUROC':>8}{'sens':>7}{'spec':>7}{'ECE':>8}")
    for row in rows:
        cells = [_num(row[k]) for k in ("auroc", "sensitivity", "specificity")]
        print(f"{row['finding']:<28}{row['count']:>5}{row['positives']:>5}{row['unparsed']:>5}{row['scored']:>8}"
              f"{cells[0]:>8}{cells[1]:>7}{cells[2]:>7}{_num(row['ece'], 3):>8}")
    pooled = rows[-1]
    print("calibration (all scored checklist items): " + "; ".join(
        f"{b['lower']:.1f}-{b['upper']:.1f}: n={b['count']}" + (
            f" p={b['mean_probability']:.2f} obs={b['observed']:.2f}" if b["count"] else "")
        for b in pooled["bins"]))


def _num(value: float | None, digits: int = 2) -> str:
    return "–" if value is None else f"{value:.{digits}f}"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dataset", type=Path, default=DEMO_FILE)
    parser.add_argument("--model", type=Path, help="model directory (default: build the untrained demo model)")
    parser.add_argument("--limit", type=int, help="first N studies only")
    parser.add_argument("--jobs", type=int, default=2, choices=(1, 2), help="runs side by side")
    parser.add_argument("--parallel-within-stage", action="store_true")
    parser.add_argument("--out", type=Path, help="keep the JSON documents, predictions and logs here")
    parser.add_argument("--json", type=Path, help="write both documents as one JSON")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="cxr-eval-demo-") as tmp:
        work = Path(tmp)
        out = args.out or work / "out"
        out.mkdir(parents=True, exist_ok=True)
        model = args.model or build_demo_model(work / "model")
        written = write_cxrtrek_phantoms(json.loads(args.dataset.read_text()), work / "images")
        print(f"{written} phantom images; model {model}", flush=True)
        runs = {"constrained": ["--parallel-within-stage"] if args.parallel_within_stage else [],
                "free": ["--no-constrain"]}
        with ThreadPoolExecutor(max_workers=args.jobs) as pool:
            futures = {name: pool.submit(run_eval, name, extra, args, model, work / "images", out)
                       for name, extra in runs.items()}
            docs = {name: future.result() for name, future in futures.items()}
    print_table(docs["constrained"], docs["free"])
    print_findings(docs["constrained"])
    comparison = docs["constrained"].get("parallel_within_stage")
    if comparison:
        cost = comparison["cost"]["overall"]
        print(f"parallel within stage, cost against sequential: score {100 * cost['score']:+.1f} points, "
              f"unparsed {cost['unparsed']:+d}")
    if args.json:
        args.json.write_text(json.dumps(docs, indent=1))
    return 0 if closed_sum(docs["constrained"], "unparsed") == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
