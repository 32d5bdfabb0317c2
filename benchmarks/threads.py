"""Torch threads on a shared CPU: one study alone, two at once, and one beside a busy process, before and after.

Each figure is the wall time of ``cxr-node reason`` on one synthetic two-view study with the untrained demo model
(``cxr-node model demo``), a process of its own, start-up and model load included. Two modes, measured in the same
run, in turn (before, after, before, after, ...), so that the machine's drift hits both alike:

- ``before``: torch's own default threads (one per core) and OpenMP's default wait policy (idle threads spin):
  torch is imported before ``cxr-node`` starts, so the node's wait policy comes too late, and ``--threads`` gives
  torch its default count;
- ``after``: plain ``cxr-node reason``: the node's thread policy (``inference/threads.py``).

Scenes per mode: ``alone``; ``pair`` (two runs started together; the time until both are done); ``busy`` (one run
beside a single-threaded busy loop); ``torch`` (one run beside a second torch process that reasons on the same
study over and over, in the same mode). Goals, each against ``alone`` of the same mode and repetition: pair <= 2.5x
(fair sharing of the cores is 2x), busy and torch <= 2.5x. The load average is printed with every figure: the
machine may be shared.

    .venv/bin/python benchmarks/threads.py [--repeat 3] [--modes before,after] [--scenes alone,pair,busy,torch]
                                           [--max-new-tokens N] [--json OUT]
"""
from __future__ import annotations

import argparse
import json
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from dicomnode.demo.synthetic import StudySpec, write_study

CLI = "import sys; from dicomnode.cli import main; sys.exit(main(sys.argv[1:]))"
# the old behaviour: OpenMP loads (with torch) before the node can set its wait policy; torch's default threads
BEFORE_CLI = ("import sys, torch; sys.argv += ['--threads', str(torch.get_num_threads())]; "
              "from dicomnode.cli import main; sys.exit(main(sys.argv[1:]))")
BUSY_LOOP = "while True: pass"
# variables that would steer either mode; the child processes start without them
STEERING_VARS = ("OMP_NUM_THREADS", "OMP_WAIT_POLICY", "GOMP_SPINCOUNT", "KMP_BLOCKTIME", "MKL_NUM_THREADS",
                 "OPENBLAS_NUM_THREADS")
MODES = ("before", "after")
SCENES = ("alone", "pair", "busy", "torch")
GOAL = 2.5


def load() -> str:
    return " ".join(f"{x:.2f}" for x in os.getloadavg())


