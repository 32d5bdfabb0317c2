"""The processing plug-in point: a complete study's instances in, result datasets (SR, SC) out.

``Processor.process`` is a generator, the one channel by which results leave a processor: it yields each
``ResultObject`` once it is final (validated), and the worker stores it durably and queues it for sending at once,
while the processor makes the next; it may yield one ``ResultRecord`` (the record of how the result was made).
What was yielded before a failure is final: it may reach the PACS even though the job then fails.

``processing.processor`` in the config names the processor: a registered name (``passthrough``; the reasoning
issue registers ``reasoning``) or ``package.module:factory`` where ``factory(config) -> Processor``.
One processor instance serves all ``processing.workers`` threads of a process: with more than one worker thread it
must be thread-safe (or serialise itself). Exceptions fail the job with their text; they never stop the worker.
"""
from __future__ import annotations

import importlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable

from sr_writer.kinds import ResultObject

if TYPE_CHECKING:
    from dicomnode.config import NodeConfig

@dataclass
class StudyInput:
    """One job's view of a study: its selected instances (all generations so far) and earlier results."""

    study_instance_uid: str
    job_id: int
    generation: int
    instance_paths: list[Path]
    predecessor_results: list[Path] = field(default_factory=list)


@dataclass(frozen=True)
class ResultRecord:
    """How a study's result was made (the reasoning record as JSON), kept beside the result objects."""

    json: str


ProcessorOutput = ResultObject | ResultRecord  # ResultObject: sr_writer.kinds (kind, dataset, Part-10 bytes)


@runtime_checkable
class Processor(Protocol):
    """``process`` one study (see the module docstring); a processor may also have ``close()``, called when its
    worker stops."""

    def process(self, study: StudyInput) -> Iterator[ProcessorOutput]: ...


class PassThroughProcessor:
    """Produces no result objects: the node receives, completes and closes studies without reasoning."""

    def process(self, study: StudyInput) -> Iterator[ProcessorOutput]:
        return iter(())


ProcessorFactory = Callable[["NodeConfig"], Processor]

# name -> factory, or "module:attribute" resolved on first use (keeps heavy imports lazy)
_REGISTRY: dict[str, ProcessorFactory | str] = {
    "passthrough": lambda config: PassThroughProcessor(),
    "reasoning": "dicomnode.reasoning:reasoning_factory",
}


def register_processor(name: str, factory: ProcessorFactory | str) -> None:
    """Register ``name`` for ``processing.processor`` (a factory or a ``module:factory`` string)."""
    if ":" in name:
        raise ValueError(f"processor name {name!r} must not contain ':'")
    _REGISTRY[name] = factory


def registered_processors() -> list[str]:
    return sorted(_REGISTRY)


def _import_factory(spec: str) -> ProcessorFactory:
    module_name, _, attr = spec.partition(":")
    if not module_name or not attr:
        raise ValueError(f"processing.processor: {spec!r} is not 'package.module:factory'")
    try:
        obj: Any = importlib.import_module(module_name)
    except ImportError as exc:
        raise ValueError(f"processing.processor: cannot import {module_name!r}: {exc}") from exc
    for part in attr.split("."):
        try:
            obj = getattr(obj, part)
        except AttributeError:
            raise ValueError(f"processing.processor: {module_name!r} has no {attr!r}") from None
    if not callable(obj):
        raise ValueError(f"processing.processor: {spec!r} is not callable")
    return obj


def resolve_factory(spec: str) -> ProcessorFactory:
    """The factory for a registered name or a ``module:factory`` spec; ValueError names the problem."""
    if ":" in spec:
        return _import_factory(spec)
    entry = _REGISTRY.get(spec)
    if entry is None:
        known = ", ".join(registered_processors())
        raise ValueError(f"processing.processor: unknown processor {spec!r} (known: {known}; or module:factory)")
    return _import_factory(entry) if isinstance(entry, str) else entry


def make_processor(config: NodeConfig) -> Processor:
    """Build the processor the config names."""
    processor = resolve_factory(config.processing.processor)(config)
    if not isinstance(processor, Processor):
        raise ValueError(f"processing.processor: {config.processing.processor!r} did not return a Processor")
    return processor
