"""``type: hl7``: a result set goes out as an HL7 v2.5.1 ORU^R01 over MLLP to real receivers (npm node-hl7-server
and python-hl7's MLLP server, each parsing it with its own library; we parse what they received with hl7apy, a
third). Source values with ``| ^ ~ \\ &``, CR and non-ASCII arrive intact and escaped; triage shows as OBR-27/ORC-7
and an AA flag; an amendment is a correction naming the message it replaces; AE is retried with its reason, AR is
dead-lettered at once; a receiver that answers garbage, closes mid-answer, closes without answering or never
answers gets a retry with the reason named, and the message stays stored until a receiver takes it; MLLP over
TLS."""
from __future__ import annotations

import json
from pathlib import Path

import pydicom
import pytest
from delivery_support import deliveries, ingest_files, job
from hl7apy.consts import VALIDATION_LEVEL
from hl7apy.parser import parse_message
from ris_support import deliver_until_settled, hl7_destination, process, ris_config
from sqlalchemy import update
from test_delivery_tls import _certificate

from dicomnode import metrics
from dicomnode.db.models import Delivery, Job, Study, utcnow
from dicomnode.db.states import DeliveryState, JobState
from dicomnode.delivery import Deliverer
from dicomnode.peers.node_peers import MllpReceiver
from dicomnode.peers.ports import free_port
from sr_writer.hl7.encoding import unescape
from tests.hl7_receivers import MisbehavingReceiver, PythonHl7Receiver

pytestmark = pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)

NAME = "Müller|Groß~Łukasz&Co^Zoë"  # PN: family^given
PATIENT_ID = "P|1^2~3&4Ω"
DESCRIPTION = "THORAX | PA ~ LAT & 胸部 ^x"
REPORT = "Line one | ^ ~ \\ & end\rsecond line: Größe 胸部\nthird line"


def _study(study_factory, **fields):  # type: ignore[no-untyped-def]
    study = study_factory(**fields)
    for path in study.files:  # a study description the spec has no field for
        ds = pydicom.dcmread(path)
        ds.StudyDescription = DESCRIPTION
        ds.save_as(path)
    return study


def _fields(message: str) -> dict[str, list[list[str]]]:
    """Segment name -> its rows, each a list of raw fields (index = field number; MSH shifted so MSH-n is [n])."""
    out: dict[str, list[list[str]]] = {}
    for line in message.replace("\n", "\r").split("\r"):
        if line:
            parts = line.split("|")
            if parts[0] == "MSH":
                parts = ["MSH", "|", *parts[1:]]
            out.setdefault(parts[0], []).append(parts)
    return out


