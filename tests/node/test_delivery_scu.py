"""The SCU used by delivery and by `cxr-node echo/send`: peer parsing, C-ECHO, per-file C-STORE outcomes."""
from __future__ import annotations

from pathlib import Path

import pytest

from dicomnode.association import Peer, ScuError
from dicomnode.peers.ports import free_port
from dicomnode.scu import echo, store_files


def test_peer_parse() -> None:
    peer = Peer.parse("PACS@10.0.0.5:104", calling_aet="ME")
    assert (peer.ae_title, peer.host, peer.port, peer.calling_aet) == ("PACS", "10.0.0.5", 104, "ME")
    assert Peer.parse("X@[::1]:11112").host == "::1"
    for bad in ("PACS", "PACS@host", "PACS@host:0", "@host:1", "WAY_TOO_LONG_AE_TITLE@h:1"):
        with pytest.raises(ValueError):
            Peer.parse(bad)


def test_echo_and_store_outcomes(tmp_path: Path, orthanc, study_factory) -> None:
    peer = Peer("ORTHANC", "127.0.0.1", orthanc.dicom_port)
    assert echo(peer) == 0
    study = study_factory()
    junk = tmp_path / "junk.dcm"
    junk.write_bytes(b"not dicom at all")
    outcomes = store_files(peer, [study.files[0], junk, study.files[1]])
    assert [o.path for o in outcomes] == [study.files[0], junk, study.files[1]]
    assert [o.stored for o in outcomes] == [True, False, True]
    assert outcomes[1].status is None and "unreadable" in (outcomes[1].error or "")
    assert sorted(orthanc.sop_instance_uids()) == sorted(p.stem for p in study.files)


def test_no_peer_raises(study_factory) -> None:
    with pytest.raises(ScuError, match="NOBODY@127.0.0.1"):
        echo(Peer("NOBODY", "127.0.0.1", free_port()))
    with pytest.raises(ScuError):
        store_files(Peer("NOBODY", "127.0.0.1", free_port()), study_factory().files)
    # nothing readable: no association is attempted, every file gets its reason
    [outcome] = store_files(Peer("NOBODY", "127.0.0.1", free_port()), [Path(__file__)])
    assert outcome.status is None and "unreadable" in (outcome.error or "")
