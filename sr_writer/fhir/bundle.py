"""The FHIR R4 transaction Bundle of one result set: data in (the record, the stored SR's header, the triage),
JSON-ready dict out.

- ``DiagnosticReport``: status ``preliminary`` (``amended`` for a later result set of the study), category RAD, the
  procedure (the SR's Procedure Code Sequence, else the SR's procedure reported, SCT 363679005), the study as an
  ``ImagingStudy`` reference by its Study Instance UID identifier (``urn:dicom:uid``), the SR as the report's own
  identifier, the order by its accession number (``basedOn``, identifier type ACSN), ``conclusion`` = the stage-8
  impression after the AI-generated / DEMO statements, the whole stage-8 text as ``presentedForm``.
- One ``Observation`` per checklist finding: the finding's code as in the SR, value present / absent / uncertain
  (the SR's SNOMED CT presence codes), ``interpretation`` POS / NEG / IND (v3 ObservationInterpretation; plus
  ``AA`` critical abnormal on a finding answered present that raised the triage priority), ``bodySite`` the
  finding's own site when the SR post-coordinates one, else the chest; where the record has them, a ``component``
  with the model's probability of presence (DCM 111012 Certainty of Finding) and one with the site's threshold
  that decided presence, each a UCUM ``%`` Quantity.
- A raised triage priority: one ``Flag`` (status active, ``flag-priority`` extension PM / PH, ``code`` the FHIR
  request-priority ``urgent`` / ``stat`` and the SR's SNOMED CT priority value, ``flag-detail`` pointing at the
  report). A routine study gets no Flag, and an amendment that no longer raises one leaves the earlier Flag as it is
  (triage never lowers a priority; the radiologist who reads the amended report closes it).

Every resource has an id derived from the Study Instance UID (UUID v5) and is sent as ``PUT <type>/<id>``: an
amended result set updates the same resources (update-as-create), whatever the server assigns otherwise. References
between them are ``<type>/<id>``.
"""
from __future__ import annotations

import base64
import datetime as dt
import re
import uuid
from typing import Any

from highdicom.sr import CodedConcept

from inference.record import DEMO_STATEMENT, UNVERIFIED_STATEMENT, Finding, Presence, ReasoningRecord
from inference.triage import Priority, Triage
from sr_writer.codes import CodeTable, load_table
from sr_writer.result_header import StudyHeader, iso_datetime
from sr_writer.triage import statement as triage_statement

# UUID v5 namespace of this node's resource ids (a constant: the same study always gets the same ids)
ID_NAMESPACE = uuid.UUID("5d2b4e8a-7c1f-5b7e-9a52-3f1f2c6d8e01")
SYSTEMS = {"SCT": "http://snomed.info/sct", "DCM": "http://dicom.nema.org/resources/ontology/DCM",
           "RADLEX": "http://radlex.org", "UMLS": "http://www.nlm.nih.gov/research/umls",
           "LN": "http://loinc.org"}
DICOM_UID = "urn:dicom:uid"
UCUM = "http://unitsofmeasure.org"
INTERPRETATION = "http://terminology.hl7.org/CodeSystem/v3-ObservationInterpretation"
PRESENCE_INTERPRETATION = {Presence.PRESENT: ("POS", "Positive"), Presence.ABSENT: ("NEG", "Negative"),
                           Presence.UNCERTAIN: ("IND", "Indeterminate")}
FLAG_PRIORITY = {Priority.URGENT: ("PM", "Medium priority"), Priority.STAT: ("PH", "High priority")}
REQUEST_PRIORITY = {Priority.URGENT: ("urgent", "Urgent"), Priority.STAT: ("stat", "STAT")}


_NOT_FHIR_STRING = re.compile(r"[^\S \r\n\t]|[\x00-\x08\x0b\x0c\x0e-\x1f\x7f]")


def fhir_string(text: str) -> str:
    """``text`` as a FHIR string may hold it (FHIR's string regex allows space, CR, LF and TAB as its only
    whitespace): other whitespace and control characters become spaces, no surrounding whitespace."""
    return _NOT_FHIR_STRING.sub(" ", text).strip()


