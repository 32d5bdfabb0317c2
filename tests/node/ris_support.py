"""Helpers for the HL7 / FHIR destination tests: a processor that makes a real result set without a model (a demo
reasoning record of the study's images, its SR and reasoning pages made by sr_writer with the node's output options,
so the triage marks are there), a config with message destinations, and a loop that delivers until the job
settles."""
from __future__ import annotations

import dataclasses
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import pydicom
from delivery_support import delivery_config, ingest_files, job
from sqlalchemy.orm import Session, sessionmaker

from dicomnode.config import NodeConfig
from dicomnode.db.states import JobState
from dicomnode.delivery import Deliverer
from dicomnode.demo.records import make_record
from dicomnode.processing import ProcessorOutput, ResultRecord, StudyInput
from dicomnode.reasoning import output_options
from dicomnode.worker import Worker
from inference.triage import DEFAULT_RULES
from sr_writer import make_result_objects

FAST_RETRY = {"max_attempts": 3, "initial_seconds": 0.05, "max_seconds": 0.1}
TRIAGE = {"rules": [{"finding": r.finding, "priority": r.priority.value, "when": r.when.value}
                    for r in DEFAULT_RULES]}


class ReasonedProcessor:
    """Each study: the record ``make_record`` writes for its images (``positive`` / ``uncertain`` findings,
    ``findings_text`` and ``impression_text`` as the stage-8 report, ``thresholds`` as operating points), then its SR
    and pages, yielded as the reasoning processor does."""

    def __init__(self, config: NodeConfig, positive: Sequence[str] = ("pneumothorax",),
                 uncertain: Sequence[str] = (), findings_text: str | None = None,
                 impression_text: str | None = None, thresholds: dict[str, float] | None = None) -> None:
        self.options = dataclasses.replace(output_options(config), validate=False)
        self.positive, self.uncertain, self.findings_text = positive, uncertain, findings_text
        self.impression_text, self.thresholds = impression_text, thresholds

    def process(self, study: StudyInput) -> Iterator[ProcessorOutput]:
        datasets = [pydicom.dcmread(path) for path in study.instance_paths]
        record = make_record(datasets, positive=self.positive, uncertain=self.uncertain, thresholds=self.thresholds)
        if self.findings_text is not None:
            record.report.findings = self.findings_text
        if self.impression_text is not None:
            record.report.impression = self.impression_text
        yield from make_result_objects(record, datasets, options=self.options)
        yield ResultRecord(record.to_json())


def hl7_destination(port: int, name: str = "ris", **keys: Any) -> dict[str, Any]:
    return {"name": name, "type": "hl7", "host": "127.0.0.1", "port": port, "timeout_seconds": 5,
            "sending_facility": "CXR", "receiving_application": "RIS", "receiving_facility": "HOSP",
            "retry": FAST_RETRY, **keys}


def fhir_destination(url: str, name: str = "fhir", **keys: Any) -> dict[str, Any]:
    return {"name": name, "type": "fhir", "url": url, "timeout_seconds": 10, "retry": FAST_RETRY, **keys}


def ris_config(data_dir: Path, database_url: str, destinations: Sequence[dict[str, Any]],
               triage: dict[str, Any] | None = None) -> NodeConfig:
    return delivery_config(data_dir, database_url, destinations, processor="passthrough",
                           triage=TRIAGE if triage is None else triage)


def process(config: NodeConfig, session_factory: sessionmaker[Session], files: Sequence[Path],
            **processor: Any) -> int:
    """Ingest ``files`` as a study, run the job with a :class:`ReasonedProcessor`; the job id."""
    job_id = ingest_files(config, session_factory, files)
    worker = Worker(config, session_factory, ReasonedProcessor(config, **processor), worker_id="w")
    while worker.run_once():
        pass
    return job_id


def deliver_until_settled(deliverer: Deliverer, session_factory: sessionmaker[Session], job_id: int,
                          seconds: float = 60.0) -> None:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        deliverer.run_once()
        if job(session_factory, job_id).state != JobState.RESULTS_READY.value:
            return
        time.sleep(min(max(deliverer.next_due_in() or 0.0, 0.01), 0.2))
    raise AssertionError("the job never settled")
