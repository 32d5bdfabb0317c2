"""How many threads torch (OpenMP, MKL) may use in this process, and how its idle threads wait.

Torch's OpenMP threads spin at every barrier before they sleep (libgomp: 300,000 spins), and the stage flow runs
thousands of tiny kernels. Two torch processes with a thread per core each on the same cores then spend their time
spinning against each other (measured on 2 cores: 35 s alone, 267 s for a pair). Two levers, one policy:

- the wait policy: ``OMP_WAIT_POLICY=PASSIVE`` makes idle OpenMP threads sleep at once. OpenMP reads it once, when
  its runtime loads (``import torch``), so :func:`passive_wait` must run before that; an admin's own value is kept.
  Intel's OpenMP (``KMP_BLOCKTIME``) takes the same variable, so one variable covers both runtimes.
- the thread count: :func:`decide_threads` (explicit setting > ``OMP_NUM_THREADS`` in the environment > usable cores
  less what else the process runs) and :func:`apply_threads` (``torch.set_num_threads``, one inter-op thread).

This module never imports torch at import time. The node decides what its role reserves (``dicomnode.threads``);
``load_chat_model`` applies a plan for processes that did not choose one (``cxr-node reason``, ``eval``, scripts).
"""
from __future__ import annotations

import logging
import math
import os
import sys
from collections.abc import Mapping, MutableMapping
from dataclasses import dataclass
from pathlib import Path

log = logging.getLogger(__name__)

WAIT_POLICY_VAR = "OMP_WAIT_POLICY"
PASSIVE = "PASSIVE"
THREADS_VAR = "OMP_NUM_THREADS"
# the thread-count variables of the runtimes a process may load (OpenMP, MKL, numpy's OpenBLAS)
THREAD_COUNT_VARS: tuple[str, ...] = (THREADS_VAR, "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS")
CGROUP_ROOT = Path("/sys/fs/cgroup")


@dataclass(frozen=True)
class ThreadPlan:
    """The thread count chosen for torch in this process, and why."""

    threads: int
    source: str  # the setting's name ("model.threads", "--threads"), THREADS_VAR, or "auto"
    cores: int  # usable cores of this process (affinity and CPU quota)
    reserved: int = 0  # cores left to the rest of the process (auto only)
    note: str = ""  # what the reserve is for, or what an explicit setting overrode

    def describe(self) -> str:
        if self.source == "auto":
            why = f"auto: {self.cores} usable core(s), {self.reserved} reserved"
        elif self.source == THREADS_VAR:
            why = f"{THREADS_VAR} from the environment"
        else:
            why = self.source
        return f"{self.threads} torch thread(s) ({why}{'; ' + self.note if self.note else ''})"


@dataclass(frozen=True)
class WaitPolicy:
    """The OpenMP wait policy of this process: its value, who set it, and whether it came in time."""

    value: str
    from_environment: bool  # the admin's (or parent's) value, kept as it was
    late: bool  # torch was already loaded when it was set: OpenMP keeps its own default

    def describe(self) -> str:
        origin = "from the environment" if self.from_environment else "set by the node"
        late = "; too late, torch was loaded first: idle threads spin" if self.late else ""
        return f"{WAIT_POLICY_VAR}={self.value or '(empty)'} ({origin}{late})"


_wait_policy: WaitPolicy | None = None
_applied: ThreadPlan | None = None


def passive_wait(env: MutableMapping[str, str] | None = None) -> WaitPolicy:
    """Make OpenMP's idle threads sleep (``OMP_WAIT_POLICY=PASSIVE``) unless the environment names a policy.

    Call before torch is imported: ``cxr-node`` does it first thing, and ``inference.model`` before it imports
    torch. The first call's outcome is kept for the start-up log (:func:`wait_policy`).
    """
    global _wait_policy
    env = os.environ if env is None else env
    from_environment = WAIT_POLICY_VAR in env
    if not from_environment:
        env[WAIT_POLICY_VAR] = PASSIVE
    policy = WaitPolicy(env[WAIT_POLICY_VAR], from_environment, late=not from_environment and "torch" in sys.modules)
    if _wait_policy is None and env is os.environ:
        _wait_policy = policy
    return policy


def wait_policy() -> WaitPolicy:
    """The policy as :func:`passive_wait` first found or set it (calls it when nothing did yet)."""
    return _wait_policy or passive_wait()


def _quota_v2(root: Path, group: str) -> float | None:
    """The tightest ``cpu.max`` of the process's cgroup (v2) and its ancestors, in cores."""
    best: float | None = None
    path = root / group.lstrip("/")
    while True:
        try:
            quota, period = (path / "cpu.max").read_text().split()[:2]
            if quota != "max":
                cores = int(quota) / int(period)
                best = cores if best is None else min(best, cores)
        except (OSError, ValueError):
            pass
        if path == root or root not in path.parents:
            return best
        path = path.parent


def _quota_v1(root: Path, group: str) -> float | None:
    """``cpu.cfs_quota_us / cpu.cfs_period_us`` of the process's cpu cgroup (v1), in cores; None when unlimited."""
    for base in (root / "cpu" / group.lstrip("/"), root / "cpu"):
        try:
            quota = int((base / "cpu.cfs_quota_us").read_text())
            period = int((base / "cpu.cfs_period_us").read_text())
        except (OSError, ValueError):
            continue
        return quota / period if quota > 0 and period > 0 else None
    return None


