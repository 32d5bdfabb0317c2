"""Per-object latency of C-STORE to a peer that keeps Nagle's algorithm on (Orthanc, as Debian builds DCMTK): the
node's associations (TCP_NODELAY and quick ACKs re-armed after every read, ``dicomnode.association``) against
TCP_NODELAY alone (the node before quick ACKs) and a plain pynetdicom association, with the same contexts, same
files, same Orthanc, same run.

Such a peer writes each C-STORE-RSP in two pieces and holds the second until its first is acknowledged; with the
kernel's delayed ACKs that is up to 40 ms per object, whatever its size. Makes one real result set (SR + SC
reasoning pages) and per round sends it in one association each way (the order rotates; the study is deleted
from Orthanc before each send, so every send stores). Prints per-round seconds and the median ratios.

    .venv/bin/python -m benchmarks.delivery_latency [--rounds 7]
"""
from __future__ import annotations

import argparse
import socket
import statistics
import tempfile
import time
from pathlib import Path

from pynetdicom import AE

from benchmarks.delivery_stow_vs_cstore import clear, result_files
from dicomnode.association import Peer, associate, close, configure_pynetdicom, requestor_ae
from dicomnode.peers.orthanc import OrthancServer
from dicomnode.scu import file_header, requested_contexts

MODES = ("node", "nodelay only", "plain")


def send_all(ae: AE, peer: Peer, files: list[Path], mode: str) -> float:
    """Seconds from the association's first C-STORE to its last response."""
    if mode == "node":
        assoc = associate(ae, peer)
    else:
        assoc = ae.associate(peer.host, peer.port, ae_title=peer.ae_title)
        if mode == "nodelay only":
            assoc.dul.socket.socket.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    try:
        started = time.perf_counter()
        statuses = [int(assoc.send_c_store(path).Status) for path in files]
        seconds = time.perf_counter() - started
    finally:
        close(assoc)
    if any(statuses):
        raise RuntimeError(f"not stored: {statuses}")
    return seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=7)
    args = parser.parse_args()
    configure_pynetdicom()
    with tempfile.TemporaryDirectory(prefix="latency-bench-") as tmp:
        work = Path(tmp)
        (work / "objects").mkdir()
        study_uid, files = result_files(work / "objects")
        with OrthancServer(work / "orthanc") as orthanc:
            peer = Peer(orthanc.aet, "127.0.0.1", orthanc.dicom_port, "CXRNODE")
            ae = requestor_ae(peer)
            ae.requested_contexts = requested_contexts(file_header(path) for path in files)
            times: dict[str, list[float]] = {mode: [] for mode in MODES}
            for round_ in range(args.rounds):
                for mode in MODES[round_ % 3:] + MODES[:round_ % 3]:
                    clear(orthanc, study_uid)
                    times[mode].append(send_all(ae, peer, files, mode))
                print(f"round {round_ + 1}: " + ", ".join(f"{m} {times[m][-1]:.3f} s" for m in MODES), flush=True)
    median = {mode: statistics.median(values) for mode, values in times.items()}
    print(f"\n{len(files)} result objects per send, one association each")
    for mode in MODES:
        print(f"{mode:13s} median {median[mode]:.3f} s ({median[mode] / len(files) * 1000:.1f} ms per object), "
              f"node/{mode} {median['node'] / median[mode]:.2f}")


if __name__ == "__main__":
    main()
