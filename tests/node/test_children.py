"""Page processes die with the node, even after SIGKILL (issue 17: each kill left 3 child processes behind).

A parent process builds the page-process pool exactly as the reasoning processor does (spawn, the node's
initializer) and is then killed with SIGKILL; its children must be gone within a few seconds."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

PARENT = """
import multiprocessing, os, sys, time
from concurrent.futures import ProcessPoolExecutor
from dicomnode.children import page_process_start
if __name__ == "__main__":
    pool = ProcessPoolExecutor(max_workers=2, mp_context=multiprocessing.get_context("spawn"),
                               initializer=page_process_start)
    pids = sorted({pool.submit(os.getpid).result(timeout=120) for _ in range(8)})
    print(" ".join(map(str, pids)), flush=True)
    time.sleep(600)
"""


def _alive(pid: int) -> bool:
    try:
        status = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return False
    return "\nState:\tZ" not in status


def test_page_processes_exit_when_the_node_is_killed(tmp_path: Path) -> None:
    script = tmp_path / "parent.py"
    script.write_text(PARENT)
    parent = subprocess.Popen([sys.executable, str(script)], stdout=subprocess.PIPE, text=True,
                              start_new_session=True)
    try:
        assert parent.stdout is not None
        children = [int(p) for p in parent.stdout.readline().split()]
        assert children and all(_alive(pid) for pid in children)
        os.kill(parent.pid, signal.SIGKILL)
        parent.wait(30)
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline and any(_alive(pid) for pid in children):
            time.sleep(0.1)
        survivors = [pid for pid in children if _alive(pid)]
        for pid in survivors:
            os.kill(pid, signal.SIGKILL)
        assert survivors == [], "page processes outlived their parent"
    finally:
        if parent.poll() is None:
            parent.kill()
