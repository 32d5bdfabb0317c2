"""The SCU used by delivery and by `cxr-node echo/send`: peer parsing, C-ECHO, per-file C-STORE outcomes."""
from __future__ import annotations

import socket
from pathlib import Path

import pytest

from dicomnode.association import Peer, ScuError, associate, close, requestor_ae
from dicomnode.peers.ports import free_port
from dicomnode.scu import echo, file_header, requested_contexts, store_files


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


@pytest.mark.parametrize("node", [True, False], ids=["node", "plain pynetdicom"])
def test_association_sends_without_nagle(orthanc, study_factory, node: bool) -> None:
    """The node's associations send without Nagle's algorithm and re-arm quick ACKs after every read (Orthanc,
    like any DCMTK peer, holds the second half of each response until we ACK the first: 40 ms per object with
    delayed ACKs; ``benchmarks/delivery_latency.py`` measures it). Stores through the re-arming reads arrive
    whole; a plain pynetdicom association, the control, keeps Nagle on."""
    peer = Peer("ORTHANC", "127.0.0.1", orthanc.dicom_port)
    files = study_factory().files
    ae = requestor_ae(peer)
    ae.requested_contexts = requested_contexts(file_header(f) for f in files)
    assoc = associate(ae, peer) if node else ae.associate(peer.host, peer.port, ae_title=peer.ae_title)
    try:
        statuses = [assoc.send_c_store(path).Status for path in [*files, *files]]
        no_delay = assoc.dul.socket.socket.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY)
    finally:
        close(assoc)
    assert statuses == [0] * (2 * len(files))
    assert bool(no_delay) is node
    assert sorted(orthanc.sop_instance_uids()) == sorted(p.stem for p in files)