class Bench:
    def __init__(self, work: Path, model: Path, study: Path, max_new_tokens: int | None, timeout: float) -> None:
        self.work, self.model, self.study, self.max_new_tokens = work, model, study, max_new_tokens
        self.timeout = timeout
        self.env = {k: v for k, v in os.environ.items() if k not in STEERING_VARS}
        self.runs = 0
        self.started: list[subprocess.Popen[bytes]] = []

    def reason_command(self, mode: str) -> list[str]:
        self.runs += 1
        command = [sys.executable, "-c", BEFORE_CLI if mode == "before" else CLI, "reason", str(self.study),
                   "--model", str(self.model), "--json", str(self.work / f"record-{self.runs}.json")]
        if self.max_new_tokens:
            command += ["--max-new-tokens", str(self.max_new_tokens)]
        return command

    def start(self, command: list[str], name: str) -> subprocess.Popen[bytes]:
        with (self.work / f"{name}-{self.runs}.log").open("wb") as log:
            process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=log, env=self.env,
                                       start_new_session=True)
        self.started.append(process)
        return process

    def stop_all(self) -> None:
        """Kill what is still running (each command runs in a process group of its own)."""
        for process in self.started:
            if process.poll() is None:
                os.killpg(process.pid, signal.SIGKILL)
                process.wait()

    def timed(self, mode: str, copies: int = 1) -> float:
        """Seconds until every copy is done; ``inf`` when the time bound ended them."""
        start = time.monotonic()
        processes = [self.start(self.reason_command(mode), f"{mode}-reason") for _ in range(copies)]
        try:
            for process in processes:
                if process.wait(timeout=max(1.0, start + self.timeout - time.monotonic())) != 0:
                    raise RuntimeError(f"{process.args!r} exited with {process.returncode}; logs in {self.work}")
        except subprocess.TimeoutExpired:
            return float("inf")
        finally:
            for process in processes:
                if process.poll() is None:
                    os.killpg(process.pid, signal.SIGKILL)
                    process.wait()
        return time.monotonic() - start

    def neighbour(self, mode: str, kind: str) -> subprocess.Popen[bytes]:
        if kind == "busy":
            return self.start([sys.executable, "-c", BUSY_LOOP], "busy")
        # a second torch process: the same reasoning, over and over, in the same mode
        loop = ("import subprocess, sys\nwhile True:\n    subprocess.run(sys.argv[1:], stdout=subprocess.DEVNULL, "
                "stderr=subprocess.DEVNULL)\n")
        return self.start([sys.executable, "-c", loop, *self.reason_command(mode)], "torch")

    def scene(self, mode: str, scene: str) -> float:
        if scene == "alone":
            return self.timed(mode)
        if scene == "pair":
            return self.timed(mode, copies=2)
        neighbour = self.neighbour(mode, scene)
        try:
            time.sleep(3.0 if scene == "torch" else 0.5)  # the neighbour is busy before the study starts
            return self.timed(mode)
        finally:
            os.killpg(neighbour.pid, signal.SIGKILL)
            neighbour.wait()


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--repeat", type=int, default=3, help="repetitions of every mode and scene (default 3)")
    ap.add_argument("--modes", default=",".join(MODES), help="comma-separated, of: " + ", ".join(MODES))
    ap.add_argument("--scenes", default=",".join(SCENES), help="comma-separated, of: " + ", ".join(SCENES))
    ap.add_argument("--max-new-tokens", type=int, help="cap every answer (default: the stage book's)")
    ap.add_argument("--model", type=Path, help="model directory (default: build the demo model)")
    ap.add_argument("--timeout", type=float, default=600.0,
                    help="bound on one figure in seconds (default 600); a figure over it prints as inf")
    ap.add_argument("--json", type=Path, help="also write every figure as JSON")
    args = ap.parse_args(argv)
    modes = [m for m in args.modes.split(",") if m]
    scenes = [s for s in args.scenes.split(",") if s]
    if not set(modes) <= set(MODES) or not set(scenes) <= set(SCENES) or "alone" not in scenes:
        ap.error(f"modes from {MODES}, scenes from {SCENES} (alone is the yardstick, always included)")

    work = Path(tempfile.mkdtemp(prefix="cxr-threads-bench-"))
    model = args.model
    if model is None:
        model = work / "model"
        subprocess.run([sys.executable, "-c", CLI, "model", "demo", str(model)], check=True,
                       stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    study = work / "study"
    write_study(study, StudySpec(views=("PA", "LATERAL")))
    bench = Bench(work, model, study, args.max_new_tokens, args.timeout)
    print(f"{len(os.sched_getaffinity(0))} usable cores; work in {work}; load average {load()}", flush=True)

    rows: list[dict[str, Any]] = []
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(1))  # stop_all below runs on SIGTERM and Ctrl-C alike
    try:
        measure(bench, args.repeat, modes, scenes, rows)
    except (KeyboardInterrupt, SystemExit):
        print("interrupted: the figures so far", flush=True)
    finally:
        bench.stop_all()
    report(rows, modes, scenes, args)
    return 0


def measure(bench: Bench, repeat: int, modes: list[str], scenes: list[str], rows: list[dict[str, Any]]) -> None:
    for rep in range(1, repeat + 1):
        for mode in modes:
            alone = 0.0
            for scene in scenes:
                before_load = load()
                seconds = bench.scene(mode, scene)
                alone = seconds if scene == "alone" else alone
                row = {"repeat": rep, "mode": mode, "scene": scene, "seconds": round(seconds, 1),
                       "ratio": round(seconds / alone, 2), "load_before": before_load, "load_after": load()}
                rows.append(row)
                print(f"run {rep} {mode:6} {scene:5} {seconds:7.1f} s  {row['ratio']:5.2f}x alone   "
                      f"load {before_load} -> {row['load_after']}", flush=True)


def report(rows: list[dict[str, Any]], modes: list[str], scenes: list[str], args: argparse.Namespace) -> None:
    print(f"\nmedian over {args.repeat} run(s) [min - max]; ratio against alone in the same mode and run "
          f"(goal <= {GOAL}x for pair, busy, torch)")
    for mode in modes:
        for scene in scenes:
            picked = [r for r in rows if r["mode"] == mode and r["scene"] == scene]
            if not picked:
                continue
            secs, ratios = [r["seconds"] for r in picked], [r["ratio"] for r in picked]
            print(f"  {mode:6} {scene:5} {statistics.median(secs):7.1f} s [{min(secs):.1f} - {max(secs):.1f}]   "
                  f"{statistics.median(ratios):5.2f}x [{min(ratios):.2f} - {max(ratios):.2f}]")
    if args.json:
        doc = {"cores": len(os.sched_getaffinity(0)), "timeout": args.timeout, "rows": rows}
        args.json.write_text(json.dumps(doc, indent=2) + "\n")  # an inf figure is written as Infinity


if __name__ == "__main__":
    sys.exit(main())
