"""Load time of the dashboard's Studies page with N generated studies in the node's database (default 1,000).

Usage: .venv/bin/python -m benchmarks.dashboard_studies [--studies 1000] [--repeat 20]
Generates the studies straight into a fresh SQLite database (each with 2 instances whose header files exist on
disk, one job, SR + SC deliveries, audit rows; states mixed as a working node has them), starts the dashboard the
way the node does (DashboardServer, token auth) and times full HTTP GETs from loopback: the first Studies page as an
authenticated admin (patient names read from 50 headers on a page's first visit, from memory after), first visits of
other pages, a state filter, an accession search, the Overview and one
study's detail page. Prints median and 95th percentile per page, and as JSON with --json.
"""
from __future__ import annotations

import argparse
import datetime as dt
import http.client
import json
import os
import random
import statistics
import sys
import tempfile
import time
from pathlib import Path

from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian, generate_uid
from sqlalchemy import insert

from dicomnode.config import config_from_dict
from dicomnode.dashboard import DashboardServer
from dicomnode.db import make_session_factory, upgrade_database
from dicomnode.db.models import AuditEvent, Delivery, Instance, Job, Study

TOKEN = "benchmark-token-0123456789"
STATES = ["DELIVERED"] * 80 + ["FAILED"] * 6 + ["RESULTS_READY"] * 4 + ["QUEUED"] * 4 + ["RECEIVING"] * 3 + \
    ["SKIPPED"] * 3
CR = "1.2.840.10008.5.1.4.1.1.1"


def _header_file(path: Path, study_uid: str, sop_uid: str, n: int) -> None:
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID, meta.MediaStorageSOPInstanceUID = CR, sop_uid
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = Dataset()
    ds.file_meta = meta
    ds.SOPClassUID, ds.SOPInstanceUID, ds.StudyInstanceUID = CR, sop_uid, study_uid
    ds.PatientName, ds.PatientID, ds.Modality = f"Bench^Patient{n:04d}", f"B{n:06d}", "CR"
    path.parent.mkdir(parents=True, exist_ok=True)
    ds.save_as(path, enforce_file_format=True)


def generate(data_dir: Path, studies: int, seed: int = 0) -> list[str]:
    """Write ``studies`` studies into the database of ``data_dir``; returns their UIDs."""
    rng = random.Random(seed)
    url = f"sqlite:///{data_dir / 'cxr-node.sqlite'}"
    upgrade_database(url)
    factory = make_session_factory(url)
    now = dt.datetime.now(dt.UTC)
    rows: dict[str, list[dict]] = {"studies": [], "instances": [], "jobs": [], "deliveries": [], "audit": []}
    uids = []
    for n in range(1, studies + 1):
        uid = generate_uid()
        uids.append(uid)
        state = rng.choice(STATES)
        received = now - dt.timedelta(minutes=rng.uniform(0, 60 * 24 * 14))
        rows["studies"].append(dict(id=n, study_instance_uid=uid, state=state, patient_id=f"B{n:06d}",
                                    accession_number=f"ACC{n:06d}", first_received_at=received,
                                    last_received_at=received + dt.timedelta(seconds=20), instance_count=2,
                                    selected_count=2, generation=1,
                                    state_reason="delivery dead-lettered: pacs: association refused"
                                    if state == "FAILED" else None))
        for k in range(2):
            sop = generate_uid()
            path = Path("spool") / uid / f"{sop}.dcm"
            _header_file(data_dir / path, uid, sop, n)
            rows["instances"].append(dict(study_id=n, sop_instance_uid=sop, sop_class_uid=CR,
                                          series_instance_uid=uid + ".1", modality="CR", body_part="CHEST",
                                          view_position=("PA", "LL")[k], path=str(path), size_bytes=300,
                                          selected=True, received_at=received, generation=1, calling_aet="MODALITY"))
        done = received + dt.timedelta(seconds=60)
        rows["jobs"].append(dict(id=n, study_id=n, generation=1, state=state, attempts=1, created_at=received,
                                 updated_at=done, queued_at=received, finished_at=done))
        if state in ("DELIVERED", "FAILED", "RESULTS_READY"):
            for kind in ("sr", "sc"):
                delivery_state = {"DELIVERED": "SENT", "FAILED": "DEAD", "RESULTS_READY": "PENDING"}[state]
                rows["deliveries"].append(dict(
                    job_id=n, destination="pacs", object_kind=kind, sop_instance_uid=generate_uid(),
                    sop_class_uid=CR, path=f"results/{uid}/{n}/{kind}-1.dcm", state=delivery_state,
                    attempts=1 if state != "FAILED" else 10, next_attempt_at=done,
                    sent_at=done if delivery_state == "SENT" else None,
                    last_error="association refused" if delivery_state == "DEAD" else None))
        for kind in ("association.accepted", "job.queued", "job.processing", f"job.{state.lower()}"):
            rows["audit"].append(dict(at=received, kind=kind, study_instance_uid=uid, job_id=n, detail={"n": n}))
    with factory.begin() as session:
        for model, key in ((Study, "studies"), (Instance, "instances"), (Job, "jobs"), (Delivery, "deliveries"),
                           (AuditEvent, "audit")):
            if rows[key]:
                session.execute(insert(model), rows[key])
    return uids


