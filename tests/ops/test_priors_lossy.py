"""Priors stored JPEG 2000 lossy on PACS that cannot transcode: DCMTK ``dcmqrscp`` and PyPI ``tiny-pacs``.

``dcmqrscp`` keeps what it received (``+xw``: accepts JPEG 2000 lossy) and, asked for it, sends it only as stored:
on C-MOVE it proposes JPEG 2000 then the uncompressed syntaxes in one context (``-xw``) and uses the first context
accepted for the SOP class; on C-GET it sends over the first context accepted for the SOP class, whatever its
syntax. The node must accept the proposed syntax (C-MOVE) and offer one that the PACS can send (C-GET).
"""
from __future__ import annotations

import shutil
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pydicom
import pytest
from pydicom.uid import JPEG2000, ExplicitVRLittleEndian

from dicomnode.config import PriorsConfig
from dicomnode.demo.synthetic import StudySpec, prior_spec, write_study
from dicomnode.peers.dcmtk import storescu
from dicomnode.peers.ports import free_port
from dicomnode.priors import PriorFetch, fetch_prior, retrieve
from tests.dcmqrscp_server import DcmQRSCP
from tests.tiny_pacs_server import TinyPacs

PATIENT = "LOSSY001"
NODE_AET = "CXRNODE"
MOVE_AET = "CXRNODE_QR"
ELSEWHERE_AET = "CXRNODE_QR2"  # the same port on 127.0.0.2: reachable only when the receiver binds every interface

pytestmark = pytest.mark.skipif(shutil.which("dcmqrscp") is None or shutil.which("storescu") is None,
                                reason="DCMTK (Debian 'dcmtk') not installed")


def _lossy(paths: list[Path], out: Path) -> list[Path]:
    """The files compressed JPEG 2000 lossy (ratio 20, as a modality or archive set to lossy would)."""
    out.mkdir(parents=True, exist_ok=True)
    written = []
    for path in paths:
        ds = pydicom.dcmread(path)
        ds.compress(JPEG2000, j2k_cr=[20], generate_instance_uid=False)
        ds.LossyImageCompression = "01"
        ds.LossyImageCompressionRatio = 20
        ds.LossyImageCompressionMethod = "ISO_15444_1"
        ds.save_as(out / path.name, enforce_file_format=True)
        written.append(out / path.name)
    return written


def _store(files: list[Path], aet: str, port: int, *options: str) -> None:
    result = storescu(files, aet, "127.0.0.1", port, extra_args=list(options))
    assert result.returncode == 0, result.stdout + result.stderr


@pytest.fixture(scope="module")
def studies(tmp_path_factory: pytest.TempPathFactory) -> SimpleNamespace:
    """The current study; a prior of two DX views (one series each) stored JPEG 2000 lossy; an older prior with
    its PA lossy and its lateral uncompressed (two syntaxes in one study)."""
    work = tmp_path_factory.mktemp("lossy-priors")
    current = StudySpec(patient_id=PATIENT, study_date="20260301", rows=96, columns=80)
    lossy, mixed = prior_spec(current, days_before=30), prior_spec(current, days_before=200)
    for spec in (current, lossy, mixed):
        spec.rows, spec.columns, spec.views = 96, 80, ("PA", "LATERAL")
    plain = write_study(work / "lossy-plain", lossy)
    mixed_plain = write_study(work / "mixed-plain", mixed)
    return SimpleNamespace(work=work, current=current, lossy=lossy, mixed=mixed, originals=plain,
                           lossy_files=_lossy(plain, work / "lossy-j2k"),
                           mixed_lossy=_lossy(mixed_plain[:1], work / "mixed-j2k"), mixed_plain=mixed_plain[1:])


@pytest.fixture(scope="module")
def dcmqrscp(studies: SimpleNamespace):
    move_port = free_port()
    destinations = {MOVE_AET: ("127.0.0.1", move_port), ELSEWHERE_AET: ("127.0.0.2", move_port)}
    with DcmQRSCP(studies.work / "dcmqrscp", aet="DCMQR", move_destinations=destinations,
                  transfer_options=["+xw", "-xw"]) as pacs:
        _store(studies.lossy_files + studies.mixed_lossy, pacs.aet, pacs.port, "-xw")
        _store(studies.mixed_plain, pacs.aet, pacs.port)
        held = {pydicom.dcmread(p, stop_before_pixels=True).file_meta.TransferSyntaxUID for p in pacs.archived()}
        assert held == {JPEG2000, ExplicitVRLittleEndian}  # it keeps the lossy files lossy
        yield SimpleNamespace(pacs=pacs, move_port=move_port)


def _config(aet: str, port: int, mode: str, move_port: int | None = None, move_aet: str = MOVE_AET) -> PriorsConfig:
    extra = {"retrieve": "move", "move_aet": move_aet, "move_port": move_port} if mode == "move" else {}
    return PriorsConfig(enabled=True, query_aet=aet, host="127.0.0.1", port=port, calling_aet=NODE_AET,
                        timeout_seconds=30, **extra)


def _check_lossy_prior(files: list[Path], studies: SimpleNamespace) -> None:
    """Both views, as the PACS stored them (JPEG 2000, lossy), decodable, and close to the original pixels."""
    assert len(files) == 2
    originals = {p.stem: pydicom.dcmread(p).pixel_array.astype(float) for p in studies.originals}
    for path in files:
        ds = pydicom.dcmread(path)
        assert ds.StudyInstanceUID == studies.lossy.study_instance_uid
        assert ds.file_meta.TransferSyntaxUID == JPEG2000
        assert ds.LossyImageCompression == "01"
        pixels = ds.pixel_array.astype(float)
        assert pixels.shape == (studies.lossy.rows, studies.lossy.columns)
        error = np.abs(pixels - originals[ds.SOPInstanceUID]).mean() / originals[ds.SOPInstanceUID].mean()
        assert 0 < error < 0.05  # lossy, but the same image


