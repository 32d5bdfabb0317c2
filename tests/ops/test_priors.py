"""Prior-study lookup and retrieval against a real Orthanc (C-FIND, C-GET, C-MOVE SCP)."""
from __future__ import annotations

import logging
import subprocess
from pathlib import Path
from types import SimpleNamespace

import pydicom
import pynetdicom
import pytest

from dicomnode.config import PriorsConfig
from dicomnode.demo.synthetic import StudySpec, prior_spec, write_study
from dicomnode.peers.dcmtk import storescu
from dicomnode.peers.orthanc import OrthancServer
from dicomnode.peers.ports import free_port
from dicomnode.priors import fetch_prior, find_prior_study, lookup_prior, retrieve, retrieve_study

NODE_AET = "CXRNODE"
NOGET_AET = "CXRNOGET"  # may query, may not C-GET
MOVE_AET = "CXRNODE_QR"  # the C-MOVE destination the node opens while it retrieves
PATIENT = "PRIORS001"


def _modality(aet: str, port: int) -> dict[str, object]:
    return {"AET": aet, "Host": "127.0.0.1", "Port": port,
            "AllowEcho": True, "AllowFind": True, "AllowGet": True, "AllowMove": True, "AllowStore": True}


@pytest.fixture(scope="module")
def pacs(tmp_path_factory: pytest.TempPathFactory):
    """Orthanc holding, for one patient: an older DX study, the most recent earlier CR study (plus an SR-like
    CT series in it that must not be retrieved), a CT-only study, a later DX study, and the current study."""
    work = tmp_path_factory.mktemp("priors")
    move_port = free_port()
    no_get = {**_modality(NOGET_AET, free_port()), "AllowGet": False}
    server = OrthancServer(work / "orthanc", extra_config={"DicomModalities": {
        NODE_AET: _modality(NODE_AET, free_port()),  # the node's listener (nothing runs there in this test)
        MOVE_AET: _modality(MOVE_AET, move_port), NOGET_AET: no_get}})
    current = StudySpec(patient_id=PATIENT, study_date="20260301", rows=128, columns=104)
    recent = prior_spec(current, days_before=30)
    recent.modality = "CR"
    recent.views = ("PA", "LATERAL")
    older = prior_spec(current, days_before=400)
    ct_only = StudySpec(patient_id=PATIENT, study_date="20260220", modality="CT", views=("AXIAL",), rows=64, columns=64)
    later = StudySpec(patient_id=PATIENT, study_date="20260401", rows=64, columns=64)
    other_patient = StudySpec(patient_id="SOMEONEELSE", study_date="20260228", rows=64, columns=64)
    files: list[Path] = []
    for i, spec in enumerate((current, recent, older, ct_only, later, other_patient)):
        files += write_study(work / f"in{i}", spec)
    # the older prior is stored JPEG Lossless in the PACS: retrieval must accept compressed transfer syntaxes
    (older_file,) = [f for f in files if pydicom.dcmread(f, stop_before_pixels=True).StudyInstanceUID
                     == older.study_instance_uid]
    compressed = work / "older-jpeg-lossless.dcm"
    subprocess.run(["dcmcjpeg", "+e1", str(older_file), str(compressed)], check=True, capture_output=True)
    files.remove(older_file)
    # a CT series inside the recent study: must not be retrieved as part of the prior
    files += write_study(work / "in_mixed", StudySpec(patient_id=PATIENT, study_instance_uid=recent.study_instance_uid,
                                                      study_date=recent.study_date, modality="CT", views=("AXIAL",),
                                                      rows=64, columns=64))
    with server:
        result = storescu(files, server.aet, "127.0.0.1", server.dicom_port)
        assert result.returncode == 0, result.stderr
        result = storescu([compressed], server.aet, "127.0.0.1", server.dicom_port, extra_args=["--propose-lossless"])
        assert result.returncode == 0, result.stderr
        server.wait_for_instances(len(files) + 1, timeout=120)
        yield SimpleNamespace(server=server, current=current, recent=recent, older=older, move_port=move_port,
                              n_recent_cr=len(recent.views))


def _config(pacs, **extra: object) -> PriorsConfig:
    settings: dict[str, object] = dict(enabled=True, query_aet=pacs.server.aet, host="127.0.0.1",
                                       port=pacs.server.dicom_port, calling_aet=NODE_AET, timeout_seconds=30)
    return PriorsConfig(**{**settings, **extra})


def test_finds_most_recent_earlier_cr_dx_study(pacs) -> None:
    cur = pacs.current
    prior = find_prior_study(_config(pacs), PATIENT, cur.study_instance_uid, cur.study_date)
    assert prior is not None
    assert prior.study_instance_uid == pacs.recent.study_instance_uid
    assert prior.study_date == pacs.recent.study_date
    assert "CR" in prior.modalities


def test_prior_of_the_older_study_is_the_oldest(pacs) -> None:
    # from the recent study's point of view the only earlier CR/DX study is the 400-day-old one
    rec = pacs.recent
    prior = find_prior_study(_config(pacs), PATIENT, rec.study_instance_uid, rec.study_date)
    assert prior is not None and prior.study_instance_uid == pacs.older.study_instance_uid


