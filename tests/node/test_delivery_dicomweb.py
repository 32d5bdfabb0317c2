"""``type: dicomweb`` destinations: STOW-RS through dicomweb-client to a real Orthanc with its DICOMweb plugin.

QIDO-RS lists what was delivered; HTTP basic auth with the password from the environment; a 4xx (wrong password,
a 409 study mismatch) is dead-lettered at once with the server's reason; a down server is retried with backoff and
gets the objects once it is up; nothing accepted is sent again.
"""
from __future__ import annotations

import datetime as dt
from collections.abc import Iterator
from pathlib import Path

import pydicom
import pytest
import requests
from delivery_support import PROCESSORS, deliveries, delivery_config, ingest_files, job, wait_until
from dicomweb_client.api import DICOMwebClient

from dicomnode.config import ConfigError, DicomwebAuth, config_from_dict
from dicomnode.db.models import utcnow
from dicomnode.db.states import DeliveryState, JobState
from dicomnode.delivery import Deliverer
from dicomnode.dicomweb import make_session
from dicomnode.peers.orthanc import OrthancServer
from dicomnode.peers.ports import free_port
from dicomnode.processing import make_processor
from dicomnode.worker import Worker
from tests.tiny_pacs_server import TinyPacs

USER, PASSWORD, PASSWORD_ENV = "cxrnode", "s3cret-stow", "CXR_TEST_STOW_PASSWORD"


@pytest.fixture
def database_url(sqlite_url: str) -> str:
    """SQLite only (conftest's ``session_factory`` migrates it): the delivery queue itself is tested on both
    databases in test_delivery.py; here what matters is the DICOMweb peer."""
    return sqlite_url


@pytest.fixture
def web_pacs(tmp_path: Path) -> Iterator[OrthancServer]:
    with OrthancServer(tmp_path / "orthanc-web", dicomweb=True, http_user=(USER, PASSWORD)) as server:
        yield server


def _dicomweb(url: str, password_env: str = PASSWORD_ENV, max_attempts: int = 3) -> dict:
    return {"name": "web", "type": "dicomweb", "url": url, "timeout_seconds": 10,
            "auth": {"type": "basic", "username": USER, "password_env": password_env},
            "retry": {"max_attempts": max_attempts, "initial_seconds": 0.2, "max_seconds": 1.0}}


def _results(config, session_factory, files) -> int:  # type: ignore[no-untyped-def]
    job_id = ingest_files(config, session_factory, files)
    worker = Worker(config, session_factory, make_processor(config), worker_id="w")
    while worker.run_once():
        pass
    return job_id


def _qido(server: OrthancServer, study_uid: str) -> set[str]:
    session = requests.Session()
    session.auth = (USER, PASSWORD)
    client = DICOMwebClient(server.url + "/dicom-web", session=session)
    return {i["00080018"]["Value"][0] for i in client.search_for_instances(study_instance_uid=study_uid)}


def test_stow_delivers_and_qido_lists_them(data_dir, sqlite_url, session_factory, study_factory, web_pacs,
                                           monkeypatch) -> None:
    monkeypatch.setenv(PASSWORD_ENV, PASSWORD)
    config = delivery_config(data_dir, sqlite_url, [_dicomweb(web_pacs.url + "/dicom-web")],
                             processor=f"{PROCESSORS}:sr_and_sc")
    study = study_factory()
    job_id = _results(config, session_factory, study.files)
    deliverer = Deliverer(config, session_factory)
    assert deliverer.run_once() == 2
    rows = deliveries(session_factory, job_id)
    assert {r.state for r in rows} == {DeliveryState.SENT.value}
    assert all(r.last_status == 0 and r.attempts == 1 for r in rows)
    assert _qido(web_pacs, study.study_instance_uid) == {r.sop_instance_uid for r in rows}
    assert job(session_factory, job_id).state == JobState.DELIVERED.value
    assert deliverer.run_once() == 0  # accepted objects are never sent again
    assert len(web_pacs.sop_instance_uids(study.study_instance_uid)) == 2


def test_wrong_password_is_dead_lettered_with_the_reason(data_dir, sqlite_url, session_factory, study_factory,
                                                         web_pacs, monkeypatch) -> None:
    monkeypatch.setenv(PASSWORD_ENV, "not-the-password")
    config = delivery_config(data_dir, sqlite_url, [_dicomweb(web_pacs.url + "/dicom-web", max_attempts=5)])
    job_id = _results(config, session_factory, study_factory().files)
    assert Deliverer(config, session_factory).run_once() == 1
    [row] = deliveries(session_factory, job_id)
    assert row.state == DeliveryState.DEAD.value and row.attempts == 1  # a 4xx is not retried
    assert row.last_status == 401 and "HTTP 401" in row.last_error and "Unauthorized" in row.last_error
    assert job(session_factory, job_id).state == JobState.FAILED.value
    assert web_pacs.sop_instance_uids() == []