def _check_oru(message: str, stored: list[Delivery], data_dir: Path, result_status: str = "P",
               pneumothorax_threshold: float | None = None) -> None:
    """What every receiver got: valid v2.5.1 (hl7apy, strict), the values as the sources and the model had them
    (``pneumothorax_threshold``: the operating point configured for it, in percent)."""
    parsed = parse_message(message.replace("\n", "\r"), validation_level=VALIDATION_LEVEL.STRICT, find_groups=True)
    assert parsed.validate() is True
    assert parsed.msh.msh_9.to_er7() == "ORU^R01^ORU_R01" and parsed.msh.msh_18.to_er7() == "UNICODE UTF-8"
    f = _fields(message)
    assert unescape(f["PID"][0][3].split("^")[0]) == PATIENT_ID
    family, given = f["PID"][0][5].split("^")[:2]
    assert (unescape(family), unescape(given)) == tuple(NAME.split("^"))
    obr = f["OBR"][0]
    assert unescape(obr[4].split("^")[1]) == DESCRIPTION and obr[25] == result_status
    assert obr[27] == "^^^^^S" and f["ORC"][0][7] == "^^^^^S"  # triage: pneumothorax present -> STAT
    obx = f["OBX"]
    finding = next(row for row in obx if row[3].startswith("36118008^"))
    assert (finding[2], finding[5], finding[8], finding[11]) == ("CWE", "52101004^Present^SCT", "AA", result_status)
    edema = next(row for row in obx if row[3].startswith("19242006^"))
    assert edema[5].startswith("64957009^Uncertain") and edema[8] == ""  # uncertain: no flag
    scores = {(row[4], row[3].split("^")[0]): (float(row[5]), row[6]) for row in obx if row[2] == "NM"}
    assert scores[(finding[4], "111012")] == (83.0, "%^Percent^UCUM")  # the probability of presence, same sub-ID
    assert scores.get((finding[4], "THRESHOLD")) == (  # the site's operating point, when one decided
        None if pneumothorax_threshold is None else (pneumothorax_threshold, "%^Percent^UCUM"))
    assert scores[(edema[4], "111012")] == (45.0, "%^Percent^UCUM") and (edema[4], "THRESHOLD") not in scores
    assert sum(1 for key in scores if key[1] == "111012") == 18  # every checklist finding has its score
    findings_text = [unescape(row[5]) for row in obx if row[3].startswith("121070^")]
    assert findings_text == REPORT.replace("\r", "\n").split("\n")
    assert any("AI-generated, not verified by a physician." in unescape(row[5]) for row in obx)
    assert any(unescape(row[5]).startswith("DEMO:") for row in obx)
    uids = {unescape(row[5]) for row in obx if row[2] == "ST"}
    folder = (data_dir / stored[0].path).parent  # the job's results: the SR, the pages, the message
    objects = [pydicom.dcmread(p, stop_before_pixels=True) for p in sorted(folder.glob("*.dcm"))]
    assert len(objects) >= 2 and {o.Modality for o in objects} == {"SR", "OT"}
    for obj in objects:  # the SR's and the pages' UIDs, and the study's
        assert {str(obj.SOPInstanceUID), str(obj.SeriesInstanceUID), str(obj.StudyInstanceUID)} <= uids
    assert "\r" not in "".join(row[5] for row in obx)  # a CR inside a value would have ended the segment


def test_an_oru_reaches_two_real_receivers_intact(tmp_path, data_dir, database_url, session_factory,
                                                  study_factory) -> None:
    study = _study(study_factory, patient_name=NAME, patient_id=PATIENT_ID)
    with MllpReceiver(tmp_path / "node-hl7") as node_hl7, PythonHl7Receiver() as python_hl7:
        config = ris_config(data_dir, database_url, [hl7_destination(node_hl7.port, "ris"),
                                                     hl7_destination(python_hl7.port, "ris2")])
        job_id = process(config, session_factory, study.files, positive=("pneumothorax",), uncertain=("edema",),
                         findings_text=REPORT, thresholds={"pneumothorax": 0.3})
        rows = deliveries(session_factory, job_id)
        messages = [r for r in rows if r.object_kind == "hl7"]
        assert len(messages) == 2 and {r.media_type for r in messages} == {"application/hl7-v2"}
        assert all((data_dir / r.path).is_file() for r in messages)  # stored before it is sent
        stored = (data_dir / messages[0].path).read_bytes()
        assert stored.decode("utf-8").startswith("MSH|^~\\&|CXRNODE|CXR|RIS|HOSP|")
        before = metrics.REGISTRY.get_sample_value("cxrnode_delivery_attempts_total", {"destination": "ris"}) or 0
        deliver_until_settled(Deliverer(config, session_factory), session_factory, job_id)
        assert job(session_factory, job_id).state == JobState.DELIVERED.value
        assert {r.state for r in deliveries(session_factory, job_id)} == {DeliveryState.SENT.value}
        assert metrics.REGISTRY.get_sample_value("cxrnode_delivery_attempts_total", {"destination": "ris"}) \
            == before + 1
        [got] = node_hl7.received()
        assert got["fields"]["control_id"] == messages[0].payload_key and got["fields"]["priority"] == "S"
        assert got["fields"]["patient_id"] == PATIENT_ID  # node-hl7-client unescapes it
        assert got["ack"] == "AA"
        [python_got] = python_hl7.messages
    _check_oru(got["raw"], rows, data_dir, pneumothorax_threshold=30.0)
    _check_oru(python_got, rows, data_dir, pneumothorax_threshold=30.0)
    assert got["raw"].replace("\n", "\r").strip("\r") == stored.decode("utf-8").strip("\r")  # byte for byte


