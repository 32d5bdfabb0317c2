"""The thread policy (inference/threads.py): the decision as a function of cores, reserve, setting and environment;
the CPU quota read from the cgroup files; the wait policy kept when the environment names one."""
from __future__ import annotations

from pathlib import Path

import pytest

from inference.threads import (
    THREADS_VAR,
    WAIT_POLICY_VAR,
    cpu_quota,
    decide_threads,
    passive_wait,
    single_thread_environment,
    usable_cores,
)


@pytest.mark.parametrize(("cores", "reserved", "explicit", "env", "threads", "source"), [
    (2, 0, None, {}, 2, "auto"),  # nothing beside the model: every core
    (2, 1, None, {}, 1, "auto"),  # a listener beside it
    (16, 3, None, {}, 13, "auto"),
    (1, 1, None, {}, 1, "auto"),  # never below one thread
    (4, 9, None, {}, 1, "auto"),  # a reserve beyond the cores still leaves one
    (2, 1, 4, {}, 4, "model.threads"),  # the setting wins over the cores...
    (2, 0, 3, {THREADS_VAR: "1"}, 3, "model.threads"),  # ...and over the environment
    (8, 1, None, {THREADS_VAR: "3"}, 3, THREADS_VAR),  # the admin's environment over the automatic choice
    (8, 1, None, {THREADS_VAR: "5,2"}, 5, THREADS_VAR),  # nested levels: the first is torch's
    (8, 1, None, {THREADS_VAR: "lots"}, 7, "auto"),  # not a count: ignored, and said so
    (8, 1, None, {THREADS_VAR: "0"}, 7, "auto"),
])
def test_the_decision(cores: int, reserved: int, explicit: int | None, env: dict[str, str], threads: int,
                      source: str) -> None:
    plan = decide_threads(cores, reserved, explicit, env=env)
    assert (plan.threads, plan.source, plan.cores) == (threads, source, cores)


def test_what_the_plan_says() -> None:
    overridden = decide_threads(2, explicit=1, explicit_name="--threads", env={THREADS_VAR: "2"})
    assert overridden.describe() == "1 torch thread(s) (--threads; overrides OMP_NUM_THREADS=2 from the environment)"
    assert "not a thread count" in decide_threads(2, env={THREADS_VAR: "lots"}).describe()
    auto = decide_threads(4, 1, env={}, reserve_note="1 for the listener")
    assert auto.describe() == "3 torch thread(s) (auto: 4 usable core(s), 1 reserved; 1 for the listener)"
    with pytest.raises(ValueError, match="model.threads must be at least 1"):
        decide_threads(2, explicit=0, env={})


def _cgroup_v2(root: Path, group: str, limits: dict[str, str]) -> Path:
    for sub, value in limits.items():
        (root / sub).mkdir(parents=True, exist_ok=True)
        (root / sub / "cpu.max").write_text(value + "\n")
    proc = root / "proc-cgroup"
    proc.write_text(f"0::{group}\n")
    return proc


def test_cpu_quota_of_cgroup_v2_takes_the_tightest_ancestor(tmp_path: Path) -> None:
    root = tmp_path / "cg"
    proc = _cgroup_v2(root, "/a/b", {"a": "150000 100000", "a/b": "max 100000"})
    assert cpu_quota(root, proc) == 1.5
    assert usable_cores(affinity=8, quota=1.5) == 1  # rounded down, at least 1
    assert usable_cores(affinity=8, quota=3.9) == 3
    assert usable_cores(affinity=2, quota=16.0) == 2  # the affinity is the bound
    proc = _cgroup_v2(tmp_path / "cg2", "/x", {"x": "max 100000"})
    assert cpu_quota(tmp_path / "cg2", proc) is None


def test_cpu_quota_of_cgroup_v1(tmp_path: Path) -> None:
    cpu = tmp_path / "cg" / "cpu" / "docker" / "c1"
    cpu.mkdir(parents=True)
    (cpu / "cpu.cfs_quota_us").write_text("250000\n")
    (cpu / "cpu.cfs_period_us").write_text("100000\n")
    proc = tmp_path / "proc-cgroup"
    proc.write_text("4:memory:/docker/c1\n3:cpu,cpuacct:/docker/c1\n0::/\n")
    assert cpu_quota(tmp_path / "cg", proc) == 2.5
    (cpu / "cpu.cfs_quota_us").write_text("-1\n")  # unlimited
    assert cpu_quota(tmp_path / "cg", proc) is None


def test_this_machine_has_at_least_one_usable_core() -> None:
    assert 1 <= usable_cores() <= len(__import__("os").sched_getaffinity(0))


def test_wait_policy_of_the_environment_is_kept() -> None:
    env = {WAIT_POLICY_VAR: "ACTIVE"}
    policy = passive_wait(env)
    assert env[WAIT_POLICY_VAR] == "ACTIVE" and policy.from_environment
    env = {}
    policy = passive_wait(env)
    assert env[WAIT_POLICY_VAR] == "PASSIVE" and not policy.from_environment


def test_single_thread_environment_overrides_every_runtime() -> None:
    env = {THREADS_VAR: "8", "MKL_NUM_THREADS": "8"}
    single_thread_environment(env)
    assert env == {THREADS_VAR: "1", "MKL_NUM_THREADS": "1", "OPENBLAS_NUM_THREADS": "1", WAIT_POLICY_VAR: "PASSIVE"}