def test_study_mismatch_409_names_both_studies(data_dir, sqlite_url, session_factory, study_factory, web_pacs,
                                               monkeypatch) -> None:
    monkeypatch.setenv(PASSWORD_ENV, PASSWORD)
    config = delivery_config(data_dir, sqlite_url, [_dicomweb(web_pacs.url + "/dicom-web")])
    study = study_factory()
    job_id = _results(config, session_factory, study.files)
    [row] = deliveries(session_factory, job_id)
    path = data_dir / row.path  # a result object that names another study than the one it was made for
    ds = pydicom.dcmread(path)
    ds.StudyInstanceUID = other = pydicom.uid.generate_uid()
    ds.save_as(path)
    assert Deliverer(config, session_factory).run_once() == 1
    [row] = deliveries(session_factory, job_id)
    assert row.state == DeliveryState.DEAD.value and row.attempts == 1 and row.last_status == 409
    assert "study mismatch" in row.last_error
    assert other in row.last_error and study.study_instance_uid in row.last_error
    assert web_pacs.sop_instance_uids() == []


def test_down_server_is_retried_with_backoff_then_delivered(data_dir, sqlite_url, session_factory, study_factory,
                                                            tmp_path, monkeypatch) -> None:
    monkeypatch.setenv(PASSWORD_ENV, PASSWORD)
    port = free_port()
    config = delivery_config(data_dir, sqlite_url, [_dicomweb(f"http://127.0.0.1:{port}/dicom-web",
                                                              max_attempts=10)])
    study = study_factory()
    job_id = _results(config, session_factory, study.files)
    deliverer = Deliverer(config, session_factory, rng=lambda: 0.5)
    before = utcnow()
    assert deliverer.run_once() == 1
    [row] = deliveries(session_factory, job_id)
    assert row.state == DeliveryState.PENDING.value and row.attempts == 1 and row.last_status is None
    assert "ConnectionError" in row.last_error
    assert row.next_attempt_at >= before + dt.timedelta(seconds=0.2)  # backoff, not an immediate retry
    assert deliverer.run_once() == 0  # not due yet
    with OrthancServer(tmp_path / "late", dicomweb=True, http_user=(USER, PASSWORD), http_port=port) as server:
        wait_until(lambda: deliverer.run_once() == 1, timeout=30, what="due again")
        [row] = deliveries(session_factory, job_id)
        assert row.state == DeliveryState.SENT.value and row.attempts == 2
        assert _qido(server, study.study_instance_uid) == {row.sop_instance_uid}


def test_auth_sessions_read_secrets_from_the_environment(monkeypatch) -> None:
    monkeypatch.setenv("CXR_TEST_TOKEN", "tok-123")
    monkeypatch.setenv(PASSWORD_ENV, PASSWORD)
    bearer = make_session(DicomwebAuth(type="bearer", token_env="CXR_TEST_TOKEN"))
    assert bearer.headers["Authorization"] == "Bearer tok-123" and bearer.auth is None
    basic = make_session(DicomwebAuth(type="basic", username=USER, password_env=PASSWORD_ENV))
    assert basic.auth == (USER, PASSWORD) and "Authorization" not in basic.headers
    assert make_session(DicomwebAuth()).auth is None


@pytest.mark.parametrize(("destination", "problem"), [
    ({"name": "w", "type": "dicomweb"}, "destinations.0.url: Field required"),
    ({"name": "w", "type": "dicomweb", "url": "ftp://x"}, "destinations.0.url: the DICOMweb root, http:// or https://"),
    ({"name": "w", "type": "dicomweb", "url": "http://x/dw", "auth": {"type": "bearer"}}, "needs token_env"),
    ({"name": "w", "type": "dicomweb", "url": "http://x/dw",
      "auth": {"type": "basic", "username": "u", "password_env": "CXR_TEST_UNSET_VARIABLE"}},
     "environment variable CXR_TEST_UNSET_VARIABLE is not set"),
    ({"name": "w", "type": "dicomweb", "url": "http://x/dw", "storage_commitment": True},
     "destinations.0: storage_commitment is not a key of a dicomweb destination (it is one of dimse)"),
    ({"name": "d", "host": "h", "port": 104}, "destinations.0.ae_title: Field required"),
    ({"name": "d", "type": "fax", "host": "h"},
     "destinations.0: unknown destination type 'fax' (known: dicomweb, dimse"),
])
def test_config_refuses_incomplete_destinations(destination: dict, problem: str) -> None:
    with pytest.raises(ConfigError) as err:
        config_from_dict({"processing": {"processor": "passthrough"}, "destinations": [destination]}, environ={})
    assert problem in str(err.value)


