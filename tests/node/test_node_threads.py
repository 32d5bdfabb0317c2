"""Torch threads of the node (dicomnode/threads.py, inference/threads.py): what each role leaves to the model, the
setting and the environment, the start-up log line of real ``cxr-node serve`` and ``reason`` processes, OpenMP's
passive wait policy in place before torch loads (OpenMP's own report, ``OMP_DISPLAY_ENV``), and page processes
without torch or OpenMP threads."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml
from ingest_support import CXR_NODE, config_dict, make_config, write_config

from dicomnode.config import ConfigError, config_from_dict
from dicomnode.demo.synthetic import StudySpec, write_study
from dicomnode.threads import node_thread_plan, reserved_cores
from inference.threads import usable_cores

STEERING = ("OMP_NUM_THREADS", "OMP_WAIT_POLICY", "GOMP_SPINCOUNT", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS")


def _reasoning(tmp_path: Path, **model: object):
    return make_config(tmp_path / "var", processing={"processor": "reasoning", "workers": model.pop("workers", 1)},
                       model={"path": str(tmp_path / "model"), **model})


@pytest.mark.parametrize(("role", "cores", "threads", "reserved"), [
    ("all", 2, 1, 1),  # the listener keeps a core
    ("all", 16, 15, 1),
    ("worker", 2, 2, 0),  # one worker: pages run between studies
    ("run", 4, 4, 0),
    ("all", 1, 1, 0),
])
def test_what_the_role_leaves_to_the_model(tmp_path: Path, role: str, cores: int, threads: int,
                                           reserved: int) -> None:
    plan = node_thread_plan(_reasoning(tmp_path), role, cores=cores, env={})
    assert (plan.threads, plan.reserved, plan.source) == (threads, reserved, "auto")


def test_page_processes_beside_several_workers_reserve_cores(tmp_path: Path) -> None:
    config = _reasoning(tmp_path, workers=3)
    assert reserved_cores(config, "worker") == (2, "2 for page processes beside 3 workers")  # 2 page processes
    assert reserved_cores(config, "all")[0] == 3
    assert node_thread_plan(config, "all", cores=8, env={}).threads == 5


def test_setting_and_environment_override_the_role(tmp_path: Path) -> None:
    assert node_thread_plan(_reasoning(tmp_path), "all", cores=8, env={"OMP_NUM_THREADS": "6"}).threads == 6
    plan = node_thread_plan(_reasoning(tmp_path, threads=3), "all", cores=8, env={"OMP_NUM_THREADS": "6"})
    assert (plan.threads, plan.source) == (3, "model.threads")
    assert "overrides OMP_NUM_THREADS=6" in plan.note


def test_model_threads_is_validated(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="model.threads"):
        config_from_dict(config_dict(tmp_path, model={"threads": 0}), environ={})
    example = yaml.safe_load((Path(__file__).resolve().parents[2] / "config" / "node.example.yaml").read_text())
    assert "threads" in example["model"] and example["model"]["threads"] is None


def _clean_env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in STEERING}
    return {**env, "OMP_DISPLAY_ENV": "VERBOSE", **extra}  # libgomp prints its settings as it loads


def _short_stages(tmp_path: Path) -> Path:
    from importlib.resources import files

    book = yaml.safe_load(files("inference.data").joinpath("stages.yaml").read_text(encoding="utf-8"))
    book["stages"] = [s for s in book["stages"] if s["number"] in (1, 8)]
    path = tmp_path / "stages.yaml"
    path.write_text(yaml.safe_dump(book, sort_keys=False), encoding="utf-8")
    return path


def _reason(tmp_path: Path, model: Path, *extra: str, **env: str) -> subprocess.CompletedProcess[str]:
    study = tmp_path / "study"
    if not study.exists():
        write_study(study, StudySpec(views=("PA",), rows=256, columns=256))
    return subprocess.run([CXR_NODE, "reason", str(study), "--model", str(model), "--stages",
                           str(_short_stages(tmp_path)), "--max-new-tokens", "1", "--json", str(tmp_path / "r.json"),
                           *extra], capture_output=True, text=True, timeout=300, env=_clean_env(**env))


def _threads_line(stderr: str) -> str:
    lines = [line for line in stderr.splitlines() if "inference.threads threads:" in line]
    assert len(lines) == 1, stderr
    return lines[0]


def test_reason_sets_passive_wait_before_torch_loads_and_logs_its_threads(tmp_path: Path,
                                                                          qwen_demo_dir: Path) -> None:
    done = _reason(tmp_path, qwen_demo_dir)
    assert done.returncode == 0, done.stderr
    # OpenMP's own report, printed when torch loaded it: no spinning (the default spins 300000 times)
    assert "GOMP_SPINCOUNT = '0'" in done.stderr, done.stderr
    cores = usable_cores()
    line = _threads_line(done.stderr)
    assert f"{cores} torch thread(s) (auto: {cores} usable core(s), 0 reserved)" in line
    assert f"torch reports {cores} intra-op, 1 inter-op" in line
    assert "OMP_WAIT_POLICY=PASSIVE (set by the node)" in line


def test_reason_respects_the_environment_and_its_flag(tmp_path: Path, qwen_demo_dir: Path) -> None:
    done = _reason(tmp_path, qwen_demo_dir, OMP_NUM_THREADS="1", OMP_WAIT_POLICY="ACTIVE")
    assert done.returncode == 0, done.stderr
    assert "OMP_WAIT_POLICY = 'ACTIVE'" in done.stderr  # the admin's policy reached OpenMP unchanged
    line = _threads_line(done.stderr)
    assert "1 torch thread(s) (OMP_NUM_THREADS from the environment)" in line and "torch reports 1 intra-op" in line
    assert "OMP_WAIT_POLICY=ACTIVE (from the environment)" in line
    done = _reason(tmp_path, qwen_demo_dir, "--threads", "2", OMP_NUM_THREADS="1")
    assert done.returncode == 0, done.stderr
    line = _threads_line(done.stderr)
    assert "2 torch thread(s) (--threads; overrides OMP_NUM_THREADS=1 from the environment)" in line
    assert "torch reports 2 intra-op" in line


def test_serve_logs_its_threads_at_start_up(tmp_path: Path, qwen_demo_dir: Path) -> None:
    data = config_dict(tmp_path / "var", processing={"processor": "reasoning", "poll_seconds": 0.2},
                       model={"path": str(qwen_demo_dir)}, output={"page_processes": 0})
    config = write_config(tmp_path / "node.yaml", data)
    log = tmp_path / "serve.log"
    with log.open("w") as out:
        server = subprocess.Popen([CXR_NODE, "serve", "--config", str(config)], stdout=out, stderr=subprocess.STDOUT,
                                  env=_clean_env())
        try:
            deadline = time.monotonic() + 240
            while "node serving" not in log.read_text() and time.monotonic() < deadline and server.poll() is None:
                time.sleep(0.3)
        finally:
            server.send_signal(signal.SIGTERM)
            server.wait(timeout=60)
    text = log.read_text()
    assert "GOMP_SPINCOUNT = '0'" in text, text
    entries = [json.loads(line) for line in text.splitlines() if line.startswith("{")]
    chosen = [e for e in entries if e.get("logger") == "dicomnode.threads"]
    assert len(chosen) == 1, text
    cores = usable_cores()
    expected = max(1, cores - 1)
    assert (chosen[0]["threads"], chosen[0]["source"], chosen[0]["role"]) == (expected, "auto", "all")
    if cores > 1:
        assert f"auto: {cores} usable core(s), 1 reserved; 1 for the listener" in chosen[0]["msg"]
    assert f"torch reports {expected} intra-op" in chosen[0]["msg"]


PAGE_PARENT = """
import json, multiprocessing, os, sys, threading, time
from concurrent.futures import ProcessPoolExecutor