def _second_generation(config, session_factory, study, data_dir) -> int:  # type: ignore[no-untyped-def]
    """One more instance of the study after its first job: the next generation (an amendment)."""
    ds = pydicom.dcmread(study.files[0])
    ds.SOPInstanceUID = pydicom.uid.generate_uid()
    extra = data_dir.parent / "extra.dcm"
    ds.save_as(extra)
    return ingest_files(config, session_factory, [extra])


def test_an_amendment_is_a_correction_naming_the_original(tmp_path, data_dir, database_url, session_factory,
                                                          study_factory) -> None:
    from ris_support import ReasonedProcessor

    from dicomnode.worker import Worker

    study = _study(study_factory, patient_name=NAME, patient_id=PATIENT_ID)
    with PythonHl7Receiver() as receiver:
        config = ris_config(data_dir, database_url, [hl7_destination(receiver.port)])
        first = process(config, session_factory, study.files, uncertain=("edema",), findings_text=REPORT)
        deliver_until_settled(Deliverer(config, session_factory), session_factory, first)
        second = _second_generation(config, session_factory, study, data_dir)
        assert second != first
        worker = Worker(config, session_factory, ReasonedProcessor(config, uncertain=("edema",),
                                                                   findings_text=REPORT), worker_id="w")
        while worker.run_once():
            pass
        deliver_until_settled(Deliverer(config, session_factory), session_factory, second)
        assert job(session_factory, second).state == JobState.DELIVERED.value
        original, correction = receiver.messages
    keys = [next(r.payload_key for r in deliveries(session_factory, j) if r.object_kind == "hl7")
            for j in (first, second)]
    assert keys[0] != keys[1]
    assert _fields(original)["MSH"][0][10] == keys[0] and _fields(correction)["MSH"][0][10] == keys[1]
    _check_oru(correction, deliveries(session_factory, second), data_dir, result_status="C")
    note = unescape(_fields(correction)["NTE"][0][3])
    assert note.startswith(f"Corrected result: replaces message {keys[0]}.")
    assert _fields(correction)["OBR"][0][2] == _fields(original)["OBR"][0][2]  # the same order


def test_ae_is_retried_with_its_reason_and_ar_is_dead_at_once(tmp_path, data_dir, database_url, session_factory,
                                                              study_factory) -> None:
    reason = "PID-3 unknown | patient"
    with PythonHl7Receiver(ack="AE", ack_text=reason) as error, MllpReceiver(tmp_path / "ar", ack="AR") as reject:
        config = ris_config(data_dir, database_url, [hl7_destination(error.port, "ris-ae"),
                                                     hl7_destination(reject.port, "ris-ar")])
        job_id = process(config, session_factory, _study(study_factory).files)
        deliver_until_settled(Deliverer(config, session_factory, rng=lambda: 0.5), session_factory, job_id)
        rows = {r.destination: r for r in deliveries(session_factory, job_id)}
        assert job(session_factory, job_id).state == JobState.FAILED.value
        assert (rows["ris-ae"].state, rows["ris-ae"].attempts) == (DeliveryState.DEAD.value, 3)  # retried
        assert rows["ris-ae"].last_error == f"mllp://127.0.0.1:{error.port} answered AE: {reason}"
        assert (rows["ris-ar"].state, rows["ris-ar"].attempts) == (DeliveryState.DEAD.value, 1)  # permanent
        assert rows["ris-ar"].last_error.startswith(f"mllp://127.0.0.1:{reject.port} answered AR")
        assert len(error.messages) == 3 and len(reject.received()) == 1


