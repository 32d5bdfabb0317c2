"""Delivery over DICOM TLS to an Orthanc that requires client certificates (certificates made with openssl)."""
from __future__ import annotations

import logging
import subprocess
from pathlib import Path

import pytest
from delivery_support import PROCESSORS, deliveries, delivery_config, ingest_files, job, orthanc_destination

from dicomnode.association import Peer, ScuError
from dicomnode.config import TLSConfig
from dicomnode.db.states import DeliveryState, JobState
from dicomnode.delivery import Deliverer
from dicomnode.peers.orthanc import OrthancServer
from dicomnode.processing import make_processor
from dicomnode.scu import echo
from dicomnode.worker import Worker


def _openssl(d: Path, *args: str) -> None:
    result = subprocess.run(["openssl", *args], cwd=d, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr


def _certificate(d: Path, name: str, ca: str | None) -> None:
    if ca is None:
        _openssl(d, "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", f"{name}.key", "-out",
                 f"{name}.pem", "-days", "2", "-subj", f"/CN={name}")
        return
    _openssl(d, "req", "-newkey", "rsa:2048", "-nodes", "-keyout", f"{name}.key", "-out", f"{name}.csr",
             "-subj", f"/CN={name}")
    (d / f"{name}.ext").write_text("basicConstraints=CA:FALSE\nsubjectAltName=DNS:localhost,IP:127.0.0.1\n")
    _openssl(d, "x509", "-req", "-in", f"{name}.csr", "-CA", f"{ca}.pem", "-CAkey", f"{ca}.key",
             "-CAcreateserial", "-out", f"{name}.pem", "-days", "2", "-sha256", "-extfile", f"{name}.ext")


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Path:
    d = tmp_path_factory.mktemp("delivery-pki")
    _certificate(d, "ca", None)
    _certificate(d, "pacs", "ca")
    _certificate(d, "node", "ca")
    return d


@pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)
def test_delivery_over_tls(tmp_path, data_dir, database_url, session_factory, study_factory, pki) -> None:
    tls_pacs = {
        "DicomTlsEnabled": True, "DicomTlsCertificate": str(pki / "pacs.pem"),
        "DicomTlsPrivateKey": str(pki / "pacs.key"), "DicomTlsTrustedCertificates": str(pki / "ca.pem"),
        "DicomTlsRemoteCertificateRequired": True,
    }
    client = {"enabled": True, "cert": str(pki / "node.pem"), "key": str(pki / "node.key"),
              "ca": str(pki / "ca.pem")}
    with OrthancServer(tmp_path / "tls-pacs", aet="TLSPACS", extra_config=tls_pacs) as pacs:
        with pytest.raises(ScuError):  # plain association to a TLS-only PACS fails
            echo(Peer("TLSPACS", "127.0.0.1", pacs.dicom_port, connect_timeout=5, acse_timeout=10))
        assert echo(Peer("TLSPACS", "127.0.0.1", pacs.dicom_port, tls=TLSConfig(**client))) == 0

        dest = orthanc_destination(pacs, objects=["sc"])
        dest["tls"] = client
        config = delivery_config(data_dir, database_url, [dest], processor=f"{PROCESSORS}:sc")
        job_id = ingest_files(config, session_factory, study_factory().files)
        assert Worker(config, session_factory, make_processor(config)).run_once()
        assert Deliverer(config, session_factory).run_once() == 1
        [row] = deliveries(session_factory, job_id)
        assert row.state == DeliveryState.SENT.value, row.last_error
        assert pacs.sop_instance_uids() == [row.sop_instance_uid]
        assert job(session_factory, job_id).state == JobState.DELIVERED.value


def _tls_pacs(pki: Path, cert: str, trusted: str = "ca") -> dict[str, object]:
    return {"DicomTlsEnabled": True, "DicomTlsCertificate": str(pki / f"{cert}.pem"),
            "DicomTlsPrivateKey": str(pki / f"{cert}.key"), "DicomTlsTrustedCertificates": str(pki / f"{trusted}.pem"),
            "DicomTlsRemoteCertificateRequired": True}


