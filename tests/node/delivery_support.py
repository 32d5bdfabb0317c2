"""Helpers for worker/delivery/retention/fault tests: configs with destinations and studies put straight into
the node's spool and database through the ingest code (no listener), then completed (QUEUED)."""
from __future__ import annotations

import datetime as dt
import shutil
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, TypeVar

import ingest_support
import pydicom
from ingest_support import config_dict
from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from dicomnode.completion import complete_study
from dicomnode.config import NodeConfig, config_from_dict
from dicomnode.db.ingest import InstanceRecord, record_instance
from dicomnode.db.models import Delivery, Job, Study, utcnow
from dicomnode.peers.orthanc import OrthancServer
from dicomnode.spool import Spool

T = TypeVar("T")
HERE = Path(__file__).resolve().parent
PROCESSORS = "cxr_test_processors"  # tests/node is on pytest's pythonpath


def destination(name: str, ae: str, port: int, objects: Sequence[str] = ("sr", "sc"), max_attempts: int = 3,
                initial_seconds: float = 0.2, max_seconds: float = 1.0, host: str = "127.0.0.1") -> dict[str, Any]:
    return {"name": name, "ae_title": ae, "host": host, "port": port, "objects": list(objects),
            "retry": {"max_attempts": max_attempts, "initial_seconds": initial_seconds, "max_seconds": max_seconds}}


def orthanc_destination(orthanc: OrthancServer, name: str = "pacs", **kwargs: Any) -> dict[str, Any]:
    return destination(name, orthanc.aet, orthanc.dicom_port, **kwargs)


def delivery_config(data_dir: Path, database_url: str, destinations: Sequence[dict[str, Any]] = (),
                    processor: str = f"{PROCESSORS}:sc", plugins: Sequence[str] = (),
                    **sections: dict[str, Any]) -> NodeConfig:
    """``ingest_support.config_dict``'s loopback node (port 0: not listening) with destinations, a processor and
    ``plugins`` (modules that register destination types)."""
    data = config_dict(data_dir, database_url, node={"port": 0}, storage={"retention_days": 7},
                       destinations=list(destinations), processing={"processor": processor})
    if plugins:
        data["plugins"] = list(plugins)
    for section, values in sections.items():
        data.setdefault(section, {}).update(values)
    return config_from_dict(data, environ={})


def ingest_files(config: NodeConfig, session_factory: sessionmaker[Session], files: Sequence[Path],
                 queue: bool = True, at: dt.datetime | None = None) -> int:
    """Store ``files`` in the spool and database as the listener would, then (``queue``) complete the study.

    Returns the id of the study's newest job."""
    spool = Spool(config.storage.data_dir, fsync=False)
    spool.prepare()
    now = at or utcnow()
    outcome = None
    for path in files:
        ds = pydicom.dcmread(path, stop_before_pixels=True)
        relative = spool.relative_path(ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.SOPInstanceUID)
        staged = spool.new_temp_path()
        shutil.copyfile(path, staged)
        size = spool.store_file(staged, relative)
        record = InstanceRecord(
            study_uid=ds.StudyInstanceUID, series_uid=ds.SeriesInstanceUID, sop_uid=ds.SOPInstanceUID,
            sop_class_uid=ds.SOPClassUID, transfer_syntax_uid=str(ds.file_meta.TransferSyntaxUID),
            modality=ds.Modality, body_part=ds.get("BodyPartExamined"), view_position=ds.get("ViewPosition"),
            patient_id=None, accession_number=ds.get("AccessionNumber"), path=relative, size_bytes=size,
            skip_reason=None, calling_aet="TESTSCU",
        )
        with session_factory.begin() as session:
            outcome = record_instance(session, record, now)
    assert outcome is not None
    if queue:
        with session_factory.begin() as session:
            complete_study(session, outcome.study_id, config.study.quiet_seconds,
                           now + dt.timedelta(seconds=config.study.quiet_seconds + 1))
    return outcome.job_id


def job(session_factory: sessionmaker[Session], job_id: int) -> Job:
    with session_factory() as session:
        row = session.get(Job, job_id)
        assert row is not None
        return row


def study_state(session_factory: sessionmaker[Session], study_uid: str) -> str | None:
    with session_factory() as session:
        return session.scalar(select(Study.state).where(Study.study_instance_uid == study_uid))


def deliveries(session_factory: sessionmaker[Session], job_id: int | None = None) -> list[Delivery]:
    with session_factory() as session:
        stmt = select(Delivery).order_by(Delivery.id)
        if job_id is not None:
            stmt = stmt.where(Delivery.job_id == job_id)
        return list(session.scalars(stmt))


def wait_until(predicate: Callable[[], T], timeout: float = 90.0, interval: float = 0.2, what: str = "") -> T:
    """:func:`ingest_support.wait_until` with the longer defaults of processing and delivery."""
    return ingest_support.wait_until(predicate, timeout, interval, what)
