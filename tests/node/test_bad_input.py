"""Bad and unusual inputs: each gets a clear DICOM status, a logged reason, and the node keeps serving."""
from __future__ import annotations

import os
import subprocess
import tracemalloc
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import pydicom
import pytest
from ingest_support import Db, dataset_payload, make_config, node_with_db, send_raw, store, wait_until
from pydicom.uid import JPEG2000Lossless, RLELossless
from sqlalchemy import select

from dicomnode import metrics
from dicomnode.db import AuditEvent, JobState
from dicomnode.demo.synthetic import StudySpec, make_study, write_study

SMALL = {"rows": 128, "columns": 104}


@pytest.fixture(scope="module")
def node_env(tmp_path_factory: pytest.TempPathFactory):  # type: ignore[no-untyped-def]
    base = tmp_path_factory.mktemp("bad_input")
    config = make_config(base / "data", study={"quiet_seconds": 1.0})
    with node_with_db(config) as env:
        yield env


def _one(tmp_path: Path, **spec: object) -> tuple[Path, StudySpec]:
    s = StudySpec(views=("PA",), **{**SMALL, **spec})  # type: ignore[arg-type]
    [path] = write_study(tmp_path / f"in{os.urandom(4).hex()}", s)
    return path, s


def _rejections(db: Db) -> list[AuditEvent]:
    with db.session_factory() as s:
        return list(s.scalars(select(AuditEvent).where(AuditEvent.kind == "instance.rejected")
                              .order_by(AuditEvent.id)))