def _clean(value: Any) -> Any:
    """Every string of a resource made a valid FHIR string; elements left empty are dropped (FHIR has no "")."""
    if isinstance(value, str):
        return fhir_string(value)
    if isinstance(value, list):
        cleaned = [_clean(item) for item in value]
        return [item for item in cleaned if item not in ("", [], {})]
    if isinstance(value, dict):
        fields = {key: _clean(item) for key, item in value.items()}
        return {key: item for key, item in fields.items() if item not in ("", [], {})}
    return value


def resource_id(study_instance_uid: str, role: str) -> str:
    return str(uuid.uuid5(ID_NAMESPACE, f"{study_instance_uid}/{role}"))


def _coding_of(value: str, meaning: str, scheme: str) -> dict[str, str]:
    """A DICOM-style code (value, meaning, scheme designator) as a FHIR Coding."""
    return {"system": SYSTEMS.get(scheme, f"urn:dicom:coding-scheme:{scheme}"), "code": value, "display": meaning}


def _coding(code: CodedConcept) -> dict[str, str]:
    """A highdicom coded concept as a FHIR Coding."""
    return _coding_of(str(code.value), str(code.meaning), str(code.scheme_designator))


def _uid(value: str) -> dict[str, str]:
    return {"system": DICOM_UID, "value": f"urn:oid:{value}"}


def _subject(header: StudyHeader) -> dict[str, Any]:
    if not header.patient_id:
        return {"type": "Patient", "display": "patient without an ID in the study's header"}
    identifier: dict[str, Any] = {"value": header.patient_id}
    if header.issuer_of_patient_id:
        identifier["assigner"] = {"display": header.issuer_of_patient_id}
    return {"type": "Patient", "identifier": identifier}


def _statements(record: ReasoningRecord) -> list[str]:
    return [UNVERIFIED_STATEMENT, *([DEMO_STATEMENT] if record.provenance.demo_model else [])]


def _entry(resource: dict[str, Any]) -> dict[str, Any]:
    kind, rid = resource["resourceType"], resource["id"]
    return {"fullUrl": f"urn:uuid:{rid}", "resource": resource, "request": {"method": "PUT", "url": f"{kind}/{rid}"}}


def _observation(finding: Finding, header: StudyHeader, common: dict[str, Any], triage: Triage,
                 table: CodeTable) -> dict[str, Any]:
    entry = table.finding(finding.key)
    code: dict[str, Any] = {"text": entry.label}
    if entry.code is not None:
        code["coding"] = [_coding(entry.code)]
    interpretation_code, interpretation_text = PRESENCE_INTERPRETATION[finding.presence]
    interpretation = [{"coding": [{"system": INTERPRETATION, "code": interpretation_code,
                                   "display": interpretation_text}]}]
    if triage.raised_by_present(finding.key):
        interpretation.append({"coding": [{"system": INTERPRETATION, "code": "AA", "display": "Critical abnormal"}]})
    site = entry.site if entry.site is not None else table.structure["chest"]
    components = [{"code": {"coding": [_coding(concept)]},
                   "valueQuantity": {"value": value, "unit": "%", "system": UCUM, "code": "%"}}
                  for concept, value in table.scores(finding.probability, finding.threshold)]
    return {
        "resourceType": "Observation", "id": resource_id(header.study_instance_uid, f"finding/{finding.key}"),
        "status": common["status"],
        "category": [{"coding": [{"system": "http://terminology.hl7.org/CodeSystem/observation-category",
                                  "code": "imaging", "display": "Imaging"}]}],
        "code": code, "subject": common["subject"], **common["effective"], "issued": common["issued"],
        "valueCodeableConcept": {"coding": [_coding(table.presence[finding.presence.value])],
                                 "text": finding.presence.value},
        "interpretation": interpretation,
        "bodySite": {"coding": [_coding(site)]},
        **({"component": components} if components else {}),
        "derivedFrom": [common["study"]],
        "device": common["device"],
        "note": [{"text": text} for text in common["statements"]],
    }


