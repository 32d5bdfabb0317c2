"""DICOM TLS: a TLS-required node refuses plain and certificate-less associations and accepts a TLS one."""
from __future__ import annotations

import subprocess
from pathlib import Path

import pytest
from ingest_support import NODE_AET, Db, make_config, running_node, store

from dicomnode.demo.synthetic import StudySpec, write_study
from dicomnode.peers.dcmtk import echoscu

SMALL = {"rows": 128, "columns": 104}


def _openssl(*args: str | Path, cwd: Path) -> None:
    result = subprocess.run(["openssl", *map(str, args)], cwd=cwd, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr


def _ca(d: Path, name: str) -> None:
    _openssl("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", f"{name}.key", "-out", f"{name}.pem",
             "-days", "2", "-subj", f"/CN={name} test CA", cwd=d)


def _leaf(d: Path, name: str, ca: str, server: bool = False) -> None:
    _openssl("req", "-newkey", "rsa:2048", "-nodes", "-keyout", f"{name}.key", "-out", f"{name}.csr",
             "-subj", f"/CN={name}", cwd=d)
    ext = d / f"{name}.ext"
    ext.write_text("basicConstraints=CA:FALSE\n" + ("subjectAltName=DNS:localhost,IP:127.0.0.1\n" if server else ""))
    _openssl("x509", "-req", "-in", f"{name}.csr", "-CA", f"{ca}.pem", "-CAkey", f"{ca}.key", "-CAcreateserial",
             "-out", f"{name}.pem", "-days", "2", "-sha256", "-extfile", ext.name, cwd=d)


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """A CA with a server and a client certificate, and a client certificate from another (rogue) CA."""
    d = tmp_path_factory.mktemp("pki")
    _ca(d, "ca")
    _ca(d, "rogueca")
    _leaf(d, "server", "ca", server=True)
    _leaf(d, "client", "ca")
    _leaf(d, "rogue", "rogueca")
    return {"ca": d / "ca.pem", "server_key": d / "server.key", "server_cert": d / "server.pem",
            "client_key": d / "client.key", "client_cert": d / "client.pem",
            "rogue_key": d / "rogue.key", "rogue_cert": d / "rogue.pem"}


def _tls_args(pki: dict[str, Path], key: str = "client_key", cert: str = "client_cert") -> list[str]:
    return ["+tls", str(pki[key]), str(pki[cert]), "+cf", str(pki["ca"])]


def test_tls_required_node(tmp_path: Path, pki: dict[str, Path]) -> None:
    tls = {"enabled": True, "cert": str(pki["server_cert"]), "key": str(pki["server_key"]), "ca": str(pki["ca"]),
           "require_client_cert": True}
    config = make_config(tmp_path / "data", node={"tls": tls})
    files = write_study(tmp_path / "in", StudySpec(views=("PA",), **SMALL))
    with running_node(config) as node:
        db = Db(config.database_url)
        # plain TCP association: refused
        assert echoscu(NODE_AET, "127.0.0.1", node.port, timeout=60).returncode != 0
        plain = store(files, node.port, timeout=120)
        assert plain.statuses == [] and plain.returncode != 0
        # TLS without a client certificate, or with one from another CA: refused
        anonymous = echoscu(NODE_AET, "127.0.0.1", node.port, extra_args=["+tla", "+cf", str(pki["ca"])])
        assert anonymous.returncode != 0
        rogue = echoscu(NODE_AET, "127.0.0.1", node.port, extra_args=_tls_args(pki, "rogue_key", "rogue_cert"))
        assert rogue.returncode != 0
        assert db.instances() == []
        # TLS with a client certificate from our CA: accepted
        ok = echoscu(NODE_AET, "127.0.0.1", node.port, extra_args=_tls_args(pki))
        assert ok.returncode == 0, ok.stdout + ok.stderr
        run = store(files, node.port, extra=_tls_args(pki))
        assert run.statuses == [0], run.output
        assert len(db.instances()) == 1
        db.close()


def test_tls_without_client_certificates(tmp_path: Path, pki: dict[str, Path]) -> None:
    tls = {"enabled": True, "cert": str(pki["server_cert"]), "key": str(pki["server_key"]),
           "require_client_cert": False}
    config = make_config(tmp_path / "data", node={"tls": tls})
    with running_node(config) as node:
        assert echoscu(NODE_AET, "127.0.0.1", node.port, timeout=60).returncode != 0
        anonymous = echoscu(NODE_AET, "127.0.0.1", node.port, extra_args=["+tla", "+cf", str(pki["ca"])])
        assert anonymous.returncode == 0, anonymous.stdout + anonymous.stderr
