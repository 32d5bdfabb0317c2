"""Processors for node tests, loaded by ``processing.processor: cxr_test_processors:<factory>``.

They write a line per ``process`` call to ``data_dir/process-calls.log`` (job id, pid) so tests can prove a job
was processed exactly once, across threads and processes. ``CXR_TEST_PROCESS_SECONDS`` makes processing slow.
"""
from __future__ import annotations

import os
import time
from collections.abc import Iterator
from pathlib import Path

import highdicom as hd
import numpy as np
from pydicom import dcmread
from pydicom.sr.codedict import codes
from pydicom.uid import ExplicitVRLittleEndian, generate_uid

from dicomnode.config import NodeConfig
from dicomnode.processing import ProcessorOutput, ResultObject, ResultRecord, StudyInput

CALLS_LOG = "process-calls.log"


def _log_call(data_dir: Path, study: StudyInput) -> None:
    line = f"{study.job_id} {os.getpid()} {study.study_instance_uid} {len(study.instance_paths)}\n"
    fd = os.open(data_dir / CALLS_LOG, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
    try:
        os.write(fd, line.encode())
        os.fsync(fd)
    finally:
        os.close(fd)
    delay = float(os.environ.get("CXR_TEST_PROCESS_SECONDS", "0") or 0)
    if delay:
        time.sleep(delay)


def read_calls(data_dir: Path) -> list[tuple[int, int, str, int]]:
    """(job id, pid, study uid, instance count) per process call so far."""
    path = Path(data_dir) / CALLS_LOG
    if not path.exists():
        return []
    rows = []
    for line in path.read_text().splitlines():
        job, pid, uid, n = line.split()
        rows.append((int(job), int(pid), uid, int(n)))
    return rows


def secondary_capture(ref_path: Path, series_number: int = 9902) -> hd.sc.SCImage:
    """A small derived Secondary Capture in the study of ``ref_path`` (a grey ramp)."""
    ref = dcmread(ref_path, stop_before_pixels=True)
    pixels = np.tile(np.arange(64, dtype=np.uint8) * 4, (48, 1))
    sc = hd.sc.SCImage.from_ref_dataset(
        ref_dataset=ref, pixel_array=pixels, photometric_interpretation="MONOCHROME2", bits_allocated=8,
        coordinate_system="PATIENT", patient_orientation=("L", "F"), series_instance_uid=generate_uid(),
        sop_instance_uid=generate_uid(),
        series_number=series_number, instance_number=1, manufacturer="cxr-node tests",
        transfer_syntax_uid=ExplicitVRLittleEndian,
    )
    return sc


def text_sr(ref_path: Path, series_number: int = 9901) -> hd.sr.EnhancedSR:
    """A small Enhanced SR with one text finding, in the study of ``ref_path``."""
    ref = dcmread(ref_path, stop_before_pixels=True)
    root = hd.sr.ContainerContentItem(name=codes.DCM.Finding, template_id=None)
    root.ContentSequence = [hd.sr.TextContentItem(
        name=codes.DCM.Finding, value="test result (unverified AI output)",
        relationship_type=hd.sr.RelationshipTypeValues.CONTAINS)]
    return hd.sr.EnhancedSR(
        evidence=[ref], content=root, series_instance_uid=generate_uid(), series_number=series_number,
        sop_instance_uid=generate_uid(), instance_number=1, manufacturer="cxr-node tests",
    )


class SecondaryCaptureProcessor:
    """One SC (and, with ``with_sr``, one SR) per study."""

    def __init__(self, data_dir: Path, with_sr: bool = False) -> None:
        self.data_dir = Path(data_dir)
        self.with_sr = with_sr

    def process(self, study: StudyInput) -> Iterator[ProcessorOutput]:
        _log_call(self.data_dir, study)
        if self.with_sr:
            yield ResultObject("sr", text_sr(study.instance_paths[0]))
        yield ResultObject("sc", secondary_capture(study.instance_paths[0]))
        yield ResultRecord('{"test": true}')


class FailingProcessor:
    def __init__(self, data_dir: Path) -> None:
        self.data_dir = Path(data_dir)

    def process(self, study: StudyInput) -> Iterator[ProcessorOutput]:
        _log_call(self.data_dir, study)
        raise RuntimeError("model exploded (test)")


def sc(config: NodeConfig) -> SecondaryCaptureProcessor:
    return SecondaryCaptureProcessor(config.storage.data_dir)


def sr_and_sc(config: NodeConfig) -> SecondaryCaptureProcessor:
    return SecondaryCaptureProcessor(config.storage.data_dir, with_sr=True)


def failing(config: NodeConfig) -> FailingProcessor:
    return FailingProcessor(config.storage.data_dir)


class PublishingProcessor:
    """Yields an SR as soon as it is made, then makes an SC; ``fail_after_publish`` raises after the SR was yielded,
    ``lose_job`` has the job re-queued (as a stale sweep would) before yielding."""

    def __init__(self, config: NodeConfig, fail_after_publish: bool = False, lose_job: bool = False) -> None:
        self.config = config
        self.fail_after_publish = fail_after_publish
        self.lose_job = lose_job

    def process(self, study: StudyInput) -> Iterator[ProcessorOutput]:
        _log_call(Path(self.config.storage.data_dir), study)
        sr = ResultObject("sr", text_sr(study.instance_paths[0]))
        if self.lose_job:  # another process takes the job from this worker meanwhile
            from sqlalchemy import update

            from dicomnode.db import Job, make_engine, make_session_factory

            engine = make_engine(self.config.database_url)
            try:
                with make_session_factory(engine).begin() as session:
                    session.execute(update(Job).where(Job.id == study.job_id)
                                    .values(state="QUEUED", claimed_by=None))
            finally:
                engine.dispose()
        yield sr
        if self.fail_after_publish:
            raise RuntimeError("page renderer exploded (test)")
        yield ResultObject("sc", secondary_capture(study.instance_paths[0]))
        yield ResultRecord('{"test": true}')


def publishing(config: NodeConfig) -> PublishingProcessor:
    return PublishingProcessor(config)


def publishing_then_failing(config: NodeConfig) -> PublishingProcessor:
    return PublishingProcessor(config, fail_after_publish=True)


def publishing_after_losing_the_job(config: NodeConfig) -> PublishingProcessor:
    return PublishingProcessor(config, lose_job=True)


class RecordProcessor:
    """Writes a full reasoning record (``dicomnode.demo.records.make_record``) whose findings are ``positive`` (the
    environment's ``CXR_TEST_POSITIVE``, comma-separated, else pneumothorax and cardiomegaly) and ``uncertain``
    (``CXR_TEST_UNCERTAIN``); every other checklist finding absent. With it one SC, a result object."""

    def __init__(self, data_dir: Path) -> None:
        self.data_dir = Path(data_dir)

    def process(self, study: StudyInput) -> Iterator[ProcessorOutput]:
        from dicomnode.demo.records import make_record

        _log_call(self.data_dir, study)
        positive = os.environ.get("CXR_TEST_POSITIVE", "pneumothorax,cardiomegaly").split(",")
        uncertain = [k for k in os.environ.get("CXR_TEST_UNCERTAIN", "").split(",") if k]
        sources = [dcmread(p, stop_before_pixels=True) for p in study.instance_paths]
        yield ResultObject("sc", secondary_capture(study.instance_paths[0]))
        yield ResultRecord(make_record(sources, positive=positive, uncertain=uncertain).to_json())


def reasoning_record(config: NodeConfig) -> RecordProcessor:
    return RecordProcessor(config.storage.data_dir)
