"""MPPS-triggered completion (issue 14, part 3): the node as MPPS SCP, pynetdicom as the modality, DCMTK
storescu sending the images.

Completion before the quiet period ends; instances arriving after the MPPS; a discontinued procedure; the standard
statuses for duplicate and unknown SOP Instance UIDs; ``mpps`` mode has no quiet timer.
"""
from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import pydicom
from ingest_support import NODE_AET, Db, make_config, running_node, store, wait_until
from pydicom import Dataset
from pydicom.uid import generate_uid
from pynetdicom import AE

from dicomnode.db.states import JobState
from dicomnode.demo.synthetic import StudySpec, write_study
from dicomnode.mpps import MPPS_SOP_CLASS
from dicomnode.node import Node

SMALL = {"rows": 64, "columns": 52}


@contextmanager
def modality(port: int) -> Iterator[object]:
    ae = AE(ae_title="MODALITY")
    ae.add_requested_context(MPPS_SOP_CLASS)
    assoc = ae.associate("127.0.0.1", port, ae_title=NODE_AET)
    assert assoc.is_established
    try:
        yield assoc
    finally:
        assoc.release()


def _create(assoc, uid: str, study_uid: str, status: str = "IN PROGRESS") -> int:  # type: ignore[no-untyped-def]
    ds = Dataset()
    step = Dataset()
    step.StudyInstanceUID, step.AccessionNumber = study_uid, "ACC1"
    ds.ScheduledStepAttributesSequence = [step]
    ds.PerformedProcedureStepID, ds.PerformedProcedureStepStatus, ds.Modality = "PPS1", status, "DX"
    ds.PerformedSeriesSequence = []
    result, _ = assoc.send_n_create(ds, MPPS_SOP_CLASS, uid)
    return int(result.Status)


def _set(assoc, uid: str, status: str, files: list[Path] = (), reason: str | None = None) -> int:  # type: ignore[no-untyped-def]
    ds = Dataset()
    ds.PerformedProcedureStepStatus = status
    series = Dataset()
    series.SeriesInstanceUID = generate_uid()
    series.ReferencedImageSequence = []
    for path in files:
        header = pydicom.dcmread(path, stop_before_pixels=True)
        item = Dataset()
        item.ReferencedSOPClassUID, item.ReferencedSOPInstanceUID = header.SOPClassUID, header.SOPInstanceUID
        series.ReferencedImageSequence.append(item)
    ds.PerformedSeriesSequence = [series]
    if reason:
        code = Dataset()
        code.CodeValue, code.CodingSchemeDesignator, code.CodeMeaning = "110514", "DCM", reason
        ds.PerformedProcedureStepDiscontinuationReasonCodeSequence = [code]
    result, _ = assoc.send_n_set(ds, MPPS_SOP_CLASS, uid)
    return int(result.Status)


def _state(db: Db, uid: str) -> str | None:
    return db.study_state(uid)


@dataclass(frozen=True)
class Procedure:
    """A running node, its database and one study's procedure step (``files``: its images, written, not sent)."""

    node: Node
    db: Db
    files: list[Path]
    uid: str
    mpps_uid: str


@contextmanager
def procedure(tmp_path: Path, study: dict[str, object], images: bool = True) -> Iterator[Procedure]:
    config = make_config(tmp_path / "data", study=study)
    files: list[Path] = []
    uid = generate_uid()
    if images:
        spec = StudySpec(views=("PA", "LATERAL"), **SMALL)
        files, uid = write_study(tmp_path / "in", spec), spec.study_instance_uid
    with running_node(config) as node:
        db = Db(config.database_url)
        try:
            yield Procedure(node, db, files, uid, generate_uid())
        finally:
            db.close()