def cpu_quota(cgroup_root: Path = CGROUP_ROOT, proc_cgroup: Path = Path("/proc/self/cgroup")) -> float | None:
    """The CPU quota of this process's cgroup in cores (v2 ``cpu.max`` or v1 CFS quota), or None when unlimited."""
    try:
        lines = proc_cgroup.read_text().splitlines()
    except OSError:
        return None
    groups: dict[str, str] = {}
    for line in lines:
        parts = line.split(":", 2)
        if len(parts) == 3:
            for controller in parts[1].split(",") if parts[1] else [""]:
                groups[controller] = parts[2]
    if "" in groups:  # the unified (v2) hierarchy; on a hybrid host it may hold no cpu controller
        quota = _quota_v2(cgroup_root, groups[""])
        if quota is None and (cgroup_root / "unified").is_dir():
            quota = _quota_v2(cgroup_root / "unified", groups[""])
        if quota is not None:
            return quota
    if "cpu" in groups:
        return _quota_v1(cgroup_root, groups["cpu"])
    return None


def usable_cores(affinity: int | None = None, quota: float | None = None, read_quota: bool = True) -> int:
    """Cores this process may run on: its CPU affinity, capped by its cgroup's CPU quota (rounded down, at least 1)."""
    cores = affinity if affinity is not None else len(os.sched_getaffinity(0))
    if quota is None and read_quota:
        quota = cpu_quota()
    if quota is not None:
        cores = min(cores, max(1, math.floor(quota)))
    return max(1, cores)


def threads_from_environment(env: Mapping[str, str]) -> int | None:
    """``OMP_NUM_THREADS`` as a thread count (its first level, as OpenMP reads ``4,2``); None when unset or invalid."""
    value = env.get(THREADS_VAR, "").split(",")[0].strip()
    try:
        threads = int(value)
    except ValueError:
        return None
    return threads if threads >= 1 else None


def decide_threads(cores: int, reserved: int = 0, explicit: int | None = None, explicit_name: str = "model.threads",
                   env: Mapping[str, str] | None = None, reserve_note: str = "") -> ThreadPlan:
    """The torch thread count: ``explicit`` (a setting), else ``OMP_NUM_THREADS`` from ``env``, else ``cores``
    less ``reserved`` (what else the process runs), at least 1."""
    env = os.environ if env is None else env
    from_env = threads_from_environment(env)
    if explicit is not None:
        if explicit < 1:
            raise ValueError(f"{explicit_name} must be at least 1, not {explicit}")
        note = (f"overrides {THREADS_VAR}={env[THREADS_VAR]} from the environment"
                if from_env is not None and from_env != explicit else "")
        return ThreadPlan(explicit, explicit_name, cores, note=note)
    if from_env is not None:
        return ThreadPlan(from_env, THREADS_VAR, cores)
    reserved = max(0, min(reserved, cores - 1))  # one thread at least, however much the role runs beside it
    notes = [reserve_note] if reserved and reserve_note else []
    if env.get(THREADS_VAR, "").strip():
        notes.insert(0, f"{THREADS_VAR}={env[THREADS_VAR]!r} is not a thread count, ignored")
    return ThreadPlan(max(1, cores - reserved), "auto", cores, reserved, "; ".join(notes))


def apply_threads(plan: ThreadPlan) -> tuple[int, int]:
    """Give torch ``plan.threads`` intra-op threads and one inter-op thread (this process's plan from now on).

    Returns what torch reports: (intra-op, inter-op) threads. The inter-op count can be set only before torch's
    first parallel work; a later call keeps it.
    """
    global _applied
    import torch

    torch.set_num_threads(plan.threads)
    try:
        torch.set_num_interop_threads(1)  # the stage flow never forks torch work; no idle pool next to OpenMP's
    except RuntimeError:
        pass  # set once already, or torch has started its inter-op pool: it keeps its count
    _applied = plan
    return torch.get_num_threads(), torch.get_num_interop_threads()


def applied_plan() -> ThreadPlan | None:
    """The plan :func:`apply_threads` last applied in this process, or None."""
    return _applied


def describe_applied(plan: ThreadPlan, applied: tuple[int, int]) -> str:
    """The start-up log line's text: the plan, what torch reports, the wait policy."""
    return (f"threads: {plan.describe()}; torch reports {applied[0]} intra-op, {applied[1]} inter-op; "
            f"{wait_policy().describe()}")


def ensure_threads(explicit: int | None = None, explicit_name: str = "--threads") -> ThreadPlan:
    """The plan of a process that loads a model: the one already applied (the node's), else one decided now for
    a process that runs nothing else (``cxr-node reason``, ``eval``, scripts), applied and logged.

    An ``explicit`` count always applies.
    """
    current = applied_plan()
    if current is not None and explicit is None:
        return current
    plan = decide_threads(usable_cores(), explicit=explicit, explicit_name=explicit_name)
    log.info(describe_applied(plan, apply_threads(plan)))
    return plan


def single_thread_environment(env: MutableMapping[str, str] | None = None) -> None:
    """For a helper process that must run no OpenMP/BLAS threads (a page process): one thread for every runtime
    loaded from now on, and for torch if it is loaded already."""
    own = env is None
    env = os.environ if env is None else env
    for name in THREAD_COUNT_VARS:
        env[name] = "1"
    env.setdefault(WAIT_POLICY_VAR, PASSIVE)
    torch = sys.modules.get("torch")
    if own and torch is not None:
        torch.set_num_threads(1)
