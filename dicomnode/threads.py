"""The node's torch threads: what its role leaves to the model (the policy itself is ``inference/threads.py``).

The in-process model gets the usable cores less what else runs beside it, unless ``model.threads`` or the
environment's ``OMP_NUM_THREADS`` says otherwise:

- a listener (role ``all``) keeps one core: receiving (fsync, header parse) and delivery go on while the model runs;
- page processes keep one core each while they can overlap the model: with ``processing.workers`` > 1 one study's
  pages are made while the next study is reasoned on (the model takes one study at a time); with one worker they
  run between studies and reserve nothing.

Page processes themselves run no torch or OpenMP threads (``children.page_process_start``).
"""
from __future__ import annotations

import argparse
import logging
from collections.abc import Mapping

from dicomnode.config import NodeConfig
from dicomnode.logs import log_event
from inference.threads import ThreadPlan, apply_threads, decide_threads, describe_applied, usable_cores

LOG = logging.getLogger("dicomnode.threads")


def reserved_cores(config: NodeConfig, role: str) -> tuple[int, str]:
    """Cores the role runs on besides the model, and what for (a phrase for the start-up log)."""
    reserved, parts = 0, []
    if role == "all":
        reserved += 1
        parts.append("1 for the listener")
    overlapping_pages = min(config.output.page_processes, config.processing.workers - 1)
    if overlapping_pages > 0:
        reserved += overlapping_pages
        parts.append(f"{overlapping_pages} for page processes beside {config.processing.workers} workers")
    return reserved, ", ".join(parts)


def node_thread_plan(config: NodeConfig, role: str, cores: int | None = None,
                     env: Mapping[str, str] | None = None) -> ThreadPlan:
    """The torch thread plan of a node process in ``role`` (``run``: the batch command, one study at a time)."""
    reserved, note = reserved_cores(config, role)
    return decide_threads(usable_cores() if cores is None else cores, reserved, config.model.threads,
                          "model.threads", env, note)


def apply_node_threads(config: NodeConfig, role: str) -> ThreadPlan:
    """Decide, apply (before the model loads) and log this process's torch threads."""
    plan = node_thread_plan(config, role)
    applied = apply_threads(plan)
    log_event(LOG, logging.WARNING if "overrides" in plan.note else logging.INFO, describe_applied(plan, applied),
              role=role, threads=applied[0], source=plan.source)
    return plan


def thread_count(text: str) -> int:
    """argparse type of ``--threads``: a whole number of at least 1."""
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be a whole number of at least 1, not {text!r}")
    return value


def add_threads_argument(parser: argparse.ArgumentParser,
                         default: str = "every usable core, or OMP_NUM_THREADS when the environment sets it") -> None:
    """``--threads N`` of a command that loads a model in-process (reason, eval, run)."""
    parser.add_argument("--threads", type=thread_count, metavar="N", help=f"torch threads (default: {default})")