def _fetch_lossy_prior(config: PriorsConfig, studies: SimpleNamespace, tmp_path: Path) -> PriorFetch:
    """The prior of the current study fetched with ``config``: the lossy study, checked by ``_check_lossy_prior``."""
    cur = studies.current
    got = fetch_prior(config, PATIENT, cur.study_instance_uid, cur.study_date, tmp_path / "prior",
                      listen_host="127.0.0.1")
    assert got.prior is not None and got.prior.study_instance_uid == studies.lossy.study_instance_uid, got.reason
    _check_lossy_prior(got.files, studies)
    return got


@pytest.mark.parametrize("mode", ["get", "move"])
def test_dcmqrscp_lossy_prior(dcmqrscp, studies, tmp_path: Path, mode: str) -> None:
    config = _config(dcmqrscp.pacs.aet, dcmqrscp.pacs.port, mode, dcmqrscp.move_port)
    got = _fetch_lossy_prior(config, studies, tmp_path)
    assert f"retrieved 2 instance(s) with C-{mode.upper()}" in got.reason


@pytest.mark.parametrize("mode", ["get", "move"])
def test_dcmqrscp_study_in_two_syntaxes(dcmqrscp, studies, tmp_path: Path, mode: str) -> None:
    # dcmqrscp sends every instance of a SOP class in one syntax per association: the node asks again for the rest
    config = _config(dcmqrscp.pacs.aet, dcmqrscp.pacs.port, mode, dcmqrscp.move_port)
    got = retrieve(config, studies.mixed.study_instance_uid, tmp_path / "mixed", listen_host="127.0.0.1")
    assert len(got.files) == 2, got.reason
    syntaxes = sorted(str(pydicom.dcmread(p, stop_before_pixels=True).file_meta.TransferSyntaxUID) for p in got.files)
    assert syntaxes == sorted([ExplicitVRLittleEndian, JPEG2000])
    for path in got.files:
        assert pydicom.dcmread(path).pixel_array.shape == (studies.mixed.rows, studies.mixed.columns)


def test_move_receiver_listens_on_the_node_host_only(dcmqrscp, studies, tmp_path: Path) -> None:
    # the PACS sends ELSEWHERE_AET's sub-operations to 127.0.0.2: a receiver bound to 127.0.0.1 is not there
    uid = studies.lossy.study_instance_uid
    elsewhere = _config(dcmqrscp.pacs.aet, dcmqrscp.pacs.port, "move", dcmqrscp.move_port, move_aet=ELSEWHERE_AET)
    bound = retrieve(elsewhere, uid, tmp_path / "bound", listen_host="127.0.0.1")
    assert bound.files == [] and "C-MOVE failed with status 0xA702" in bound.reason
    assert len(retrieve(elsewhere, uid, tmp_path / "every", listen_host="").files) == 2


def test_pacs_that_cannot_send_the_stored_syntax(studies, tmp_path: Path) -> None:
    """A dcmqrscp that proposes only uncompressed syntaxes on C-MOVE cannot send a JPEG 2000 file: the reason says
    what failed and what the node tried."""
    move_port = free_port()
    with DcmQRSCP(tmp_path / "plain-out", aet="DCMQRPLAIN", move_destinations={MOVE_AET: ("127.0.0.1", move_port)},
                  transfer_options=["+xw"]) as pacs:
        _store(studies.lossy_files, pacs.aet, pacs.port, "-xw")
        got = retrieve(_config(pacs.aet, pacs.port, "move", move_port), studies.lossy.study_instance_uid,
                       tmp_path / "none", listen_host="127.0.0.1")
    assert got.files == []
    assert got.reason == (
        "not retrieved: C-MOVE failed with status 0xA702 (Refused: Out of resources, unable to perform "
        "sub-operations): the PACS did not send 2 of 2 instance(s) in a transfer syntax the node accepts "
        "(accepting the PACS's proposed syntax, then uncompressed first); it may hold them in another syntax and "
        "be unable to convert")


@pytest.fixture(scope="module")
def tiny_pacs(studies: SimpleNamespace):
    """tiny-pacs holding the lossy prior as one series: its C-FIND repeats the last match instead of listing every
    series (pynetdicom2 reuses one response message), so a prior of two series would show as one."""
    one_series = studies.work / "tiny-one-series"
    one_series.mkdir()
    series_uid = pydicom.dcmread(studies.lossy_files[0], stop_before_pixels=True).SeriesInstanceUID
    files = []
    for path in studies.lossy_files:
        ds = pydicom.dcmread(path)
        ds.SeriesInstanceUID = series_uid
        ds.save_as(one_series / path.name, enforce_file_format=True)
        files.append(one_series / path.name)
    move_port = free_port()
    with TinyPacs(studies.work / "tiny-pacs", move_destinations={MOVE_AET: ("127.0.0.1", move_port)}) as pacs:
        _store(files, pacs.aet, pacs.dicom_port, "-xw")
        yield SimpleNamespace(pacs=pacs, move_port=move_port)


@pytest.mark.parametrize("mode", ["get", "move"])
def test_tiny_pacs_lossy_prior(tiny_pacs, studies, tmp_path: Path, mode: str) -> None:
    config = _config(tiny_pacs.pacs.aet, tiny_pacs.pacs.dicom_port, mode, tiny_pacs.move_port)
    _fetch_lossy_prior(config, studies, tmp_path)
