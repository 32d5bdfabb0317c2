"""Prometheus metrics of the node: one registry, a few named instruments and small helpers to feed them.

Other modules import this module and call, for example::

    metrics.instances_received.inc()
    metrics.observe_stage("s3", seconds)          # reasoning stage durations
    metrics.observe_model("generate", seconds)    # time inside the model
    metrics.add_tokens("generated", n)
    metrics.record_delivery("pacs", ok=False)
    with metrics.timed_stage("s1"): ...

Values that live in the database (studies by state, queue depth) are read when scraped: the process that owns a
database session registers a callable with :func:`set_state_source`. Label values are bounded (state names, stage
keys, token kinds, destination names from the config); never put UIDs or patient data into a label.
"""
from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterator, Mapping
from contextlib import AbstractContextManager, contextmanager

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

log = logging.getLogger(__name__)

REGISTRY = CollectorRegistry(auto_describe=True)
PREFIX = "cxrnode"

# Stage durations run from well under a second (stage 1 with a cached prefix) to minutes on a CPU.
_STAGE_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600, float("inf"))
_MODEL_BUCKETS = (0.01, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, float("inf"))


def _counter(name: str, documentation: str, *labels: str) -> Counter:
    return Counter(f"{PREFIX}_{name}", documentation, labels, registry=REGISTRY)


def _histogram(name: str, documentation: str, buckets: tuple[float, ...], *labels: str) -> Histogram:
    return Histogram(f"{PREFIX}_{name}", documentation, labels, buckets=buckets, registry=REGISTRY)


instances_received = _counter("instances_received", "DICOM instances acknowledged with success after durable storage.")
instances_rejected = _counter("instances_rejected", "C-STORE requests answered with a failure status, by reason.",
                              "reason")
associations_rejected = _counter("associations_rejected",
                                 "Associations refused, by reason (calling_aet, low_disk, ...).", "reason")
associations_aborted = _counter(
    "associations_aborted", "Incoming connections the node ended, by reason (negotiation_timeout, idle_timeout, "
    "tls_handshake_timeout, too_many_pending, shutdown).", "reason")
tls_failures = _counter("tls_failures", "Incoming connections whose TLS handshake failed or never came.")
stage_seconds = _histogram("stage_seconds", "Duration of one reasoning stage of one study.", _STAGE_BUCKETS, "stage")
model_seconds = _histogram("model_seconds", "Time spent inside the model, by kind (load, prefill, generate, ...).",
                           _MODEL_BUCKETS, "kind")
study_seconds = _histogram("study_seconds", "From a study's completion to its last result object acknowledged by "
                           "PACS.", _STAGE_BUCKETS)
tokens = _counter("tokens", "Model tokens by kind: prompt (computed), cached (reused prefix), generated.", "kind")
triage_assessed = _counter("triage", "Result sets assessed by triage (inference.triage), by the priority they "
                           "raised: routine, urgent, stat.", "priority")
delivery_attempts = _counter("delivery_attempts", "C-STORE attempts of result objects, by destination.",
                             "destination")
delivery_failures = _counter("delivery_failures", "Failed C-STORE attempts of result objects, by destination.",
                             "destination")
feedback_messages = _counter("feedback_messages", "HL7 messages the feedback listener answered, by acknowledgement "
                             "code (AA, AE, AR).", "ack")
model_loaded = Gauge(
    f"{PREFIX}_model_loaded", "1 when this process holds a loaded model, else 0.", registry=REGISTRY,
)

StateSource = Callable[[], Mapping[str, int]]


class _DatabaseCollector(Collector):
    """Reads studies-by-state and queue depth from the registered callables at scrape time."""

    def __init__(self) -> None:
        self.states: StateSource | None = None
        self.queue_depth: Callable[[], int] | None = None

    def collect(self) -> Iterator[GaugeMetricFamily]:
        by_state = GaugeMetricFamily(f"{PREFIX}_studies", "Studies in the database by job state.", labels=["state"])
        queue = GaugeMetricFamily(f"{PREFIX}_queue_depth", "Studies waiting for a worker (QUEUED).")
        ok = GaugeMetricFamily(f"{PREFIX}_database_scrape_ok", "1 when the database counts could be read.")
        healthy = True
        if self.states is not None:
            try:
                for state, count in sorted(self.states().items()):
                    by_state.add_metric([str(state)], float(count))
            except Exception as exc:  # a scrape must never fail because the database is down
                healthy = False
                log.warning("metrics: studies-by-state unavailable: %s", exc)
        if self.queue_depth is not None:
            try:
                queue.add_metric([], float(self.queue_depth()))
            except Exception as exc:
                healthy = False
                log.warning("metrics: queue depth unavailable: %s", exc)
        ok.add_metric([], 1.0 if healthy else 0.0)
        yield by_state
        yield queue
        yield ok

    def describe(self) -> Iterator[GaugeMetricFamily]:
        return iter(())