def probe():
    import sr_writer.api  # what a page task runs on
    from pydicom import config as pydicom_config
    for _ in range(30):  # a thread the start-up rehearsal joined may take a moment to leave the OS's list
        os_threads = len(os.listdir("/proc/self/task"))
        if os_threads == threading.active_count():
            break
        time.sleep(0.1)
    return {"torch": "torch" in sys.modules, "numpy": "numpy" in sys.modules,
            "os_threads": os_threads, "python_threads": threading.active_count(),
            "env": [os.environ.get(k) for k in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS")],
            "pydicom": [getattr(pydicom_config.settings, k) for k in ("reading_validation_mode",
                                                                      "writing_validation_mode")],
            "ignore": pydicom_config.IGNORE, "frozen": __import__("gc").get_freeze_count()}

if __name__ == "__main__":
    import torch  # the worker has torch loaded, with threads of its own, when it starts its page processes
    torch.set_num_threads(2)
    torch.ones(64, 64) @ torch.ones(64, 64)
    from dicomnode.children import page_process_start
    with ProcessPoolExecutor(1, mp_context=multiprocessing.get_context("spawn"), initializer=page_process_start) as ex:
        print(json.dumps(ex.submit(probe).result(timeout=120)))
"""


def test_page_processes_run_no_torch_and_no_native_threads(tmp_path: Path) -> None:
    script = tmp_path / "parent.py"
    script.write_text(PAGE_PARENT)
    done = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, timeout=180,
                          env={k: v for k, v in os.environ.items() if k not in STEERING})
    assert done.returncode == 0, done.stderr
    seen = json.loads(done.stdout.splitlines()[-1])
    assert not seen["torch"] and seen["numpy"]
    assert seen["env"] == ["1", "1", "1"]
    assert seen["pydicom"] == [seen["ignore"]] * 2  # values are checked by dciodvfy there, once
    assert seen["frozen"] > 10_000  # what start-up loaded is out of the collector's walks (dicomnode.heap)
    # every OS thread is a Python one (the watchdog): no OpenMP or OpenBLAS pool beside them
    assert seen["os_threads"] == seen["python_threads"], seen


def test_page_process_rehearsal_makes_a_valid_sr_and_page(caplog: pytest.LogCaptureFixture) -> None:
    """The rehearsal a page process runs at start-up (``children.rehearse``) goes through SR, page and dciodvfy."""
    import logging

    from dicomnode.children import rehearse
    from sr_writer.validate import find_dciodvfy

    find_dciodvfy.cache_clear()
    with caplog.at_level(logging.WARNING, logger="dicomnode.children"):
        rehearse()
    assert not caplog.records, [r.getMessage() for r in caplog.records]
    assert find_dciodvfy.cache_info().currsize == 1  # the validator was looked up (and run) already
