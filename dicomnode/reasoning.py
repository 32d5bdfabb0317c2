"""The ``reasoning`` processor: a complete study's instances -> the 8-stage flow -> validated SR + SC pages.

The model loads once, when the processor is built (worker start-up), and is reused for every study. A prior study,
when enabled, is looked up in and retrieved from the PACS; no prior, or a PACS that refuses, only makes stages 5-6
not applicable. Anything that goes wrong inside one study raises, so the worker records FAILED with the reason and
carries on with the next job.
"""
from __future__ import annotations

import contextlib
import logging
import shutil
import threading
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import pydicom
from pydicom.dataset import Dataset
from pydicom.uid import ExplicitVRLittleEndian, RLELossless

from dicomnode import metrics
from dicomnode.config import NodeConfig
from dicomnode.datadir import DataDir
from dicomnode.priors import fetch_prior
from dicomnode.processing import ProcessorOutput, ResultRecord, StudyInput
from dicomnode.result_making import ResultMaker
from dicomnode.uids import result_uids
from inference.chat import ChatModel, EngineUnavailable
from inference.flow import run_flow
from inference.model.open import ModelSpec, open_chat_model
from inference.record import ReasoningRecord
from inference.stages import StageBook, load_stages
from sr_writer import OutputOptions, prepare
from sr_writer.kinds import kind_of_sop_class

log = logging.getLogger(__name__)

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
        triage_rules=config.triage.as_rules(),
    )


def model_spec(config: NodeConfig) -> ModelSpec:
    """The model the config's ``model:`` section names."""
    m = config.model
    return ModelSpec(backend=m.backend, path=m.path, quantization=m.quantization, device=m.device,
                     skip_modules=m.skip_modules, profile=m.profile if m.backend == "openai" else None,
                     seed=config.reasoning.seed, url=m.url, name=m.name, api_key_env=m.api_key_env,
                     timeout_seconds=m.timeout_seconds, min_pixels=m.min_pixels, max_pixels=m.max_pixels)


def read_datasets(paths: Sequence[Path]) -> list[Dataset]:
    """Every readable instance with pixel data; unreadable ones are logged and left out."""
    datasets: list[Dataset] = []
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
        if kind_of_sop_class(str(ds.get("SOPClassUID", ""))) == "sr":
            found = ds  # paths come in generation order: the last SR is the newest
    return found


class ReasoningProcessor:
    """Runs the reasoning flow and writes the result objects for one study at a time."""

    def __init__(self, config: NodeConfig, model: ChatModel | None = None, stages: StageBook | None = None) -> None:
        self.config = config
        remote = model is None and self.spec.backend == "openai"
        if model is None:
            started = time.perf_counter()
            try:
                model = open_chat_model(self.spec)
            except EngineUnavailable as exc:  # the node starts anyway; studies wait in the queue for the engine
                log.warning("serving engine not reachable at start-up (%s); connecting with the first study", exc)
                metrics.set_engine_state(False, str(exc)[:300])
            if not remote:
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
        self._model_lock: Any = (contextlib.nullcontext() if remote or getattr(model, "concurrent", False)
                                 else threading.Lock())
        self._connect_lock = threading.Lock()
        self.results = ResultMaker(config.output.page_processes, config.output.objects)
        self.results.start(wait=True)  # ready before the first study, not while it waits

    def close(self) -> None:
        """Stop the page processes."""
        self.results.close()

    def _prior(self, current: Dataset, job_id: int) -> list[Dataset]:
        priors = self.config.reasoning.priors
        if not priors.enabled:
            return []
        if not priors.calling_aet:
            priors = priors.model_copy(update={"calling_aet": self.config.node.ae_title})
        dest = DataDir(self.config.storage.data_dir).priors(job_id)
        fetched = fetch_prior(priors, str(current.get("PatientID", "")), str(current.StudyInstanceUID),
                              str(current.get("StudyDate", "")), dest, str(current.get("StudyTime", "")) or None,
                              listen_host=self.config.node.host)
        datasets = read_datasets(fetched.files)
        log.info("reasoning: job %s: %s; %d prior image(s) usable", job_id, fetched.reason, len(datasets))
        return datasets

    @property
    def spec(self) -> ModelSpec:
        """The model the config names."""
        return model_spec(self.config)

    def _engine_model(self) -> ChatModel:
        """The ChatModel; with an engine that was down at start-up, connect now (EngineUnavailable re-queues)."""
        if self.model is None:
            with self._connect_lock:
                if self.model is None:
                    self.model = open_chat_model(self.spec)
                    metrics.set_model_loaded(True)
        return self.model

    def reason(self, current: Sequence[Dataset], prior: Sequence[Dataset] = ()) -> ReasoningRecord:
        started = time.perf_counter()
        with self._model_lock:
            record = run_flow(self._engine_model(), current, prior, self.stages,
                              max_new_tokens=self.config.reasoning.max_new_tokens, seed=self.config.reasoning.seed,
                              constrain=self.config.reasoning.constrain_closed_answers,
                              parallel_within_stage=self.config.reasoning.parallel_within_stage,
                              max_side=MODEL_IMAGE_MAX_SIDE, thresholds=self.config.thresholds)
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
            sources, repairs = prepare(record, current, prior, self.options,
                                       latest_predecessor_sr(study.predecessor_results), uids)
            objects = yield from self.results.make(sources, repairs)
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