@pytest.fixture(scope="module")
def untrusted_pki(pki: Path) -> Path:
    """Beside ``pki``'s CA: another CA and a PACS certificate it signed, a self-signed PACS certificate, and a node
    certificate of the other CA."""
    _certificate(pki, "otherca", None)
    _certificate(pki, "pacs-other", "otherca")
    _certificate(pki, "pacs-self", None)
    _certificate(pki, "node-other", "otherca")
    return pki


@pytest.mark.parametrize(("pacs_cert", "node_cert", "reason"), [
    ("pacs-other", "node", "TLS handshake with TLSPACS@127.0.0.1:{port} failed: certificate verify failed: unable to "
                           "get local issuer certificate (the destination's certificate is not signed by a CA in "
                           "tls.ca {ca})"),
    ("pacs-self", "node", "TLS handshake with TLSPACS@127.0.0.1:{port} failed: certificate verify failed: "
                          "self-signed certificate (the destination presents a self-signed certificate that is not in "
                          "tls.ca {ca})"),
    ("pacs", "node-other", "TLS handshake with TLSPACS@127.0.0.1:{port} failed: the destination refused the node's "
                           "certificate (tls.cert {cert})"),
], ids=["unknown-ca", "self-signed", "node-cert-refused"])
def test_untrusted_certificate_is_named(tmp_path, untrusted_pki, pacs_cert, node_cert, reason,
                                        caplog: pytest.LogCaptureFixture) -> None:
    pki = untrusted_pki
    client = TLSConfig(enabled=True, cert=pki / f"{node_cert}.pem", key=pki / f"{node_cert}.key", ca=pki / "ca.pem")
    with OrthancServer(tmp_path / "pacs", aet="TLSPACS", extra_config=_tls_pacs(pki, pacs_cert)) as pacs:
        caplog.clear()
        with pytest.raises(ScuError) as refused:
            echo(Peer("TLSPACS", "127.0.0.1", pacs.dicom_port, tls=client, connect_timeout=5, acse_timeout=10))
    assert str(refused.value) == reason.format(port=pacs.dicom_port, ca=client.ca, cert=client.cert)
    assert "Traceback" not in caplog.text and not [r for r in caplog.records if r.exc_info]


@pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)
def test_untrusted_destination_delivery_error(tmp_path, data_dir, database_url, session_factory, study_factory,
                                              untrusted_pki, caplog: pytest.LogCaptureFixture) -> None:
    """The delivery error (what ``cxr-node status`` and the dashboard show) names the TLS failure, and one attempt
    logs one line: no pynetdicom traceback."""
    pki = untrusted_pki
    client = {"enabled": True, "cert": str(pki / "node.pem"), "key": str(pki / "node.key"), "ca": str(pki / "ca.pem")}
    with OrthancServer(tmp_path / "pacs", aet="TLSPACS", extra_config=_tls_pacs(pki, "pacs-other")) as pacs:
        dest = orthanc_destination(pacs, objects=["sc"])
        dest["tls"] = client
        config = delivery_config(data_dir, database_url, [dest], processor=f"{PROCESSORS}:sc")
        job_id = ingest_files(config, session_factory, study_factory().files)
        assert Worker(config, session_factory, make_processor(config)).run_once()
        caplog.clear()
        caplog.set_level(logging.INFO)
        Deliverer(config, session_factory).run_once()
    [row] = deliveries(session_factory, job_id)
    assert row.state == DeliveryState.PENDING.value and row.attempts == 1
    assert row.last_error == (f"TLS handshake with TLSPACS@127.0.0.1:{pacs.dicom_port} failed: certificate verify "
                              f"failed: unable to get local issuer certificate (the destination's certificate is not "
                              f"signed by a CA in tls.ca {pki / 'ca.pem'})")
    loud = [r for r in caplog.records if r.levelno >= logging.WARNING]
    assert len(loud) == 1 and row.last_error in loud[0].getMessage() + str(getattr(loud[0], "fields", "")), \
        [r.getMessage() for r in loud]
    assert not [r for r in caplog.records if r.exc_info]