def build_bundle(record: ReasoningRecord, header: StudyHeader, triage: Triage, created_at: dt.datetime,
                 amended: bool = False, table: CodeTable | None = None) -> dict[str, Any]:
    """The transaction Bundle (a dict, ``json.dumps`` makes its body)."""
    table = table or load_table()
    study = header.study_instance_uid
    statements = _statements(record)
    effective_time = iso_datetime(header.study_date, header.study_time, header.timezone_offset)
    common: dict[str, Any] = {
        "status": "amended" if amended else "preliminary",
        "subject": _subject(header),
        "effective": {"effectiveDateTime": effective_time} if effective_time else {},
        "issued": created_at.astimezone(dt.UTC).isoformat(timespec="seconds").replace("+00:00", "Z"),
        "study": {"type": "ImagingStudy", "identifier": _uid(study)},
        "device": {"display": f"{record.provenance.model_name} (AI, not a physician)"},
        "statements": statements,
    }
    observations = [_observation(f, header, common, triage, table) for f in record.findings]
    report_id = resource_id(study, "report")
    procedure = (_coding_of(*header.procedure_code) if header.procedure_code
                 else _coding(table.structure["procedure_reported"]))
    text = "\n".join([*statements, "", "Findings:", record.report.findings, "", "Impression:",
                      record.report.impression])
    report: dict[str, Any] = {
        "resourceType": "DiagnosticReport", "id": report_id,
        "identifier": [_uid(header.sr.sop_instance_uid)] if header.sr is not None else [],
        "status": common["status"],
        "category": [{"coding": [{"system": "http://terminology.hl7.org/CodeSystem/v2-0074", "code": "RAD",
                                  "display": "Radiology"}]}],
        "code": {"coding": [procedure], "text": header.procedure_text},
        "subject": common["subject"], **common["effective"], "issued": common["issued"],
        "performer": [common["device"]],
        "imagingStudy": [common["study"]],
        "result": [{"reference": f"Observation/{o['id']}"} for o in observations],
        "conclusion": " ".join([*statements, record.report.impression]).strip(),
        "presentedForm": [{"contentType": "text/plain; charset=utf-8",
                           "title": "AI chest X-ray reasoning report (unverified)",
                           "data": base64.b64encode(text.encode("utf-8")).decode("ascii")}],
    }
    if not report["identifier"]:
        del report["identifier"]
    if header.accession_number:
        report["basedOn"] = [{"type": "ServiceRequest", "identifier": {
            "type": {"coding": [{"system": "http://terminology.hl7.org/CodeSystem/v2-0203", "code": "ACSN"}]},
            "value": header.accession_number}}]
    resources = [report, *observations]
    if triage.raised:
        resources.append(_flag(header, common, triage, report_id, table))
    return {"resourceType": "Bundle", "type": "transaction", "entry": [_entry(_clean(r)) for r in resources]}


def _flag(header: StudyHeader, common: dict[str, Any], triage: Triage, report_id: str,
          table: CodeTable) -> dict[str, Any]:
    flag_code, flag_display = FLAG_PRIORITY[triage.priority]
    request_code, request_display = REQUEST_PRIORITY[triage.priority]
    return {
        "resourceType": "Flag", "id": resource_id(header.study_instance_uid, "triage"),
        "extension": [
            {"url": "http://hl7.org/fhir/StructureDefinition/flag-priority",
             "valueCodeableConcept": {"coding": [{"system": "http://hl7.org/fhir/flag-priority-code",
                                                  "code": flag_code, "display": flag_display}]}},
            {"url": "http://hl7.org/fhir/StructureDefinition/flag-detail",
             "valueReference": {"reference": f"DiagnosticReport/{report_id}"}},
        ],
        "status": "active",
        "category": [{"coding": [{"system": "http://terminology.hl7.org/CodeSystem/flag-category",
                                  "code": "clinical", "display": "Clinical"}]}],
        "code": {"coding": [{"system": "http://hl7.org/fhir/request-priority", "code": request_code,
                             "display": request_display}, _coding(table.triage[triage.priority.value])],
                 "text": triage_statement(triage)},
        "subject": common["subject"],
        "period": {"start": common["issued"]},
        "author": common["device"],
    }
