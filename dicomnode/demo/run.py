"""The end-to-end demo: Orthanc as the PACS, a Lua routing rule, the node on loopback, SR + SC back in Orthanc.

``run_demo`` builds the untrained demo model (once), starts Orthanc and the node (SQLite, embedded defaults),
sends a synthetic PA + lateral chest study *to Orthanc* with DCMTK storescu, lets Orthanc's routing rule forward it
to the node, waits for the SR and the SC reasoning page to arrive back in Orthanc and returns where to look.
With ``viewer=True`` Orthanc also serves DICOMweb and OHIF (``dicomnode.peers.ohif``) shows the study. With
``ris=True`` the node also sends the study's results as an HL7 v2 ORU^R01 to an MLLP receiver (npm node-hl7-server)
and as a FHIR transaction Bundle to a FHIR server (npm @medplum/fhir-router), both on loopback
(``dicomnode.peers.node_peers``), with the shipped triage rules; the demo prints what each received.
"""
from __future__ import annotations

import contextlib
import json
import logging
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path

import numpy as np
import pydicom
from PIL import Image

from dicomnode.config import DashboardAuth, DashboardSection, NodeConfig, config_from_dict
from dicomnode.datadir import DataDir
from dicomnode.demo.synthetic import StudySpec, write_study
from dicomnode.node import Node, study_counts
from dicomnode.peers.dcmtk import storescu
from dicomnode.peers.node_peers import FhirServer, MllpReceiver
from dicomnode.peers.ohif import OhifServer, find_ohif_dist
from dicomnode.peers.orthanc import OrthancServer
from dicomnode.peers.ports import free_port

log = logging.getLogger(__name__)

NODE_AET = "CXRNODE"
PACS_AET = "ORTHANC"
ROUTING_RULE = "route-chest-to-cxrnode.lua"
SC_SOP_CLASS = "1.2.840.10008.5.1.4.1.1.7"


def routing_rule_path() -> Path:
    """The Orthanc Lua rule that forwards stable CR/DX chest studies to the node (shipped with the package)."""
    return Path(str(resources.files("dicomnode.data").joinpath(ROUTING_RULE)))


@dataclass
class DemoResult:
    orthanc_url: str
    study_url: str
    sr_urls: list[str] = field(default_factory=list)
    page_preview_urls: list[str] = field(default_factory=list)
    page_pngs: list[Path] = field(default_factory=list)
    sr_files: list[Path] = field(default_factory=list)  # the objects the node wrote and sent, on local disk
    sc_files: list[Path] = field(default_factory=list)
    record_json: Path | None = None
    study_instance_uid: str = ""
    viewer_url: str = ""  # OHIF, open on the study (only with viewer=True)
    dashboard_url: str = ""  # the node's admin dashboard (up while the demo runs)
    dashboard_token: str = ""  # its login token, made for this demo run
    seconds: float = 0.0
    # with ris=True: what the MLLP receiver and the FHIR server received
    oru: str = ""  # the ORU^R01 as node-hl7-server received it (segments separated by CR)
    oru_fields: dict[str, object] = field(default_factory=dict)  # as node-hl7-client read it
    fhir_resources: list[dict[str, object]] = field(default_factory=list)  # as the FHIR server stored them
    ris_files: list[Path] = field(default_factory=list)
    triage: str = ""  # the study's triage, as the node's database has it


def ensure_demo_model(model_dir: Path) -> Path:
    """Build the untrained demo model into ``model_dir`` unless one is already there."""
    from inference.model.demo import build_demo_model
    from inference.model.loading import read_marker

    if (model_dir / "config.json").is_file() and read_marker(model_dir).get("demo"):
        return model_dir
    shutil.rmtree(model_dir, ignore_errors=True)
    return build_demo_model(model_dir, family="qwen2_5_vl", size="tiny")