@pytest.mark.parametrize(("behaviour", "reason"), [
    ("garbage", "did not answer with an MLLP frame: not an MLLP frame: b'HTTP/1.1 400 Bad Request"),
    ("close_mid_ack", "the peer closed the connection in the middle of a frame"),
    ("close", "the peer closed the connection without answering"),
    ("silent", "no ACK from mllp://127.0.0.1:{port} within 1 s"),
])
def test_a_misbehaving_receiver_gets_a_retry_and_loses_nothing(behaviour, reason, tmp_path, data_dir, database_url,
                                                               session_factory, study_factory) -> None:
    port = free_port()
    config = ris_config(data_dir, database_url, [hl7_destination(port, timeout_seconds=1,
                                                                 retry={"max_attempts": 5, "initial_seconds": 0.05,
                                                                        "max_seconds": 0.1})])
    job_id = process(config, session_factory, _study(study_factory).files)
    [row] = [r for r in deliveries(session_factory, job_id) if r.object_kind == "hl7"]
    deliverer = Deliverer(config, session_factory, rng=lambda: 0.5)
    with MisbehavingReceiver(behaviour, port) as bad:
        assert deliverer.run_once() == 1
    [after] = deliveries(session_factory, job_id)
    assert (after.state, after.attempts) == (DeliveryState.PENDING.value, 1)
    assert reason.format(port=port) in (after.last_error or ""), after.last_error
    stored = (data_dir / row.path).read_bytes()
    assert bad.messages == [stored]  # it got the message; we did not take its word for it
    with session_factory.begin() as session:  # due now
        session.execute(update(Delivery).values(next_attempt_at=utcnow()))
    with PythonHl7Receiver(port=port) as good:
        deliver_until_settled(deliverer, session_factory, job_id)
        assert [m.encode("utf-8").strip(b"\r") for m in good.messages] == [stored.strip(b"\r")]
    assert job(session_factory, job_id).state == JobState.DELIVERED.value


def test_mllp_over_tls(tmp_path, data_dir, database_url, session_factory, study_factory) -> None:
    pki = tmp_path / "pki"
    pki.mkdir()
    _certificate(pki, "ca", None)
    _certificate(pki, "ris", "ca")
    _certificate(pki, "node", "ca")
    client = {"enabled": True, "cert": str(pki / "node.pem"), "key": str(pki / "node.key"), "ca": str(pki / "ca.pem")}
    with MllpReceiver(tmp_path / "tls", tls_key=pki / "ris.key", tls_cert=pki / "ris.pem") as receiver:
        config = ris_config(data_dir, database_url, [hl7_destination(receiver.port, "plain", timeout_seconds=2),
                                                     hl7_destination(receiver.port, "tls", tls=client)])
        assert config.destinations[1].address == f"mllp://127.0.0.1:{receiver.port} (TLS)"
        job_id = process(config, session_factory, _study(study_factory).files)
        deliverer = Deliverer(config, session_factory, rng=lambda: 0.5)
        deliverer.run_once()
        rows = {r.destination: r for r in deliveries(session_factory, job_id)}
        assert rows["tls"].state == DeliveryState.SENT.value, rows["tls"].last_error
        assert rows["plain"].state == DeliveryState.PENDING.value  # plain MLLP to a TLS port: no ACK
        assert len(receiver.received()) == 1


def test_the_triage_is_on_the_job_study_and_metric(data_dir, database_url, session_factory, study_factory) -> None:
    config = ris_config(data_dir, database_url, [hl7_destination(free_port())])
    before = metrics.REGISTRY.get_sample_value("cxrnode_triage_total", {"priority": "stat"}) or 0
    job_id = process(config, session_factory, _study(study_factory).files, positive=("pneumothorax",))
    routine = process(config, session_factory, _study(study_factory).files, positive=(), uncertain=("pneumothorax",))
    with session_factory() as session:
        stat_job, routine_job = session.get(Job, job_id), session.get(Job, routine)
        assert stat_job is not None and routine_job is not None
        assert (stat_job.triage_priority, stat_job.triage_reason) == ("stat", "Pneumothorax present")
        assert (routine_job.triage_priority, routine_job.triage_reason) == ("routine", None)
        study = session.get(Study, stat_job.study_id)
        assert study is not None and study.triage_priority == "stat"
    assert metrics.REGISTRY.get_sample_value("cxrnode_triage_total", {"priority": "stat"}) == before + 1
    from dicomnode.dashboard import queries

    rows, total = queries.list_studies(session_factory, queries.StudyFilter(triage="raised"))
    assert total == 1 and rows[0].triage_priority == "stat"
    rows, total = queries.list_studies(session_factory, queries.StudyFilter(triage="routine"))
    assert total == 1 and rows[0].id == routine_job.study_id
    assert json.dumps(queries.StudyFilter(triage="stat").query_string()) == '"triage=stat&page=1"'
