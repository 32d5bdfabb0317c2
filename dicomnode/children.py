"""Child processes that die with the node: a parent watchdog for spawned helpers (the page processes).

A ``multiprocessing`` child of a node killed with SIGKILL would otherwise live on (re-parented to init), holding
memory and, for a page process, the results of a study nobody waits for. ``prctl(PR_SET_PDEATHSIG)`` is not used:
it fires when the *thread* that spawned the child ends, and page processes are spawned from whichever thread first
needs them. The watchdog checks instead that the parent process is still the one that started the child.
"""
from __future__ import annotations

import logging
import os
import threading
from typing import TYPE_CHECKING

from dicomnode.heap import freeze_start_up_heap

if TYPE_CHECKING:
    from sr_writer import Sources

WATCH_SECONDS = 0.5
log = logging.getLogger(__name__)


def watch_parent(interval: float = WATCH_SECONDS) -> None:
    """In a child: end this process (exit status 1) as soon as its parent has gone (``getppid`` changes)."""
    parent = os.getppid()

    def watch() -> None:
        while True:
            threading.Event().wait(interval)
            if os.getppid() != parent:
                os._exit(1)  # no clean-up: the parent that would take the results is gone

    threading.Thread(target=watch, name="parent-watchdog", daemon=True).start()


def page_process_start() -> None:
    """Initializer of a page process: one thread for any OpenMP/BLAS runtime, the parent watchdog, values checked
    once (``values_checked_by_dciodvfy``), then sr_writer's warm-up (fonts) and a rehearsal; what that loaded is
    then kept out of garbage collection (``dicomnode.heap``).

    A page process renders, encodes and validates; it never imports torch (sr_writer does not), and a runtime
    that something loads later gets one thread, so page processes never spin beside the model's threads.
    """
    from inference.threads import single_thread_environment

    single_thread_environment()
    watch_parent()
    values_checked_by_dciodvfy()
    from sr_writer.api import warm_up

    warm_up()
    rehearse()
    freeze_start_up_heap("page process")


def values_checked_by_dciodvfy() -> None:
    """In a page process: pydicom does not check each value as it is set or read.

    A page process only makes result objects, and each is checked by dciodvfy before it leaves the process (the
    export gate, ``sr_writer.validate``; an error refuses the object). pydicom's own check of every value, in its
    default mode, only warned, into a page process's stderr; it cost a tenth to a sixth of the making (measured
    2026-12-07: SR 0.23 -> 0.18-0.19 s, first page 0.065 -> 0.05 s). Not for the node's other processes: the
    listener and the worker read what peers send, where pydicom's checks are the only ones."""
    from pydicom import config

    config.settings.writing_validation_mode = config.IGNORE
    config.settings.reading_validation_mode = config.IGNORE


REHEARSAL_FINDINGS = ("pneumothorax", "pleural_effusion", "cardiomegaly", "support_devices")


def _rehearsal_sources() -> Sources:
    """The checked sources of a synthetic two-view study with findings of each kind (boxed, device, organ) on
    every page a study has: what ``rehearse`` makes results of."""
    from dicomnode.demo.records import make_record
    from dicomnode.demo.synthetic import StudySpec, make_study
    from sr_writer import prepare

    study = make_study(StudySpec(rows=256, columns=208))
    sources, _ = prepare(make_record(study, positive=REHEARSAL_FINDINGS), study)
    return sources


def rehearse() -> None:
    """Make a whole result set (the SR and every reasoning page, built, encoded, validated) and drop it: the lazy
    imports, code table, fonts at each size, page layouts and dciodvfy's first run that the first study would
    otherwise wait for. An SR and the first page only left the first study 0.15 s slower than the next ones (its
    pages 2-6 laid out for the first time). A failure here only costs that time later."""
    try:
        from sr_writer import plan

        for task in plan(_rehearsal_sources()):
            task.run()
    except Exception as exc:  # noqa: BLE001 - the page process serves anyway
        log.warning("page process rehearsal failed: %s", exc)


def rehearse_prepare() -> None:
    """The worker's share of the rehearsal: check a small study's sources (``sr_writer.prepare``: header hygiene,
    code table, the first page's image decoded) once, so the first study does not pay the lazy imports and table
    loads (measured: 0.30 s cold, 0.002 s after). A failure here only costs that time later."""
    try:
        _rehearsal_sources()
    except Exception as exc:  # noqa: BLE001 - the worker serves anyway
        log.warning("result making rehearsal failed: %s", exc)