def ris_destinations(mllp: MllpReceiver, fhir: FhirServer) -> list[dict[str, object]]:
    """The demo's HL7 and FHIR destinations."""
    retry = {"max_attempts": 5, "initial_seconds": 1, "max_seconds": 10}
    return [{"name": "ris", "type": "hl7", "host": "127.0.0.1", "port": mllp.port, "sending_facility": "DEMO",
             "receiving_application": "RIS", "receiving_facility": "DEMO", "processing_id": "D", "retry": retry},
            {"name": "fhir", "type": "fhir", "url": fhir.url, "retry": retry}]


def demo_config(workdir: Path, model_dir: Path, node_port: int, orthanc: OrthancServer,
                extra_destinations: list[dict[str, object]] | None = None) -> NodeConfig:
    """Embedded defaults (SQLite in the data dir) plus the loopback peers of the demo; the shipped triage rules."""
    from inference.triage import DEFAULT_RULES

    return config_from_dict({
        "node": {"ae_title": NODE_AET, "host": "127.0.0.1", "port": node_port, "min_free_disk_mb": 64},
        "storage": {"data_dir": str(workdir / "node")},
        "study": {"quiet_seconds": 2},
        "destinations": [{"name": "pacs", "ae_title": orthanc.aet, "host": "127.0.0.1",
                          "port": orthanc.dicom_port, "objects": ["sr", "sc"],
                          "retry": {"max_attempts": 5, "initial_seconds": 1, "max_seconds": 10}},
                         *(extra_destinations or [])],
        "triage": {"rules": [{"finding": r.finding, "priority": r.priority.value, "when": r.when.value}
                             for r in DEFAULT_RULES]},
        "processing": {"processor": "reasoning", "poll_seconds": 0.2},
        "model": {"path": str(model_dir), "quantization": "nf4", "device": "auto"},
        "reasoning": {"max_new_tokens": 24,
                      "priors": {"enabled": True, "query_aet": orthanc.aet, "host": "127.0.0.1",
                                 "port": orthanc.dicom_port, "calling_aet": NODE_AET}},
        "logging": {"level": "WARNING"},
    })


DASHBOARD_TOKEN_ENV = "CXR_DEMO_DASHBOARD_TOKEN"


def enable_demo_dashboard(config: NodeConfig) -> str:
    """Turn the admin dashboard on (loopback, a free port, token auth with a token made now); returns the token."""
    import os
    import secrets

    token = secrets.token_urlsafe(24)
    os.environ[DASHBOARD_TOKEN_ENV] = token
    config.dashboard = DashboardSection(enabled=True, host="127.0.0.1", port=free_port(),
                                        auth=DashboardAuth(type="token", token_env=DASHBOARD_TOKEN_ENV))
    return token


def save_page_png(sc_path: Path, out_dir: Path) -> Path:
    """A PNG copy of one Secondary Capture page from the node's results."""
    ds = pydicom.dcmread(sc_path)
    out = out_dir / f"page-{int(ds.get('InstanceNumber', 1))}.png"
    Image.fromarray(np.asarray(ds.pixel_array, dtype=np.uint8), "RGB").save(out)
    return out


def _job_failure(node: Node, study_uid: str) -> str | None:
    """The error of the study's newest job when it FAILED, else None."""
    from sqlalchemy import select

    from dicomnode.db.models import Job, Study
    from dicomnode.db.states import JobState

    assert node.session_factory is not None
    with node.session_factory() as session:
        job = session.scalars(select(Job).join(Study, Job.study_id == Study.id)
                              .where(Study.study_instance_uid == study_uid)
                              .order_by(Job.generation.desc())).first()
        if job is not None and job.state == JobState.FAILED.value:
            return job.error or "FAILED"
    return None


def results_of_study(orthanc: OrthancServer, study_uid: str) -> tuple[list[dict], list[dict]]:
    """(SR instances, SC instances) Orthanc holds for the study."""
    instances = orthanc.instances_of_study(study_uid)
    srs, pages = [], []
    for inst in instances:
        sop_class = orthanc.rest_get(f"/instances/{inst['ID']}/metadata/SopClassUid")
        if str(sop_class).startswith("1.2.840.10008.5.1.4.1.1.88."):
            srs.append(inst)
        elif sop_class == SC_SOP_CLASS:
            pages.append(inst)
    return srs, pages


