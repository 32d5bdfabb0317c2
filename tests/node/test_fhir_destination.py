"""``type: fhir``: a result set goes out as a FHIR R4 transaction Bundle to a real FHIR server (npm
@medplum/fhir-router in memory, every stored resource checked by @medplum/core's validateResource) with bearer auth
from the environment; PyPI fhir.resources validates the Bundle on the Python side. The report is preliminary and
marked AI/unverified, one Observation per finding, a Flag for the raised triage priority; an amendment updates the
same resources (status amended); a refusal (401, an invalid resource) is dead-lettered with the server's reason, an
unreachable server is retried and loses nothing."""
from __future__ import annotations

import base64
import json
from collections.abc import Iterator

import pytest
import requests
from delivery_support import deliveries, ingest_files, job
from fhir.resources.R4B.bundle import Bundle
from ris_support import ReasonedProcessor, deliver_until_settled, fhir_destination, process, ris_config

from dicomnode.db.states import DeliveryState, JobState
from dicomnode.delivery import Deliverer
from dicomnode.peers.node_peers import FhirServer
from dicomnode.peers.ports import free_port
from dicomnode.worker import Worker
from sr_writer.fhir import resource_id

pytestmark = pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)
TOKEN = "fhir-test-token"
REPORT = "Line one | ^ ~ \\ & end\rsecond: Größe 胸部\x0c\u00a0\u2028\x00 last"  # not all valid in a FHIR string


@pytest.fixture
def server(tmp_path, monkeypatch) -> Iterator[FhirServer]:
    """The FHIR server, its bearer token in ``CXR_TEST_FHIR_TOKEN``."""
    monkeypatch.setenv("CXR_TEST_FHIR_TOKEN", TOKEN)
    with FhirServer(tmp_path / "fhir", token=TOKEN) as fhir:
        yield fhir


def _bearer(url: str, **keys: object) -> dict[str, object]:
    return fhir_destination(url, auth={"type": "bearer", "token_env": "CXR_TEST_FHIR_TOKEN"}, **keys)


def _get(server: FhirServer, path: str) -> dict[str, object]:
    response = requests.get(f"{server.url}/{path}", headers={"Authorization": f"Bearer {TOKEN}"}, timeout=10)
    response.raise_for_status()
    body: dict[str, object] = response.json()
    return body


def _search(server: FhirServer, kind: str) -> list[dict[str, object]]:
    bundle = _get(server, kind)
    return [entry["resource"] for entry in bundle.get("entry", [])]  # type: ignore[attr-defined, index]


def test_a_bundle_is_stored_validated_and_marked(tmp_path, data_dir, database_url, session_factory, study_factory,
                                                 server: FhirServer) -> None:
    study = study_factory()
    config = ris_config(data_dir, database_url, [_bearer(server.url)])
    job_id = process(config, session_factory, study.files, positive=("pneumothorax",), uncertain=("edema",),
                     findings_text=REPORT, impression_text=REPORT, thresholds={"pneumothorax": 0.3})
    [row] = deliveries(session_factory, job_id)
    assert (row.object_kind, row.media_type) == ("fhir", "application/fhir+json")
    body = json.loads((data_dir / row.path).read_text(encoding="utf-8"))  # stored before it is sent
    Bundle.model_validate(body)  # fhir.resources (R4B models: these resources are as in R4)
    deliver_until_settled(Deliverer(config, session_factory), session_factory, job_id)
    assert job(session_factory, job_id).state == JobState.DELIVERED.value
    [stored] = server.received()
    assert stored["status"] == 200 and len(stored["resources"]) == len(body["entry"])
    report = _get(server, f"DiagnosticReport/{resource_id(study.study_instance_uid, 'report')}")
    observations = _search(server, "Observation")
    [flag] = _search(server, "Flag")
    assert report["status"] == "preliminary"
    assert report["imagingStudy"] == [{"type": "ImagingStudy", "identifier": {
        "system": "urn:dicom:uid", "value": f"urn:oid:{study.study_instance_uid}"}}]
    conclusion = str(report["conclusion"])
    assert conclusion.startswith("AI-generated, not verified by a physician. DEMO: output of an untrained demo")
    text = base64.b64decode(report["presentedForm"][0]["data"]).decode("utf-8")  # type: ignore[index]
    assert REPORT.replace("\r", "\n") in text.replace("\r", "\n")  # the attachment keeps the text as it was
    assert "Line one | ^ ~ \\ & end\rsecond: Größe 胸部" in conclusion and conclusion.endswith(" last")
    assert "\u00a0" not in json.dumps(report, ensure_ascii=False)  # the strings hold what FHIR strings may
    assert len(observations) == 18 and len(report["result"]) == 18  # type: ignore[arg-type]
    by_code = {o["code"]["coding"][0]["code"]: o for o in observations}  # type: ignore[index]
    pneumothorax, edema = by_code["36118008"], by_code["19242006"]
    assert pneumothorax["valueCodeableConcept"]["coding"][0]["code"] == "52101004"  # type: ignore[index]
    assert [i["coding"][0]["code"] for i in pneumothorax["interpretation"]] == ["POS", "AA"]  # type: ignore[index]
    assert [i["coding"][0]["code"] for i in edema["interpretation"]] == ["IND"]  # uncertain stays uncertain
    percent = {"unit": "%", "system": "http://unitsofmeasure.org", "code": "%"}
    assert [(c["code"]["coding"][0]["code"], c["valueQuantity"]) for c in pneumothorax["component"]] == [  # type: ignore[index]
        ("111012", {"value": 83.0, **percent}), ("THRESHOLD", {"value": 30.0, **percent})]  # probability, threshold
    assert [c["valueQuantity"]["value"] for c in edema["component"]] == [45.0]  # type: ignore[index]
    assert all("component" in o for o in observations)  # every finding has its probability
    assert by_code["52988006"]["bodySite"]["coding"][0]["code"] == "39607008"  # type: ignore[index]  # lung
    assert flag["status"] == "active"
    assert flag["code"]["coding"][0] == {"system": "http://hl7.org/fhir/request-priority", "code": "stat",  # type: ignore[index]
                                         "display": "STAT"}
    assert flag["extension"][0]["valueCodeableConcept"]["coding"][0]["code"] == "PH"  # type: ignore[index]
    assert flag["code"]["text"].startswith("AI triage: STAT (Pneumothorax present).")  # type: ignore[index]