def _assert_still_serving(node, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    path, _ = _one(tmp_path)
    assert store([path], node.port).statuses == [0]


def test_non_dicom_bytes(tmp_path: Path, node_env) -> None:
    node, db, config = node_env
    path, spec = _one(tmp_path)
    before = metrics.REGISTRY.get_sample_value("cxrnode_instances_rejected_total", {"reason": "0xC000"}) or 0.0
    # storescu refuses to send this, so pynetdicom sends the raw bytes
    assert send_raw(node.port, path, b"this is not DICOM at all " * 200, tmp_path) == 0xC000
    assert send_raw(node.port, path, os.urandom(4096), tmp_path) == 0xC000
    assert db.instances(spec.study_instance_uid) == []
    assert _rejections(db)[-1].detail["status"] == "0xC000"
    assert metrics.REGISTRY.get_sample_value("cxrnode_instances_rejected_total", {"reason": "0xC000"}) == before + 2
    assert not list((config.storage.data_dir / "spool" / ".tmp").iterdir())
    _assert_still_serving(node, tmp_path)


def test_truncated_file(tmp_path: Path, node_env) -> None:
    node, db, _config = node_env
    path, spec = _one(tmp_path)
    truncated = tmp_path / "truncated.dcm"
    data = path.read_bytes()
    truncated.write_bytes(data[: len(data) * 6 // 10])
    refused = store([truncated], node.port)  # storescu will not send a truncated file itself ...
    assert refused.statuses == [] and "premature end" in refused.output
    payload = dataset_payload(path)  # ... so send the cut dataset raw
    assert send_raw(node.port, path, payload[: len(payload) * 6 // 10], tmp_path) == 0xC000
    assert send_raw(node.port, path, payload[:-2], tmp_path) == 0xC000
    assert db.instances(spec.study_instance_uid) == []
    assert "truncated" in _rejections(db)[-1].detail["reason"]
    assert send_raw(node.port, path, payload, tmp_path) == 0  # the complete one is fine
    assert len(db.instances(spec.study_instance_uid)) == 1


def _stored_then_skipped(node: Any, db: Db, path: Path, study_uid: str) -> tuple[Any, str]:
    """Store the one instance ``path`` (accepted); its instance row, and the study's reason once it is SKIPPED."""
    assert store([path], node.port).statuses == [0]
    [row] = db.instances(study_uid)
    wait_until(lambda: db.study_state(study_uid) == JobState.SKIPPED.value, 60)
    return row, db.study(study_uid).state_reason


def test_dataset_without_pixel_data(tmp_path: Path, node_env) -> None:
    node, db, _config = node_env
    spec = StudySpec(views=("PA",), **SMALL)
    [ds] = make_study(spec)
    del ds.PixelData
    path = tmp_path / "nopixels.dcm"
    ds.save_as(path, enforce_file_format=True)
    row, reason = _stored_then_skipped(node, db, path, spec.study_instance_uid)
    assert not row.selected and row.skip_reason == "no pixel data"
    assert "no pixel data" in reason


def test_ct_instance(tmp_path: Path, node_env) -> None:
    node, db, _config = node_env
    path, spec = _one(tmp_path, modality="CT")
    row, reason = _stored_then_skipped(node, db, path, spec.study_instance_uid)
    assert not row.selected and row.sop_class_uid == "1.2.840.10008.5.1.4.1.1.2"
    assert "modality CT" in reason


def test_missing_study_instance_uid(tmp_path: Path, node_env) -> None:
    node, db, _config = node_env
    [ds] = make_study(StudySpec(views=("PA",), **SMALL))
    del ds.StudyInstanceUID
    path = tmp_path / "nostudy.dcm"
    ds.save_as(path, enforce_file_format=True)
    assert store([path], node.port).statuses == [0xC001]
    rejection = _rejections(db)[-1]
    assert rejection.sop_instance_uid == ds.SOPInstanceUID and "StudyInstanceUID" in rejection.detail["reason"]
    assert [r for r in db.instances() if r.sop_instance_uid == ds.SOPInstanceUID] == []


@pytest.mark.parametrize(
    ("attribute", "value"),
    [("StudyInstanceUID", "../../../../tmp/escape"), ("SeriesInstanceUID", "1.2.3/../../.."),
     ("SOPInstanceUID", "1.2.3/../../../evil"), ("StudyInstanceUID", "1.2." + "3" * 70)],
)
def test_malicious_uid_never_becomes_a_path(tmp_path: Path, node_env, attribute: str, value: str) -> None:
    node, db, config = node_env
    [ds] = make_study(StudySpec(views=("PA",), **SMALL))
    path = tmp_path / "evil.dcm"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # pydicom warns about the invalid UI value; we want it written anyway
        setattr(ds, attribute, value)
        if attribute == "SOPInstanceUID":
            ds.file_meta.MediaStorageSOPInstanceUID = value
        ds.save_as(path, enforce_file_format=True)
    before = sorted(p for p in config.storage.data_dir.parent.rglob("*") if "spool" not in p.parts)
    run = store([path], node.port)
    assert run.statuses == [0xC002], run.output
    after = sorted(p for p in config.storage.data_dir.parent.rglob("*") if "spool" not in p.parts)
    assert [p for p in after if p not in before and p.suffix == ".dcm"] == []
    spool = config.storage.data_dir / "spool"
    assert all(p.resolve().is_relative_to(spool.resolve()) for p in spool.rglob("*"))
    assert not Path("/tmp/escape").exists()
    assert "invalid UID" in _rejections(db)[-1].detail["reason"]
    _assert_still_serving(node, tmp_path)


def test_non_ascii_patient_name(tmp_path: Path, node_env) -> None:
    node, db, config = node_env
    path, spec = _one(tmp_path, patient_name="Müller-Łukasz^Zoë=山田^太郎", patient_id="ÄÖÜ-123",
                      character_set="ISO_IR 192")
    assert store([path], node.port).statuses == [0]
    [row] = db.instances(spec.study_instance_uid)
    stored = pydicom.dcmread(config.storage.data_dir / row.path)
    assert stored.SpecificCharacterSet == "ISO_IR 192"
    assert str(stored.PatientName) == "Müller-Łukasz^Zoë=山田^太郎"
    assert db.study(spec.study_instance_uid).patient_id == "ÄÖÜ-123"


def _dcmtk(tool: str, *args: str | Path) -> None:
    result = subprocess.run([tool, *map(str, args)], capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr


def _compressed(kind: str, source: Path, out: Path) -> None:
    if kind == "jpeg-lossless":
        _dcmtk("dcmcjpeg", "+e1", source, out)
    elif kind == "jpeg-ls":
        _dcmtk("dcmcjpls", "--encode-lossless", source, out)
    elif kind == "rle-dcmtk":
        _dcmtk("dcmcrle", source, out)
    elif kind == "deflated":
        _dcmtk("dcmconv", "+td", source, out)
    else:
        ds = pydicom.dcmread(source)
        ds.compress({"jpeg2000": JPEG2000Lossless, "rle-pydicom": RLELossless}[kind])
        ds.save_as(out, enforce_file_format=True)


@pytest.mark.parametrize(
    ("kind", "modality", "syntax"),
    [("jpeg-lossless", "DX", "1.2.840.10008.1.2.4.70"), ("jpeg2000", "DX", "1.2.840.10008.1.2.4.90"),
     ("rle-dcmtk", "CR", "1.2.840.10008.1.2.5"), ("rle-pydicom", "DX", "1.2.840.10008.1.2.5"),
     ("jpeg-ls", "CR", "1.2.840.10008.1.2.4.80"), ("deflated", "DX", "1.2.840.10008.1.2.1.99")],
)
def test_compressed_instances_are_stored_as_sent(tmp_path: Path, node_env, kind: str, modality: str,
                                                 syntax: str) -> None:
    node, db, config = node_env
    source, spec = _one(tmp_path, modality=modality)
    out = tmp_path / f"{kind}.dcm"
    _compressed(kind, source, out)
    assert pydicom.dcmread(out, stop_before_pixels=True).file_meta.TransferSyntaxUID == syntax
    # storescu proposes a compressed syntax only when told (-xs/-xv/-xr/-xt/-xd); -R: only the needed SOP classes
    flag = {"1.2.840.10008.1.2.4.70": "-xs", "1.2.840.10008.1.2.4.90": "-xv", "1.2.840.10008.1.2.5": "-xr",
            "1.2.840.10008.1.2.4.80": "-xt", "1.2.840.10008.1.2.1.99": "-xd"}[syntax]
    run = store([out], node.port, extra=["-R", flag])
    assert run.statuses == [0], run.output
    [row] = db.instances(spec.study_instance_uid)
    assert row.selected and row.transfer_syntax_uid == syntax and row.modality == modality
    stored = pydicom.dcmread(config.storage.data_dir / row.path)
    assert stored.file_meta.TransferSyntaxUID == syntax
    original = pydicom.dcmread(source).pixel_array
    assert np.array_equal(stored.pixel_array, original)  # lossless and decodable (pylibjpeg plugins)


@pytest.mark.slow
def test_sixty_megabyte_instance_is_streamed_to_disk(tmp_path: Path, node_env) -> None:
    node, db, config = node_env
    spec = StudySpec(views=("PA",), rows=5600, columns=5400, bits_stored=16)  # 60.5 MB of pixels
    [path] = write_study(tmp_path / "big", spec)
    assert path.stat().st_size > 60_000_000
    tracemalloc.start()
    try:
        run = store([path], node.port, timeout=600)
        _current, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert run.statuses == [0], run.output
    [row] = db.instances(spec.study_instance_uid)
    assert row.size_bytes >= path.stat().st_size - 1024
    stored = config.storage.data_dir / row.path
    assert pydicom.dcmread(stored).PixelData == pydicom.dcmread(path).PixelData
    # received in chunks straight to a file: never held whole in memory by the node
    assert peak < 20_000_000, f"peak Python allocation while receiving: {peak / 1e6:.1f} MB"