def _study_triage(node: Node, study_uid: str) -> str:
    from sqlalchemy import select

    from dicomnode.db.models import Job, Study

    assert node.session_factory is not None
    with node.session_factory() as session:
        row = session.execute(select(Job.triage_priority, Job.triage_reason).join(Study, Job.study_id == Study.id)
                              .where(Study.study_instance_uid == study_uid)
                              .order_by(Job.generation.desc())).first()
    if row is None or row[0] is None:
        return ""
    return row[0] + (f" ({row[1]})" if row[1] else "")


def _dead_ris(node: Node, study_uid: str) -> str | None:
    """The error of a dead HL7 / FHIR delivery of the study, else None."""
    from sqlalchemy import select

    from dicomnode.db.models import Delivery, Job, Study
    from dicomnode.db.states import DeliveryState

    assert node.session_factory is not None
    with node.session_factory() as session:
        row = session.execute(select(Delivery.destination, Delivery.last_error).join(Job).join(Study)
                              .where(Study.study_instance_uid == study_uid,
                                     Delivery.state == DeliveryState.DEAD.value,
                                     Delivery.destination.in_(("ris", "fhir")))).first()
    return f"{row[0]}: {row[1]}" if row else None


def wait_for_ris(node: Node, study_uid: str, mllp: MllpReceiver, fhir: FhirServer, deadline: float,
                 result: DemoResult, out_dir: Path) -> None:
    """Until the MLLP receiver and the FHIR server have the study's results; what they got goes into ``result``
    and ``out_dir`` (received.hl7, fhir-stored.json)."""
    while not (mllp.received() and fhir.received()):
        dead = _dead_ris(node, study_uid)
        if dead:
            raise RuntimeError(f"the RIS outputs were not delivered: {dead}")
        if time.monotonic() > deadline:
            raise TimeoutError("the MLLP receiver or the FHIR server got nothing in time")
        time.sleep(0.5)
    got = mllp.received()[-1]
    result.oru, result.oru_fields = str(got["raw"]).replace("\n", "\r"), dict(got["fields"])
    result.fhir_resources = list(fhir.received()[-1]["resources"])
    oru_file, fhir_file = out_dir / "received.hl7", out_dir / "fhir-stored.json"
    oru_file.write_text(result.oru.replace("\r", "\n"), encoding="utf-8")
    fhir_file.write_text(json.dumps(result.fhir_resources, indent=1, ensure_ascii=False), encoding="utf-8")
    result.ris_files = [oru_file, fhir_file]
    result.triage = _study_triage(node, study_uid)