def test_no_prior(pacs, caplog: pytest.LogCaptureFixture) -> None:
    old = pacs.older
    caplog.set_level(logging.INFO, logger="dicomnode.priors")
    assert find_prior_study(_config(pacs), PATIENT, old.study_instance_uid, old.study_date) is None
    assert find_prior_study(_config(pacs), "NOBODY", "1.2.3", "20300101") is None
    assert "no earlier CR/DX study" in caplog.text
    assert PATIENT not in caplog.text and "NOBODY" not in caplog.text


@pytest.mark.parametrize("chunked", [False, True], ids=["in-memory", "chunked"])
@pytest.mark.parametrize("mode", ["get", "move"])
def test_retrieve_prior_cr_series_only(pacs, tmp_path: Path, mode: str, chunked: bool,
                                       monkeypatch: pytest.MonkeyPatch) -> None:
    # The node's listener switches pynetdicom to chunked receive for the whole process; priors must still land.
    monkeypatch.setattr(pynetdicom._config, "STORE_RECV_CHUNKED_DATASET", chunked)
    extra = {"retrieve": mode, "move_aet": MOVE_AET, "move_port": pacs.move_port} if mode == "move" else {}
    files = retrieve_study(_config(pacs, **extra), pacs.recent.study_instance_uid, tmp_path / "prior")
    assert len(files) == pacs.n_recent_cr
    for path in files:
        ds = pydicom.dcmread(path)
        assert path.name == f"{ds.SOPInstanceUID}.dcm"
        assert ds.StudyInstanceUID == pacs.recent.study_instance_uid
        assert ds.Modality == "CR"
        assert ds.pixel_array.shape == (pacs.recent.rows, pacs.recent.columns)
    assert not [p for p in (tmp_path / "prior").iterdir() if p.name.startswith(".recv-")]


def test_retrieve_keeps_compressed_transfer_syntax(pacs, tmp_path: Path) -> None:
    (path,) = retrieve_study(_config(pacs), pacs.older.study_instance_uid, tmp_path / "older")
    ds = pydicom.dcmread(path)
    assert ds.file_meta.TransferSyntaxUID == "1.2.840.10008.1.2.4.70"  # JPEG Lossless SV1, as stored
    assert ds.pixel_array.shape == (pacs.older.rows, pacs.older.columns)


def test_pacs_down(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="dicomnode.priors")
    config = PriorsConfig(enabled=True, query_aet="ORTHANC", host="127.0.0.1", port=free_port(),
                          calling_aet=NODE_AET, timeout_seconds=10)
    result = lookup_prior(config, PATIENT, "1.2.3.4", "20260301")
    assert result.prior is None and "unreachable" in result.reason
    assert find_prior_study(config, PATIENT, "1.2.3.4", "20260301") is None
    assert "unreachable" in caplog.text
    assert retrieve_study(config, "1.2.3.4", tmp_path / "x") == []
    assert "not retrieved" in caplog.text


def test_pacs_refuses_unknown_calling_ae(pacs, tmp_path: Path) -> None:
    config = _config(pacs, calling_aet="STRANGER")  # not in Orthanc's DicomModalities: C-FIND / C-GET are refused
    result = lookup_prior(config, PATIENT, pacs.current.study_instance_uid, pacs.current.study_date)
    assert result.prior is None and "refused" in result.reason
    fetched = retrieve(config, pacs.recent.study_instance_uid, tmp_path / "y")
    assert fetched.files == [] and "refused" in fetched.reason


def test_misconfigured_is_a_reason_not_an_exception(tmp_path: Path) -> None:
    result = lookup_prior(PriorsConfig(), PATIENT, "1.2", "")  # a disabled, empty section used directly
    assert result.prior is None and "not configured" in result.reason
    config = PriorsConfig(query_aet="X", host="127.0.0.1", port=104, retrieve="move", move_port=None)
    assert "move_port" in retrieve(config, "1.2.3", tmp_path).reason


def test_fetch_prior(pacs, tmp_path: Path) -> None:
    cur = pacs.current
    got = fetch_prior(_config(pacs), PATIENT, cur.study_instance_uid, cur.study_date, tmp_path / "a")
    assert got.prior is not None and got.prior.study_instance_uid == pacs.recent.study_instance_uid
    assert len(got.files) == pacs.n_recent_cr and "retrieved 2 instance(s) with C-GET" in got.reason

    disabled = _config(pacs, enabled=False)
    assert fetch_prior(disabled, PATIENT, cur.study_instance_uid, cur.study_date, tmp_path / "b").files == []

    # found, but the PACS refuses the C-GET: no usable prior, the reason says so, nothing is left behind
    no_get = _config(pacs, calling_aet=NOGET_AET)
    refused = fetch_prior(no_get, PATIENT, cur.study_instance_uid, cur.study_date, tmp_path / "c")
    assert refused.prior is not None and refused.files == []
    assert refused.reason.startswith("not retrieved: ")
    assert not list((tmp_path / "c").glob("*.dcm"))


def test_earlier_means_strictly_before_the_current_study() -> None:
    from dicomnode.priors import _is_earlier

    assert _is_earlier("20260101", "", "20260301", None)
    assert not _is_earlier("20260401", "", "20260301", None)
    assert _is_earlier("20260301", "080000", "20260301", "101500.123")  # same day, earlier time
    assert not _is_earlier("20260301", "120000", "20260301", "101500")
    assert not _is_earlier("20260301", "", "20260301", "101500")  # same day, time unknown: not known earlier
    assert not _is_earlier("", "", "20260301", None)
