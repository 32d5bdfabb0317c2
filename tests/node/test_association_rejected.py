"""A peer that rejects the association: ``cxr-node send`` and the delivery error give the A-ASSOCIATE-RJ reason
(PS3.8 result, source, reason) with what to check. The peer is Orthanc, checking the called AE title and allowing
only the modalities it knows."""
from __future__ import annotations

import logging
import socket
import subprocess
import threading
from pathlib import Path

import pytest
from delivery_support import PROCESSORS, deliveries, delivery_config, destination, ingest_files
from ingest_support import CXR_NODE

from dicomnode.accepting import accepted
from dicomnode.db.states import DeliveryState
from dicomnode.delivery import Deliverer
from dicomnode.demo.synthetic import StudySpec, write_study
from dicomnode.peers.orthanc import OrthancServer
from dicomnode.processing import make_processor
from dicomnode.worker import Worker

LOG = logging.getLogger(__name__)
KNOWN_AET = "CXRNODE"


@pytest.fixture(scope="module")
def strict_orthanc(tmp_path_factory: pytest.TempPathFactory):
    config = {"DicomCheckCalledAet": True, "DicomAlwaysAllowStore": False, "DicomAlwaysAllowEcho": False,
              "DicomModalities": {"node": [KNOWN_AET, "127.0.0.1", 4242]}}
    with OrthancServer(tmp_path_factory.mktemp("strict-orthanc"), aet="STRICT", extra_config=config) as pacs:
        yield pacs


def _send(pacs: OrthancServer, called: str, calling: str, files: list[Path]) -> subprocess.CompletedProcess[str]:
    return subprocess.run([CXR_NODE, "send", *map(str, files), "--to", f"{called}@127.0.0.1:{pacs.dicom_port}",
                           "--aet", calling], capture_output=True, text=True, timeout=300)


def test_send_names_the_rejection(strict_orthanc: OrthancServer, tmp_path: Path) -> None:
    files = write_study(tmp_path / "in", StudySpec(rows=64, columns=48, views=("PA",)))
    peer = f"WRONGAE@127.0.0.1:{strict_orthanc.dicom_port}"
    sent = _send(strict_orthanc, "WRONGAE", KNOWN_AET, files)
    assert sent.returncode == 1
    assert sent.stderr.strip().splitlines() == [
        f"send: {peer}: association rejected permanently by the service user: called AE title not recognized "
        f"(the destination does not answer to AE title 'WRONGAE': check the destination's ae_title)"]
    stranger = _send(strict_orthanc, "STRICT", "STRANGER", files)
    assert stranger.returncode == 1
    assert stranger.stderr.strip().splitlines() == [
        f"send: STRICT@127.0.0.1:{strict_orthanc.dicom_port}: association rejected permanently by the service user: "
        f"calling AE title not recognized (the destination does not know the calling AE title 'STRANGER': register "
        f"it there)"]
    assert "sent 1/1" in _send(strict_orthanc, "STRICT", KNOWN_AET, files).stdout  # the same files, called right


@pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)
def test_delivery_error_names_the_rejection(strict_orthanc, data_dir, database_url, session_factory,
                                            study_factory) -> None:
    dest = destination("pacs", "WRONGAE", strict_orthanc.dicom_port, objects=["sc"])
    config = delivery_config(data_dir, database_url, [dest], processor=f"{PROCESSORS}:sc")
    job_id = ingest_files(config, session_factory, study_factory().files)
    assert Worker(config, session_factory, make_processor(config)).run_once()
    Deliverer(config, session_factory).run_once()
    [row] = deliveries(session_factory, job_id)
    assert row.state == DeliveryState.PENDING.value
    assert row.last_error == (f"WRONGAE@127.0.0.1:{strict_orthanc.dicom_port}: association rejected permanently by "
                              f"the service user: called AE title not recognized (the destination does not answer "
                              f"to AE title 'WRONGAE': check the destination's ae_title)")


class _ClosingThenRejectingPeer:
    """A TCP peer that ends its first ``closes`` connections without a word (as a rejection whose A-ASSOCIATE-RJ
    lost the race with the close looks to pynetdicom) and answers the next with an A-ASSOCIATE-RJ "calling AE title
    not recognized". A fake: no real PACS loses its RJ on demand."""

    def __init__(self, closes: int) -> None:
        self.closes, self.connections = closes, 0
        self.stopping = threading.Event()
        self.server = socket.create_server(("127.0.0.1", 0))
        self.server.settimeout(0.2)  # how often the accept loop looks at ``stopping``
        self.port = self.server.getsockname()[1]
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    def _serve(self) -> None:
        for conn, _ in accepted(self.server, self.stopping, LOG, "closing-then-rejecting peer"):
            with conn:
                self.connections += 1
                conn.settimeout(5)
                conn.recv(65536)  # the A-ASSOCIATE-RQ
                if self.connections > self.closes:  # PS3.8 9.3.4: type 3, result 1 (permanent), source 1, reason 3
                    conn.sendall(bytes([0x03, 0, 0, 0, 0, 4, 0, 1, 1, 3]))

    def close(self) -> None:
        self.stopping.set()
        self.server.close()


@pytest.mark.parametrize(("closes", "expected", "connections"), [
    (1, "association rejected permanently by the service user: calling AE title not recognized", 2),
    (5, "association aborted or connection refused", 2),
])
def test_an_association_ended_without_an_answer_is_asked_once_more(closes: int, expected: str,
                                                                  connections: int) -> None:
    from pynetdicom import AE
    from pynetdicom.sop_class import Verification

    from dicomnode.association import Peer, ScuError, associate

    peer = _ClosingThenRejectingPeer(closes)
    ae = AE("CXRNODE")
    ae.add_requested_context(Verification)
    try:
        with pytest.raises(ScuError) as raised:
            associate(ae, Peer("PACS", "127.0.0.1", peer.port, acse_timeout=5))
    finally:
        peer.close()
    assert expected in str(raised.value)
    assert peer.connections == connections  # once more, and no more