def _get(port: int, path: str) -> float:
    started = time.perf_counter()
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
    conn.request("GET", path, headers={"Authorization": f"Bearer {TOKEN}"})
    response = conn.getresponse()
    body = response.read()
    elapsed = time.perf_counter() - started
    conn.close()
    if response.status != 200:
        raise RuntimeError(f"GET {path}: HTTP {response.status}: {body[:200]!r}")
    return elapsed


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--studies", type=int, default=1000)
    parser.add_argument("--repeat", type=int, default=20)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="dashboard-bench-") as tmp:
        data_dir = Path(tmp)
        started = time.perf_counter()
        uids = generate(data_dir, args.studies)
        generated = time.perf_counter() - started
        os.environ["CXR_BENCH_DASHBOARD_TOKEN"] = TOKEN
        config = config_from_dict({
            "storage": {"data_dir": str(data_dir)}, "processing": {"processor": "passthrough"},
            "destinations": [{"name": "pacs", "ae_title": "PACS", "host": "127.0.0.1", "port": 104}],
            "dashboard": {"enabled": True, "port": 0,
                          "auth": {"type": "token", "token_env": "CXR_BENCH_DASHBOARD_TOKEN"}}}, environ={})
        factory = make_session_factory(config.database_url)
        pages = {
            "studies (page 1, patient names)": "/studies",
            "studies state=FAILED": "/studies?state=FAILED",
            "studies search accession": "/studies?q=ACC000500",
            "overview": "/",
            "study detail": f"/studies/{uids[len(uids) // 2]}",
            "failures": "/failures",
        }
        results = {}
        with DashboardServer(config, factory) as server:
            _get(server.port, "/studies?page=20")  # templates compiled, connection pool filled
            # first visit of a page: its 50 patient names read from the headers on disk (then cached)
            cold = sorted(_get(server.port, f"/studies?page={n}") for n in range(2, 2 + min(args.repeat, 18)))
            results["studies, first visit of a page"] = {
                "median_ms": round(statistics.median(cold) * 1000, 1),
                "p95_ms": round(cold[min(len(cold) - 1, int(len(cold) * 0.95))] * 1000, 1)}
            for name, path in pages.items():
                _get(server.port, path)  # warm: templates compiled, connection pool filled
                times = sorted(_get(server.port, path) for _ in range(args.repeat))
                results[name] = {"median_ms": round(statistics.median(times) * 1000, 1),
                                 "p95_ms": round(times[min(len(times) - 1, int(len(times) * 0.95))] * 1000, 1)}
    if args.json:
        print(json.dumps({"studies": args.studies, "repeat": args.repeat, "pages": results}, indent=1))
    else:
        print(f"{args.studies} studies generated in {generated:.1f} s; {args.repeat} GETs per page over loopback")
        for name, r in results.items():
            print(f"  {name:34s} median {r['median_ms']:7.1f} ms   p95 {r['p95_ms']:7.1f} ms")
    return 0


if __name__ == "__main__":
    sys.exit(main())
