"""The node's page processes, and how a study's result objects are made on them.

:class:`ResultMaker` owns a pool of page processes (spawned, never forked: a forked copy of a process running
torch threads can deadlock; each watches its parent, :mod:`dicomnode.children`). ``make`` submits every task of
the result kinds (``sr_writer.plan``: the SR, the page parts) at once, so the work spreads over the cores while the
worker stores and sends what is ready, and yields each object as its task finishes. A task lost with its process
(``BrokenExecutor``: killed, out of memory) is run here instead and the pool is started afresh for the next study.
With no page processes everything is made here, one task after the other.
"""
from __future__ import annotations

import logging
import multiprocessing
import threading
import time
from collections.abc import Callable, Generator, Sequence
from concurrent.futures import BrokenExecutor, Executor, Future, ProcessPoolExecutor, as_completed

from dicomnode.children import page_process_start, rehearse_prepare
from sr_writer import ResultObject, ResultObjects, Sources, assemble, plan
from sr_writer.api import warm_up
from sr_writer.kinds import Made, MakingTask, run_task

log = logging.getLogger(__name__)
START_TIMEOUT = 120.0  # seconds the page processes may take to start (import, fonts) before the node goes on


class ResultMaker:
    """Makes result sets of ``kinds`` (default: every registered kind) on ``processes`` page processes (0: in
    the calling thread). ``make_pool`` replaces the pool of spawned page processes (tests)."""

    def __init__(self, processes: int, kinds: Sequence[str] | None = None,
                 make_pool: Callable[[], Executor] | None = None) -> None:
        self.processes = processes
        self.kinds = list(kinds) if kinds is not None else None
        self._make_pool = make_pool or self._page_processes
        self._lock = threading.Lock()
        self._pool: Executor | None = None

    def start(self, wait: bool = True) -> None:
        """Start the page processes now (ready before the first study, not while it waits)."""
        pool = self._get_pool()
        if pool is None:
            return
        started = [pool.submit(warm_up) for _ in range(self.processes)]  # one submit starts one process
        rehearse_prepare()  # meanwhile, the part of result making that runs here
        if wait:
            try:
                for future in started:
                    future.result(timeout=START_TIMEOUT)
            except Exception as exc:
                log.warning("result making: page processes did not start: %s", exc)

    def _page_processes(self) -> Executor:
        return ProcessPoolExecutor(max_workers=self.processes, mp_context=multiprocessing.get_context("spawn"),
                                   initializer=page_process_start)

    def _get_pool(self) -> Executor | None:
        if not self.processes:
            return None
        with self._lock:
            if self._pool is None:
                self._pool = self._make_pool()
            return self._pool

    def _lost(self, pool: Executor) -> None:
        """A page process died: new ones for the next study."""
        log.warning("result making: page process lost; its tasks were run in the worker")
        with self._lock:
            if self._pool is pool:
                self._pool = None
        pool.shutdown(wait=False, cancel_futures=True)

    def make(self, sources: Sources, repairs: list[str]) -> Generator[ResultObject, None, ResultObjects]:
        """Yields each result object of ``sources`` as soon as it is final; returns the whole set."""
        started = time.perf_counter()
        pool = self._get_pool()
        tasks = plan(sources, self.kinds, split=pool is not None)
        made: dict[int, Made] = {}
        lost = False
        if pool is not None:
            futures: dict[Future[Made], int] = {}
            try:
                for index, task in enumerate(tasks):
                    futures[pool.submit(run_task, task)] = index
            except BrokenExecutor:
                lost = True
            for future in as_completed(futures):
                try:
                    made[futures[future]] = future.result()
                except BrokenExecutor:
                    lost = True
                    continue
                yield from made[futures[future]].objects
        for index, task in enumerate(tasks):  # no pool, or lost with their process: made here
            if index not in made:
                made[index] = self._run_here(task)
                yield from made[index].objects
        if lost and pool is not None:
            self._lost(pool)
        return assemble([made[index] for index in range(len(tasks))], repairs,
                        {"all": time.perf_counter() - started}, lost)

    @staticmethod
    def _run_here(task: MakingTask) -> Made:
        return task.run()

    def close(self) -> None:
        """Stop the page processes."""
        with self._lock:
            pool, self._pool = self._pool, None
        if pool is not None:
            pool.shutdown(wait=True, cancel_futures=True)
