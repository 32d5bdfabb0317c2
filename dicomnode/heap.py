"""What Python's cyclic garbage collector skips: everything a process loaded at start-up.

A worker holds the model, torch, transformers, SQLAlchemy and pydicom's dictionaries: millions of objects that live
as long as the process. The collector's oldest generation walks all of them whenever enough new objects have
survived: measured in ``benchmarks/e2e.py`` (2026-12-08), a full collection in the worker took 0.30-0.34 s, about one
study in three, wherever it fell (in the model, or in the window between the model's end and the last result
sent). ``gc.freeze`` moves the objects alive now into a permanent generation that collections do not walk;
objects made later (a study's) are collected as before. Nothing the process loaded at start-up is garbage later.
"""
from __future__ import annotations

import gc
import logging

log = logging.getLogger(__name__)


def freeze_start_up_heap(what: str) -> int:
    """Collect once, then keep every object alive now out of later collections; returns how many were frozen."""
    gc.collect()
    gc.freeze()
    frozen = gc.get_freeze_count()
    log.debug("%s: %d start-up objects kept out of garbage collection", what, frozen)
    return frozen


def thaw_start_up_heap() -> None:
    """Back to ordinary collection (a node stopping in a process that goes on, e.g. the tests)."""
    gc.unfreeze()
