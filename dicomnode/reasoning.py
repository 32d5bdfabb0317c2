"""The ``reasoning`` processor: a complete study's instances -> the 8-stage flow -> validated SR + SC pages.

The model loads once, when the processor is built (worker start-up), and is reused for every study. A prior study,
when enabled, is looked up in and retrieved from the PACS; no prior, or a PACS that refuses, only makes stages 5-6
not applicable. Anything that goes wrong inside one study raises, so the worker records FAILED with the reason and
carries on with the next job.
"""
from __future__ import annotations

import contextlib
import logging
import multiprocessing
import shutil
import threading
import time
from collections.abc import Generator, Iterator, Sequence
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import pydicom
from pydicom.dataset import Dataset
from pydicom.uid import ExplicitVRLittleEndian, RLELossless

from dicomnode import metrics
from dicomnode.children import page_process_start
from dicomnode.config import NodeConfig
from dicomnode.datadir import DataDir
from dicomnode.priors import fetch_prior
from dicomnode.processing import ObjectKind, ProcessorOutput, ResultObject, ResultRecord, StudyInput
from dicomnode.uids import result_uids
from inference.chat import EngineUnavailable
from inference.flow import run_flow
from inference.model.loading import load_chat_model
from inference.record import ReasoningRecord
from inference.stages import StageBook, load_stages
from sr_writer import OutputOptions, ResultObjects, ResultUids, make_result_objects
from sr_writer.api import warm_up

log = logging.getLogger(__name__)

SR_SOP_CLASSES = ("1.2.840.10008.5.1.4.1.1.88.33", "1.2.840.10008.5.1.4.1.1.88.34", "1.2.840.10008.5.1.4.1.1.88.22")
PAGE_ENCODINGS = {"rle": RLELossless, "explicit": ExplicitVRLittleEndian}


# Images are shrunk to this longest side before the model's processor sees them. Above every processor's pixel
# budget (Qwen2.5-VL's default 12.8 MP is ~3584 px square), so ordinary radiographs reach the model unchanged,
# while a 10,000-px image no longer goes to the processor (which copies it as floats on every turn) at full size.
MODEL_IMAGE_MAX_SIDE = 4096


def output_options(config: NodeConfig, demo: bool = False) -> OutputOptions:
    """Series numbers and descriptions of the result objects, from ``config.output``."""
    prefix = config.output.series_description_prefix
    return OutputOptions(
        sr_series_number=config.output.series_number_sr,
        sc_series_number=config.output.series_number_sc,
        sr_series_description=f"{prefix} report (unverified)"[:64],
        sc_series_description=f"{prefix} page (unverified)"[:64],
        page_transfer_syntax=PAGE_ENCODINGS[config.output.page_encoding],
        sr_sop_class=config.output.sr_sop_class,
    )


def read_datasets(paths: Sequence[Path]) -> list[Dataset]:
    """Every readable instance with pixel data; unreadable ones are logged and left out."""
    datasets = []
    for path in paths:
        try:
            ds = pydicom.dcmread(path)
        except Exception as exc:  # a spool file we cannot read is reported, the study goes on without it
            log.warning("reasoning: cannot read %s: %s", path.name, exc)
            continue
        if "PixelData" in ds:
            datasets.append(ds)
    return datasets


def latest_predecessor_sr(paths: Sequence[Path]) -> Dataset | None:
    """The newest SR among earlier deliveries of this study (the one an amendment replaces)."""
    found: Dataset | None = None
    for path in paths:
        try:
            ds = pydicom.dcmread(path, stop_before_pixels=True)
        except Exception:
            continue
        if str(ds.get("SOPClassUID", "")) in SR_SOP_CLASSES:
            found = ds  # paths come in generation order: the last SR is the newest
    return found