def run_demo(workdir: Path, timeout: float = 900.0, keep_running: bool = False,
             say: Callable[[str], None] = print, viewer: bool = False,
             ohif_dist: Path | None = None, ris: bool = False) -> DemoResult:
    """Run the whole demo in ``workdir`` (its orthanc/ and node/ folders are recreated; the model is kept).

    ``viewer``: Orthanc loads its DICOMweb plugin and OHIF is served on loopback in front of it; ``viewer_url``
    opens the study. The viewer is up only while the demo runs, so use it with ``keep_running``. ``ris``: the
    results also go to an MLLP receiver (HL7 ORU) and a FHIR server on loopback; ``result`` holds what they got.
    """
    started = time.perf_counter()
    dist = find_ohif_dist(ohif_dist) if viewer else None  # fail before the long part when OHIF is missing
    workdir = workdir.resolve()
    for sub in ("orthanc", "node", "study", "out", "ris"):
        shutil.rmtree(workdir / sub, ignore_errors=True)
    out_dir = workdir / "out"
    out_dir.mkdir(parents=True)

    say("Building the demo model (untrained, random weights: its answers are meaningless) ...")
    model_dir = ensure_demo_model(workdir / "model")

    node_port = free_port()
    orthanc = OrthancServer(workdir / "orthanc", aet=PACS_AET, stable_age=2,
                            modalities={NODE_AET: (NODE_AET, "127.0.0.1", node_port)},
                            lua_scripts=[routing_rule_path()], dicomweb=viewer)
    peers = contextlib.ExitStack()
    mllp = fhir = None
    if ris:
        mllp, fhir = MllpReceiver(workdir / "ris" / "mllp"), FhirServer(workdir / "ris" / "fhir")
        say(f"Starting an HL7 MLLP receiver (npm node-hl7-server) on 127.0.0.1:{mllp.port} and a FHIR server "
            f"(npm @medplum/fhir-router, in memory) at {fhir.url} ...")
        peers.enter_context(mllp)
        peers.enter_context(fhir)
    config = demo_config(workdir, model_dir, node_port, orthanc,
                         ris_destinations(mllp, fhir) if mllp and fhir else None)
    dashboard_token = enable_demo_dashboard(config)
    say(f"Starting Orthanc (PACS) on DICOM port {orthanc.dicom_port}, HTTP {orthanc.url} ...")
    with peers, orthanc:
        say(f"Starting the node {NODE_AET} on 127.0.0.1:{node_port} (SQLite in {config.storage.data_dir}) ...")
        with Node(config, role="all") as node:
            spec = StudySpec(patient_name="Demo^Patient", patient_id="DEMO0001", accession_number="DEMO0001")
            files = write_study(workdir / "study", spec)
            say(f"Sending a synthetic PA + lateral chest study to Orthanc with storescu ({len(files)} files) ...")
            done = storescu(files, PACS_AET, "127.0.0.1", orthanc.dicom_port, calling_aet="MODALITY")
            if done.returncode != 0:
                raise RuntimeError(f"storescu to Orthanc failed: {done.stderr or done.stdout}")
            say("Orthanc's routing rule forwards the study once stable; the node reasons and sends results back ...")
            deadline = time.monotonic() + timeout
            last_counts: dict[str, int] = {}
            while True:
                srs, pages = results_of_study(orthanc, spec.study_instance_uid)
                if srs and pages:
                    break
                assert node.session_factory is not None
                counts = study_counts(node.session_factory)
                if counts != last_counts:
                    say(f"  node studies by state: {counts}")
                    last_counts = counts
                failure = _job_failure(node, spec.study_instance_uid)
                if failure:
                    raise RuntimeError(f"the node could not process the study: {failure}")
                if time.monotonic() > deadline:
                    raise TimeoutError(f"no SR and SC in Orthanc after {timeout:.0f} s (node: {counts})")
                time.sleep(1.0)
            time.sleep(2.0)  # let the remaining pages of a multi-page result land
            srs, pages = results_of_study(orthanc, spec.study_instance_uid)
            study_id = orthanc.rest_get(f"/instances/{srs[0]['ID']}/study")["ID"]
            study_results = DataDir(config.storage.data_dir).study_results(spec.study_instance_uid)
            results = sorted(study_results.glob("*/sc-*.dcm"))
            records = sorted(study_results.glob("*/record.json"))
            result = DemoResult(
                orthanc_url=orthanc.url,
                study_url=f"{orthanc.url}/app/explorer.html#study?uuid={study_id}",
                sr_urls=[f"{orthanc.url}/instances/{i['ID']}/file" for i in srs],
                page_preview_urls=[f"{orthanc.url}/instances/{i['ID']}/preview" for i in pages],
                page_pngs=sorted((save_page_png(p, out_dir) for p in results), key=lambda p: int(p.stem.split('-')[1])),
                sr_files=sorted(study_results.glob("*/sr-*.dcm")),
                sc_files=results,
                record_json=records[-1] if records else None,
                study_instance_uid=spec.study_instance_uid,
                dashboard_url=node.dashboard.url if node.dashboard else "",
                dashboard_token=dashboard_token,
                seconds=time.perf_counter() - started,
            )
            if mllp and fhir:
                say("Waiting for the HL7 ORU and the FHIR Bundle to reach the RIS peers ...")
                wait_for_ris(node, spec.study_instance_uid, mllp, fhir, deadline, result, out_dir)
            for i, page in enumerate(pages, start=1):  # Orthanc's own rendering of the page, as a viewer sees it
                (out_dir / f"orthanc-preview-{i}.png").write_bytes(
                    orthanc.rest_get_bytes(f"/instances/{page['ID']}/preview"))
            ohif = OhifServer(orthanc.url, dist=dist).start() if viewer else None
            try:
                if ohif is not None:
                    result.viewer_url = ohif.viewer_url(spec.study_instance_uid)
                if keep_running:
                    _print_result(result, say)
                    say("Orthanc and the node keep running; press Ctrl-C to stop.")
                    try:
                        while True:
                            time.sleep(3600)
                    except KeyboardInterrupt:
                        pass
            finally:
                if ohif is not None:
                    ohif.stop()
    return result