# --- a 409 from a server that refuses an instance it already holds: PyPI tiny-pacs-dicomweb ---------------------
@pytest.fixture
def tiny_web(tmp_path: Path) -> Iterator[TinyPacs]:
    with TinyPacs(tmp_path / "tiny-pacs") as server:
        yield server


def _no_auth(url: str) -> dict:
    return {"name": "web", "type": "dicomweb", "url": url, "timeout_seconds": 10,
            "retry": {"max_attempts": 3, "initial_seconds": 0.2, "max_seconds": 1.0}}


def _stow(server: TinyPacs, ds: pydicom.Dataset) -> None:
    """Store ``ds`` the way an earlier delivery would have (its outcome lost, e.g. by a crash before recording)."""
    DICOMwebClient(server.dicomweb_url).store_instances([ds], study_instance_uid=ds.StudyInstanceUID)


def test_already_stored_with_our_content_is_delivered(data_dir, sqlite_url, session_factory, study_factory,
                                                      tiny_web) -> None:
    config = delivery_config(data_dir, sqlite_url, [_no_auth(tiny_web.dicomweb_url)])
    job_id = _results(config, session_factory, study_factory().files)
    [row] = deliveries(session_factory, job_id)
    _stow(tiny_web, pydicom.dcmread(data_dir / row.path))
    assert Deliverer(config, session_factory).run_once() == 1  # tiny-pacs answers 409, FailureReason 0x0110
    [row] = deliveries(session_factory, job_id)
    assert row.state == DeliveryState.SENT.value and row.last_error is None and row.attempts == 1
    assert job(session_factory, job_id).state == JobState.DELIVERED.value


def test_already_stored_with_other_content_is_refused_naming_what_differs(data_dir, sqlite_url, session_factory,
                                                                          study_factory, tiny_web) -> None:
    config = delivery_config(data_dir, sqlite_url, [_no_auth(tiny_web.dicomweb_url)])
    job_id = _results(config, session_factory, study_factory().files)
    [row] = deliveries(session_factory, job_id)
    earlier = pydicom.dcmread(data_dir / row.path)  # an earlier result with the same UIDs and other pixels
    earlier.PixelData = bytes(len(earlier.PixelData))
    earlier.InstanceNumber = int(earlier.get("InstanceNumber", 1)) + 1
    _stow(tiny_web, earlier)
    assert Deliverer(config, session_factory).run_once() == 1
    [row] = deliveries(session_factory, job_id)
    assert row.state == DeliveryState.DEAD.value and row.attempts == 1 and row.last_status == 409
    assert row.last_error == (
        f"STOW-RS refused, HTTP 409, failure reason 0x0110 (processing failure): the server already holds SOP "
        f"Instance {row.sop_instance_uid} with other content (InstanceNumber, PixelData differ), e.g. an earlier "
        f"result with the same UIDs: delete it on the server, then retry the job to send this one")


def test_study_mismatch_on_a_second_server(data_dir, sqlite_url, session_factory, study_factory, tiny_web) -> None:
    config = delivery_config(data_dir, sqlite_url, [_no_auth(tiny_web.dicomweb_url)])
    study = study_factory()
    job_id = _results(config, session_factory, study.files)
    [row] = deliveries(session_factory, job_id)
    ds = pydicom.dcmread(data_dir / row.path)
    ds.StudyInstanceUID = other = pydicom.uid.generate_uid()
    ds.save_as(data_dir / row.path)
    assert Deliverer(config, session_factory).run_once() == 1
    [row] = deliveries(session_factory, job_id)
    assert row.state == DeliveryState.DEAD.value and row.last_status == 409
    assert row.last_error == (f"STOW-RS refused, HTTP 409 (study mismatch): the object's StudyInstanceUID {other} is "
                              f"not the study {study.study_instance_uid} it belongs to (failure reason 0x0110 "
                              f"(processing failure))")
