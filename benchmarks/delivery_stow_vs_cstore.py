"""Result delivery: STOW-RS (``type: dicomweb``) against C-STORE (``type: dimse``), same objects, same Orthanc,
same run; and the Storage Commitment round trip.

Makes one real result set (SR + SC reasoning pages, via ``sr_writer``) for a synthetic study, writes it to files,
then per round sends the files to one Orthanc (Debian, DICOMweb plugin) with the node's own code paths: C-STORE in
one association (``dicomnode.scu.store_files``) and one STOW-RS request (``dicomnode.dicomweb.stow_study``). The
study is deleted from Orthanc before each send, so every send stores. Rounds alternate which goes first. Prints
per-round seconds and the median ratio STOW/C-STORE.

Then, per round, one Storage Commitment request for the set (``dicomnode.commitment.request_commitment``) with
the report received by a pynetdicom SCP (the node's listener's context and role): the round trip from sending the
N-ACTION to the N-EVENT-REPORT arriving, median.

    .venv/bin/python -m benchmarks.delivery_stow_vs_cstore [--rounds 7] [--pages-findings 5]
"""
from __future__ import annotations

import argparse
import statistics
import tempfile
import threading
import time
from pathlib import Path

from pydicom.uid import generate_uid
from pynetdicom import AE, evt

from dicomnode.association import Peer
from dicomnode.commitment import STORAGE_COMMITMENT_PUSH, request_commitment
from dicomnode.demo.records import make_record
from dicomnode.demo.synthetic import StudySpec, make_study
from dicomnode.destinations import DicomwebDestination
from dicomnode.dicomweb import make_client, stow_study
from dicomnode.peers.orthanc import OrthancServer
from dicomnode.peers.ports import free_port
from dicomnode.scu import store_files
from sr_writer.api import build_result_objects

NODE_AET = "CXRNODE"


def result_files(directory: Path) -> tuple[str, list[Path]]:
    """One result set (SR + pages) of a synthetic two-view study, as Part-10 files."""
    current = make_study(StudySpec(rows=1024, columns=832))
    record = make_record(current, positive=("pneumothorax", "consolidation", "pleural_effusion",
                                            "cardiac_pacemaker", "lung_opacity"))
    objects = build_result_objects(record, current)
    paths = []
    for n, ds in enumerate(objects.datasets):
        path = directory / f"{n:02d}.dcm"
        path.write_bytes(objects.encoded[str(ds.SOPInstanceUID)])
        paths.append(path)
    return str(current[0].StudyInstanceUID), paths


def clear(orthanc: OrthancServer, study_uid: str) -> None:
    for study in orthanc.find("Study", {"StudyInstanceUID": study_uid}):
        orthanc.rest_delete(f"/studies/{study['ID']}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=7)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="stow-bench-") as tmp:
        work = Path(tmp)
        (work / "objects").mkdir()
        study_uid, files = result_files(work / "objects")
        size = sum(p.stat().st_size for p in files)
        report_port = free_port()
        reports: dict[str, float] = {}
        arrived = threading.Event()

        def on_report(event) -> tuple[int, None]:  # type: ignore[no-untyped-def]
            reports[str(event.event_information.TransactionUID)] = time.perf_counter()
            arrived.set()
            return 0, None

        scp = AE(ae_title=NODE_AET)
        scp.add_supported_context(STORAGE_COMMITMENT_PUSH, scu_role=True, scp_role=True)
        server = scp.start_server(("127.0.0.1", report_port), block=False,
                                  evt_handlers=[(evt.EVT_N_EVENT_REPORT, on_report)])
        orthanc = OrthancServer(work / "orthanc", dicomweb=True,
                                modalities={NODE_AET: (NODE_AET, "127.0.0.1", report_port)})
        try:
            with orthanc:
                version = orthanc.rest_get("/system")["Version"]
                peer = Peer(orthanc.aet, "127.0.0.1", orthanc.dicom_port, NODE_AET)
                client = make_client(DicomwebDestination(name="web", url=orthanc.url + "/dicom-web"))
                stow_s, cstore_s, round_trips = [], [], []
                for n in range(args.rounds + 1):  # round 0 warms both paths up, not counted
                    timings = {}
                    for kind in (("cstore", "stow") if n % 2 else ("stow", "cstore")):
                        clear(orthanc, study_uid)
                        started = time.perf_counter()
                        if kind == "cstore":
                            outcomes = store_files(peer, files)
                        else:
                            outcomes = stow_study(client, study_uid, files)
                        timings[kind] = time.perf_counter() - started
                        assert all(o.stored for o in outcomes), outcomes
                    transaction = generate_uid()
                    objects = [(_sop_class(o.path), str(o.sop_instance_uid)) for o in outcomes]
                    arrived.clear()
                    asked = time.perf_counter()
                    assert request_commitment(peer, transaction, objects) == 0
                    assert arrived.wait(30), "no N-EVENT-REPORT within 30 s"
                    if n:
                        stow_s.append(timings["stow"])
                        cstore_s.append(timings["cstore"])
                        round_trips.append(reports[transaction] - asked)
                        print(f"round {n}: STOW {timings['stow']:.3f} s, C-STORE {timings['cstore']:.3f} s, "
                              f"ratio {timings['stow'] / timings['cstore']:.2f}, commitment round trip "
                              f"{reports[transaction] - asked:.3f} s")
        finally:
            server.shutdown()
        ratios = [s / c for s, c in zip(stow_s, cstore_s, strict=False)]
        print(f"objects: {len(files)} (SR + {len(files) - 1} SC pages), {size / 1e6:.1f} MB, Orthanc {version}")
        print(f"median STOW-RS {statistics.median(stow_s):.3f} s, C-STORE {statistics.median(cstore_s):.3f} s, "
              f"STOW/C-STORE ratio {statistics.median(ratios):.2f} (median of {len(ratios)} paired rounds)")
        print(f"median Storage Commitment round trip (N-ACTION sent -> N-EVENT-REPORT received): "
              f"{statistics.median(round_trips):.3f} s")


def _sop_class(path: Path) -> str:
    from pydicom import dcmread

    return str(dcmread(path, stop_before_pixels=True, specific_tags=["SOPClassUID"]).SOPClassUID)


if __name__ == "__main__":
    main()
