"""Time the result-object writer on synthetic studies: SR build, page rendering, SC build, dciodvfy validation.

Usage: .venv/bin/python -m benchmarks.bench_result_objects [--repeat N]
Prints seconds per step (median of N) and each step's ratio to one dciodvfy run on the SR, a peer tool measured in
the same run (timing goals are ratios, never absolute numbers).
"""
from __future__ import annotations

import argparse
import statistics
import time
from functools import partial

from dicomnode.demo.records import make_record
from dicomnode.demo.synthetic import StudySpec, make_study, prior_spec
from sr_writer.page import render_pages
from sr_writer.sc import build_pages
from sr_writer.sr import build_sr
from sr_writer.validate import validate

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


def _validate_all(pages):
    return [validate(p) for p in pages]


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
        t_sr, sr = _time(partial(build_sr, record, current, prior), args.repeat)
        t_pages, images = _time(partial(render_pages, record, current, prior), args.repeat)
        t_sc, pages = _time(partial(build_pages, record, images, current), args.repeat)
        t_val_sr, _ = _time(partial(validate, sr), args.repeat)
        t_val_sc, _ = _time(partial(_validate_all, pages), args.repeat)
        print(f"{name}: {len(images)} page(s)")
        for step, seconds in [("build SR", t_sr), ("render pages", t_pages), ("build SC", t_sc),
                              ("dciodvfy SR", t_val_sr), ("dciodvfy SC (all)", t_val_sc)]:
            print(f"  {step:<20} {seconds:7.3f} s   x{seconds / t_val_sr:5.2f} of one dciodvfy SR run")


if __name__ == "__main__":
    main()
