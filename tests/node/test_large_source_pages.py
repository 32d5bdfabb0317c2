"""Memory bounded by design (issue 17): a 200 MB source is decoded once, in the caller, when its result objects
are made in page processes (as the node makes them). Each page process gets headers and a page-sized panel image,
so its peak RSS stays below the size of the source's pixel data (before: every task unpickled the 200 MB of pixel
data and the page-1 task decoded it again: 724 MiB peak per page process; now 231 MiB, as for a 512 x 512 source).

Measured in a fresh interpreter: each page process's VmHWM, started before the study is made (as the node starts
them), and the caller's VmHWM reset once the study is made."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
PIXEL_BYTES = 10_000 * 10_000 * 2  # a 200 MB 16-bit frame

SCRIPT = r"""
import json, sys
from pathlib import Path
from dicomnode.demo.synthetic import StudySpec, make_study
from dicomnode.demo.records import make_record
from dicomnode.result_making import ResultMaker
from sr_writer import prepare


def peak_rss(pid="self"):  # VmHWM, bytes
    line = next(l for l in Path(f"/proc/{pid}/status").read_text().splitlines() if l.startswith("VmHWM:"))
    return int(line.split()[1]) * 1024


maker = ResultMaker(2)
maker.start(wait=True)  # started before the study arrives, as the node starts them
side = int(sys.argv[1])
study = make_study(StudySpec(views=("PA",), rows=side, columns=side, bits_stored=16))
assert len(study[0].PixelData) == side * side * 2
record = make_record(study, [], positive=("pneumothorax",))
Path("/proc/self/clear_refs").write_text("5")  # peak RSS from here on: making the result objects
making = maker.make(*prepare(record, study, []))
while True:
    try:
        next(making)
    except StopIteration as done:
        objects = done.value
        break
assert not objects.page_executor_lost and len(objects.pages) >= 1
children = [peak_rss(pid) for pid in maker._pool._processes]
maker.close()
print(json.dumps({"node_peak": peak_rss(), "page_process_peak": max(children)}))
"""


def _peaks(side: int) -> dict[str, int]:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    done = subprocess.run([sys.executable, "-c", SCRIPT, str(side)], cwd=ROOT, env=env, capture_output=True,
                          text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads(done.stdout.strip().splitlines()[-1])


def test_page_processes_never_hold_the_source_pixels() -> None:
    small, large = _peaks(512), _peaks(10_000)
    print(f"\npeak RSS, 512 x 512 source: node {small['node_peak'] / 2**20:.0f} MiB, page process "
          f"{small['page_process_peak'] / 2**20:.0f} MiB; 10000 x 10000 (200 MB): node "
          f"{large['node_peak'] / 2**20:.0f} MiB, page process {large['page_process_peak'] / 2**20:.0f} MiB")
    # a page process gets headers and a page-sized panel: the size of the source's pixels hardly matters to it
    assert large["page_process_peak"] - small["page_process_peak"] < PIXEL_BYTES / 4, (small, large)
    # the caller holds the source, one decoded copy, its 8-bit display copy and working blocks (display_image's
    # float chunks, 32 MB each), not several copies
    assert large["node_peak"] - small["node_peak"] < 3 * PIXEL_BYTES + 128 * 2**20, (small, large)
