"""Time the result-object writer on synthetic studies: SR build, page rendering, SC build, dciodvfy validation.

Usage: .venv/bin/python benchmarks/bench_result_objects.py [--repeat N]
Prints seconds per step (median of N) and each step's ratio to one dciodvfy run on the SR, a peer tool measured in
the same run (timing goals are ratios, never absolute numbers).
"""
from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from dicomnode.demo.synthetic import StudySpec, make_study, prior_spec  # noqa: E402
from sr_writer.page import render_pages  # noqa: E402
from sr_writer.sc import build_pages  # noqa: E402
from sr_writer.sr import build_sr  # noqa: E402
from sr_writer.validate import validate  # noqa: E402
from tests.sr.records import make_record  # noqa: E402

CASES = {
    "1 finding": dict(positive=("pneumothorax",)),
    "5 findings + prior + long": dict(
        positive=("pneumothorax", "consolidation", "pleural_effusion", "cardiac_pacemaker", "lung_opacity"),
        prior=True, long_text=80, language="zh"),
}


def _time(fn, repeat: int):
    times, result = [], None
    for _ in range(repeat):
        start = time.perf_counter()
        result = fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times), result


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()
    spec = StudySpec()  # 512 x 416, two views
    current, prior_study = make_study(spec), make_study(prior_spec(spec))
    for name, kw in CASES.items():
        kw = dict(kw)
        prior = prior_study if kw.pop("prior", False) else []
        record = make_record(current, prior, **kw)
        t_sr, sr = _time(lambda: build_sr(record, current, prior), args.repeat)
        t_pages, images = _time(lambda: render_pages(record, current, prior), args.repeat)
        t_sc, pages = _time(lambda: build_pages(record, images, current), args.repeat)
        t_val_sr, _ = _time(lambda: validate(sr), args.repeat)
        t_val_sc, _ = _time(lambda: [validate(p) for p in pages], args.repeat)
        print(f"{name}: {len(images)} page(s)")
        for step, seconds in [("build SR", t_sr), ("render pages", t_pages), ("build SC", t_sc),
                              ("dciodvfy SR", t_val_sr), ("dciodvfy SC (all)", t_val_sc)]:
            print(f"  {step:<20} {seconds:7.3f} s   x{seconds / t_val_sr:5.2f} of one dciodvfy SR run")


if __name__ == "__main__":
    main()