def test_an_amendment_updates_the_same_resources(tmp_path, data_dir, database_url, session_factory, study_factory,
                                                 server: FhirServer) -> None:
    import pydicom

    study = study_factory()
    config = ris_config(data_dir, database_url, [_bearer(server.url)])
    first = process(config, session_factory, study.files, positive=("pneumothorax",))
    deliver_until_settled(Deliverer(config, session_factory), session_factory, first)
    ds = pydicom.dcmread(study.files[0])
    ds.SOPInstanceUID = pydicom.uid.generate_uid()
    ds.save_as(tmp_path / "extra.dcm")
    second = ingest_files(config, session_factory, [tmp_path / "extra.dcm"])
    worker = Worker(config, session_factory, ReasonedProcessor(config, positive=()), worker_id="w")
    while worker.run_once():
        pass
    deliver_until_settled(Deliverer(config, session_factory), session_factory, second)
    assert job(session_factory, second).state == JobState.DELIVERED.value
    reports = _search(server, "DiagnosticReport")
    pneumothorax = _get(server, f"Observation/{resource_id(study.study_instance_uid, 'finding/pneumothorax')}")
    [flag] = _search(server, "Flag")
    assert len(reports) == 1 and reports[0]["status"] == "amended"
    assert pneumothorax["status"] == "amended"
    assert pneumothorax["valueCodeableConcept"]["coding"][0]["code"] == "272519000"  # type: ignore[index]  # absent
    assert flag["status"] == "active"  # triage never lowers: the earlier Flag stays for the radiologist


def test_refusals_are_dead_with_the_servers_reason(tmp_path, data_dir, database_url, session_factory,
                                                  study_factory, server: FhirServer, monkeypatch) -> None:
    monkeypatch.setenv("CXR_TEST_FHIR_WRONG", "not-the-token")
    wrong = fhir_destination(server.url, name="wrong-token",
                             auth={"type": "bearer", "token_env": "CXR_TEST_FHIR_WRONG"})
    config = ris_config(data_dir, database_url, [wrong, _bearer(server.url, name="tampered")])
    job_id = process(config, session_factory, study_factory().files)
    rows = {r.destination: r for r in deliveries(session_factory, job_id)}
    tampered = data_dir / rows["tampered"].path
    body = json.loads(tampered.read_text(encoding="utf-8"))
    body["entry"][0]["resource"]["result"] = "Observation/x"  # not a list of references
    tampered.write_text(json.dumps(body), encoding="utf-8")
    deliver_until_settled(Deliverer(config, session_factory), session_factory, job_id)
    assert server.received() == []
    rows = {r.destination: r for r in deliveries(session_factory, job_id)}
    assert (rows["wrong-token"].state, rows["wrong-token"].attempts) == (DeliveryState.DEAD.value, 1)
    assert "refused the Bundle (401): missing or wrong Authorization" in (rows["wrong-token"].last_error or "")
    assert (rows["tampered"].state, rows["tampered"].attempts) == (DeliveryState.DEAD.value, 1)
    assert "refused the Bundle (400): DiagnosticReport/" in (rows["tampered"].last_error or "")


def test_an_unreachable_server_is_retried_and_loses_nothing(tmp_path, data_dir, database_url, session_factory,
                                                           study_factory, monkeypatch) -> None:
    monkeypatch.setenv("CXR_TEST_FHIR_TOKEN", TOKEN)
    port = free_port()
    url = f"http://127.0.0.1:{port}/fhir/R4"
    config = ris_config(data_dir, database_url, [_bearer(url, retry={"max_attempts": 5, "initial_seconds": 0.05,
                                                                     "max_seconds": 0.1})])
    job_id = process(config, session_factory, study_factory().files)
    deliverer = Deliverer(config, session_factory, rng=lambda: 0.5)
    deliverer.run_once()
    [row] = deliveries(session_factory, job_id)
    assert (row.state, row.attempts) == (DeliveryState.PENDING.value, 1)
    assert row.last_error == f"cannot reach {url}: ConnectionError"
    with FhirServer(tmp_path / "fhir", port=port, token=TOKEN) as server:
        deliver_until_settled(deliverer, session_factory, job_id)
        assert len(server.received()) == 1
    assert job(session_factory, job_id).state == JobState.DELIVERED.value