def test_completed_mpps_queues_before_the_quiet_period(tmp_path: Path) -> None:
    with procedure(tmp_path, {"quiet_seconds": 120, "completion": "mpps_or_quiet"}) as p:
        with modality(p.node.port) as assoc:
            assert _create(assoc, p.mpps_uid, p.uid) == 0x0000
            assert store(p.files, p.node.port).statuses == [0, 0]
            started = time.monotonic()
            assert _set(assoc, p.mpps_uid, "COMPLETED", p.files) == 0x0000
        wait_until(lambda: _state(p.db, p.uid) == JobState.QUEUED.value, timeout=30, what="queued by MPPS")
        assert time.monotonic() - started < 30  # far inside the 120 s quiet period
        assert [j.generation for j in p.db.jobs(p.uid)] == [1]


def test_instances_arriving_after_the_mpps(tmp_path: Path) -> None:
    with procedure(tmp_path, {"quiet_seconds": 0.5, "completion": "mpps"}) as p:
        with modality(p.node.port) as assoc:
            assert _create(assoc, p.mpps_uid, p.uid) == 0x0000
            assert _set(assoc, p.mpps_uid, "COMPLETED", p.files) == 0x0000
        assert store(p.files[:1], p.node.port).statuses == [0]
        time.sleep(2.0)  # 4 quiet periods: in mpps mode there is no timer, and one listed image is missing
        assert _state(p.db, p.uid) == JobState.RECEIVING.value
        assert store(p.files[1:], p.node.port).statuses == [0]
        wait_until(lambda: _state(p.db, p.uid) == JobState.QUEUED.value, timeout=30, what="queued once complete")


def test_discontinued_without_images_skips_with_reason(tmp_path: Path) -> None:
    with procedure(tmp_path, {"completion": "mpps_or_quiet"}, images=False) as p:
        with modality(p.node.port) as assoc:
            assert _create(assoc, p.mpps_uid, p.uid) == 0x0000
            assert _set(assoc, p.mpps_uid, "DISCONTINUED", reason="Patient refused") == 0x0000
        wait_until(lambda: _state(p.db, p.uid) == JobState.SKIPPED.value, timeout=30, what="skipped")
        study = p.db.study(p.uid)
        assert "discontinued with no images" in study.state_reason and "Patient refused" in study.state_reason
        [job] = p.db.jobs(p.uid)
        assert job.state == JobState.SKIPPED.value and job.error == study.state_reason


def test_standard_statuses_for_duplicate_unknown_and_final_steps(tmp_path: Path) -> None:
    config = make_config(tmp_path / "data", study={"completion": "mpps_or_quiet"})
    uid, mpps_uid = generate_uid(), generate_uid()
    with running_node(config) as node, modality(node.port) as assoc:
        assert _create(assoc, mpps_uid, uid) == 0x0000
        assert _create(assoc, mpps_uid, uid) == 0x0111  # Duplicate SOP Instance
        assert _create(assoc, generate_uid(), uid, status="COMPLETED") == 0x0106  # must start IN PROGRESS
        assert _set(assoc, generate_uid(), "COMPLETED") == 0x0112  # No such object instance
        assert _set(assoc, mpps_uid, "FINISHED") == 0x0106  # not a Performed Procedure Step Status
        assert _set(assoc, mpps_uid, "IN PROGRESS") == 0x0000
        assert _set(assoc, mpps_uid, "DISCONTINUED") == 0x0000
        assert _set(assoc, mpps_uid, "COMPLETED") == 0x0110  # may no longer be updated


def test_quiet_mode_offers_no_mpps(tmp_path: Path) -> None:
    config = make_config(tmp_path / "data")
    assert config.study.completion == "quiet"
    with running_node(config) as node:
        ae = AE(ae_title="MODALITY")
        ae.add_requested_context(MPPS_SOP_CLASS)
        assoc = ae.associate("127.0.0.1", node.port, ae_title=NODE_AET)
        try:
            assert not assoc.is_established or not assoc.accepted_contexts
        finally:
            if assoc.is_established:
                assoc.release()