def connect_engine(config: NodeConfig):
    """The remote ChatModel of ``model.backend: openai`` (checks /v1/models; EngineUnavailable when down)."""
    from inference.model.remote import connect

    m = config.model
    return connect(m.url or "", name=m.name, api_key_env=m.api_key_env, timeout_seconds=m.timeout_seconds,
                   profile=m.profile, seed=config.reasoning.seed, min_pixels=m.min_pixels, max_pixels=m.max_pixels)


class ReasoningProcessor:
    """Runs the reasoning flow and writes the result objects for one study at a time."""

    def __init__(self, config: NodeConfig, model=None, stages: StageBook | None = None) -> None:
        self.config = config
        remote = model is None and config.model.backend == "openai"
        if remote:
            try:
                model = connect_engine(config)
            except EngineUnavailable as exc:  # the node starts anyway; studies wait in the queue for the engine
                log.warning("serving engine not reachable at start-up (%s); connecting with the first study", exc)
                metrics.set_engine_state(False, str(exc)[:300])
        if model is None and not remote:
            if config.model.path is None:
                raise ValueError("model.path: the reasoning processor needs a local model directory")
            started = time.perf_counter()
            model = load_chat_model(config.model.path, quantization=config.model.quantization,
                                    device=config.model.device, skip_modules=config.model.skip_modules,
                                    seed=config.reasoning.seed)
            metrics.observe_model("load", time.perf_counter() - started)
        self.model = model
        metrics.set_model_loaded(model is not None)
        if not config.reasoning.constrain_closed_answers:
            log.warning("reasoning.constrain_closed_answers is false: closed answers are NOT constrained at decoding "
                        "and may not parse")
        if config.reasoning.parallel_within_stage:
            log.info("reasoning.parallel_within_stage: a stage's independent questions are asked together and do not "
                     "see each other's answers")
        self.stages = stages or load_stages(config.reasoning.stages_file)
        self.options = output_options(config)
        # One conversation at a time with an in-process model (it holds its prefix cache); a serving engine takes
        # several studies at once (processing.workers > 1), each study's turns still in order.
        self._model_lock = (contextlib.nullcontext() if remote or getattr(model, "concurrent", False)
                            else threading.Lock())
        self._connect_lock = threading.Lock()
        self._pages_lock = threading.Lock()
        self._pages: ProcessPoolExecutor | None = None
        if config.output.page_processes:
            self._page_executor(wait=True)  # ready before the first study, not while it waits

    def _page_executor(self, wait: bool = False) -> ProcessPoolExecutor | None:
        """The page processes (started with the processor, each warmed up as it starts); None when configured off."""
        workers = self.config.output.page_processes
        if not workers:
            return None
        with self._pages_lock:
            if self._pages is None:
                # spawn, never fork: a forked copy of a process running torch threads can deadlock
                # each watches its parent: a node killed with SIGKILL leaves no page process behind
                self._pages = ProcessPoolExecutor(max_workers=workers, mp_context=multiprocessing.get_context("spawn"),
                                                  initializer=page_process_start)
                # one submit starts one process; the task itself is a no-op once the initializer has run
                started = [self._pages.submit(warm_up) for _ in range(workers)]
                if wait:
                    try:
                        for future in started:
                            future.result(timeout=120)
                    except Exception as exc:  # pages are then made in the worker, see _result_objects
                        log.warning("reasoning: page processes did not start: %s", exc)
            return self._pages

    def _result_objects(self, record: ReasoningRecord, current: list[Dataset], prior: list[Dataset],
                        predecessor: Dataset | None,
                        uids: ResultUids | None = None) -> Generator[ResultObject, None, ResultObjects]:
        """Yields each result object as soon as it is final; returns the whole set."""
        executor = self._page_executor()
        making = make_result_objects(record, current, prior, self.options, predecessor, executor, uids)
        while True:
            try:
                dataset, data = next(making)
            except StopIteration as done:
                objects: ResultObjects = done.value
                break
            kind: ObjectKind = "sr" if str(dataset.SOPClassUID) in SR_SOP_CLASSES else "sc"
            yield ResultObject(kind, dataset, data)
        if objects.page_executor_lost:  # a page process died (e.g. killed): start new ones next time
            log.warning("reasoning: page process lost; some of this study's pages were made in the worker")
            with self._pages_lock:
                if self._pages is executor:
                    self._pages = None
            if executor is not None:
                executor.shutdown(wait=False, cancel_futures=True)
        return objects

    def close(self) -> None:
        """Stop the page processes."""
        with self._pages_lock:
            executor, self._pages = self._pages, None
        if executor is not None:
            executor.shutdown(wait=True, cancel_futures=True)

    def _prior(self, current: Dataset, job_id: int) -> list[Dataset]:
        priors = self.config.reasoning.priors
        if not priors.enabled:
            return []
        if not priors.calling_aet:
            priors = priors.model_copy(update={"calling_aet": self.config.node.ae_title})
        dest = DataDir(self.config.storage.data_dir).priors(job_id)
        fetched = fetch_prior(priors, str(current.get("PatientID", "")), str(current.StudyInstanceUID),
                              str(current.get("StudyDate", "")), dest, str(current.get("StudyTime", "")) or None)
        datasets = read_datasets(fetched.files)
        log.info("reasoning: job %s: %s; %d prior image(s) usable", job_id, fetched.reason, len(datasets))
        return datasets

    def _engine_model(self):
        """The ChatModel; with an engine that was down at start-up, connect now (EngineUnavailable re-queues)."""
        if self.model is None:
            with self._connect_lock:
                if self.model is None:
                    self.model = connect_engine(self.config)
                    metrics.set_model_loaded(True)
        return self.model

    def reason(self, current: Sequence[Dataset], prior: Sequence[Dataset] = ()) -> ReasoningRecord:
        started = time.perf_counter()
        with self._model_lock:
            record = run_flow(self._engine_model(), current, prior, self.stages,
                              max_new_tokens=self.config.reasoning.max_new_tokens, seed=self.config.reasoning.seed,
                              constrain=self.config.reasoning.constrain_closed_answers,
                              parallel_within_stage=self.config.reasoning.parallel_within_stage,
                              max_side=MODEL_IMAGE_MAX_SIDE)
        metrics.observe_model("study", time.perf_counter() - started)
        for stage in record.stages:
            metrics.observe_stage(stage.key, stage.seconds)
        metrics.add_tokens("prompt", record.provenance.prompt_tokens)
        metrics.add_tokens("cached", record.provenance.cached_tokens)
        metrics.add_tokens("generated", record.provenance.generated_tokens)
        return record

    def process(self, study: StudyInput) -> Iterator[ProcessorOutput]:
        current = read_datasets(study.instance_paths)
        if not current:
            raise ValueError("no readable image instance in the study")
        prior_dir = DataDir(self.config.storage.data_dir).priors(study.job_id)
        try:
            prior = self._prior(current[0], study.job_id)
            record = self.reason(current, prior)
            uids = result_uids(study.study_instance_uid, study.generation, self.config.node.ae_title)
            objects = yield from self._result_objects(record, current, prior,
                                                      latest_predecessor_sr(study.predecessor_results), uids)
        finally:
            shutil.rmtree(prior_dir, ignore_errors=True)  # the prior stays in the PACS; our copy is transient
        for repair in objects.repairs:  # keywords and actions only: no patient data at INFO
            log.info("reasoning: job %s: source header %s", study.job_id, repair)
        record.provenance.header_repairs = list(objects.repairs)
        log.debug("reasoning: job %s: result objects %s", study.job_id,
                  {k: round(v, 3) for k, v in objects.seconds.items()})
        yield ResultRecord(record.to_json())


def reasoning_factory(config: NodeConfig) -> ReasoningProcessor:
    return ReasoningProcessor(config)