_database = _DatabaseCollector()
REGISTRY.register(_database)


def set_state_source(states: StateSource | None, queue_depth: Callable[[], int] | None = None) -> None:
    """Register callables that return ``{state: count}`` and the queue depth; called at every scrape.

    With only ``states`` given, the queue depth is ``states()["QUEUED"]``.
    """
    _database.states = states
    if queue_depth is None and states is not None:
        queue_depth = lambda: int(states().get("QUEUED", 0))  # noqa: E731
    _database.queue_depth = queue_depth


def observe_stage(stage_key: str, seconds: float) -> None:
    """Record the duration of one reasoning stage (``stage_key`` e.g. "s1" or "stage1")."""
    stage_seconds.labels(stage=str(stage_key)).observe(max(0.0, seconds))


def observe_model(kind: str, seconds: float) -> None:
    """Record time spent inside the model (``kind``: load, prefill, generate, ...)."""
    model_seconds.labels(kind=kind).observe(max(0.0, seconds))


def add_tokens(kind: str, n: int) -> None:
    """Count ``n`` tokens of ``kind`` (prompt, cached, generated)."""
    if n > 0:
        tokens.labels(kind=kind).inc(n)


def record_delivery(destination: str, ok: bool) -> None:
    """Count one C-STORE attempt of a result object to ``destination`` and, when it failed, the failure."""
    delivery_attempts.labels(destination=destination).inc()
    if not ok:
        delivery_failures.labels(destination=destination).inc()


_model_state = {"loaded": False}


def observe_study(seconds: float) -> None:
    """Record one study's time from completion to its last result object acknowledged by PACS."""
    study_seconds.observe(max(0.0, seconds))


def reject_association(reason: str) -> None:
    """Count an association refused for ``reason`` (a short fixed word: calling_aet, low_disk, busy, tls)."""
    associations_rejected.labels(reason=reason).inc()


def reject_instance(reason: str) -> None:
    """Count a C-STORE answered with a failure status for ``reason`` (a short fixed word)."""
    instances_rejected.labels(reason=reason).inc()


def set_model_loaded(loaded: bool) -> None:
    """Say whether this process holds a loaded model (the worker calls it after loading / on unload)."""
    _model_state["loaded"] = bool(loaded)
    model_loaded.set(1 if loaded else 0)


def is_model_loaded() -> bool:
    return _model_state["loaded"]


_engine_state: dict[str, object] = {}  # remote backend only: {"up": bool, "detail": str}


def set_engine_state(up: bool, detail: str) -> None:
    """Say whether the serving engine (``model.backend: openai``) answered the last request."""
    _engine_state.update(up=bool(up), detail=detail)


def engine_state() -> tuple[bool, str] | None:
    """(up, detail) of the serving engine; None with the local backend (nothing reported)."""
    if not _engine_state:
        return None
    return bool(_engine_state["up"]), str(_engine_state["detail"])


@contextmanager
def _timed(observe: Callable[[str, float], None], key: str) -> Iterator[None]:
    """Time a block and ``observe(key, seconds)`` (also when it raises)."""
    start = time.perf_counter()
    try:
        yield
    finally:
        observe(key, time.perf_counter() - start)


def timed_stage(stage_key: str) -> AbstractContextManager[None]:
    """Time a block as one stage (recorded also when it raises)."""
    return _timed(observe_stage, stage_key)


def timed_model(kind: str) -> AbstractContextManager[None]:
    """Time a block as model time of ``kind``."""
    return _timed(observe_model, kind)


def exposition() -> bytes:
    """The registry in Prometheus text format."""
    return generate_latest(REGISTRY)