def _print_result(result: DemoResult, say: Callable[[str], None]) -> None:
    say("")
    say("Results are back in the PACS (AI-generated, NOT verified; DEMO model: untrained, meaningless output):")
    say(f"  Orthanc:              {result.orthanc_url}")
    say(f"  study in Orthanc:     {result.study_url}")
    for url in result.sr_urls:
        say(f"  Structured Report:    {url}")
    for url in result.page_preview_urls:
        say(f"  reasoning page:       {url}")
    for path in result.sr_files:
        say(f"  SR file:              {path}")
    for path in result.sc_files:
        say(f"  SC file:              {path}")
    for png in result.page_pngs:
        say(f"  page PNG:             {png}")
    if result.record_json:
        say(f"  reasoning record:     {result.record_json}")
    if result.dashboard_url:
        say(f"  node dashboard:       {result.dashboard_url}")
        say(f"    (log in with the demo token {result.dashboard_token}; it is new on every demo run)")
    if result.viewer_url:
        say(f"  OHIF viewer:          {result.viewer_url}")
        say("    (double-click the SR in the study browser for the boxes, answer Yes to list them by finding;")
        say("     double-click the reasoning pages to read them)")
    if result.oru or result.fhir_resources:
        print_ris(result, say)
    say(f"  total time:           {result.seconds:.1f} s")


def print_ris(result: DemoResult, say: Callable[[str], None]) -> None:
    """What the MLLP receiver and the FHIR server received."""
    say(f"  triage (node):        {result.triage or '-'}")
    fields = result.oru_fields
    say(f"  HL7 ORU^R01 as node-hl7-server received it (control ID {fields.get('control_id')}, result status "
        f"{fields.get('result_status')}, priority {fields.get('priority') or 'none (routine)'}):")
    for segment in result.oru.split("\r"):
        if segment:
            say(f"    {segment}")
    kinds: dict[str, int] = {}
    for resource in result.fhir_resources:
        kinds[str(resource.get("resourceType"))] = kinds.get(str(resource.get("resourceType")), 0) + 1
    say("  FHIR server stored (each checked by @medplum/core validateResource): "
        + ", ".join(f"{n} {kind}" for kind, n in kinds.items()))
    for resource in result.fhir_resources:
        if resource.get("resourceType") == "DiagnosticReport":
            say(f"    DiagnosticReport/{resource.get('id')}: status {resource.get('status')}; conclusion: "
                f"{str(resource.get('conclusion'))[:160]}")
        elif resource.get("resourceType") == "Flag":
            code = resource.get("code")
            say(f"    Flag/{resource.get('id')}: {code.get('text') if isinstance(code, dict) else code}")
    for path in result.ris_files:
        say(f"  received, on disk:    {path}")


print_result = _print_result
