"""Start and stop a peer's process: wait until it answers, stop it (SIGTERM, then SIGKILL)."""
from __future__ import annotations

import subprocess
import time
from collections.abc import Callable


def wait_until_ready(process: subprocess.Popen[bytes], ready: Callable[[], bool], timeout: float,
                     interval: float = 0.1) -> int | None:
    """Poll ``ready()`` until it is true (None), or the process exits (its exit code); TimeoutError after
    ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            return process.returncode
        if ready():
            return None
        time.sleep(interval)
    raise TimeoutError(f"not ready within {timeout:.0f} s")


def stop_process(process: subprocess.Popen[bytes] | None, timeout: float = 30.0) -> None:
    """Terminate ``process`` if it still runs, and kill it when it has not exited within ``timeout``."""
    if process is None or process.poll() is not None:
        return
    process.terminate()
    try:
        process.wait(timeout)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait(timeout)
