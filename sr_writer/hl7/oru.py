"""The HL7 v2.5.1 ``ORU^R01`` of one result set: data in (the record, the stored SR's header, the triage, who
sends to whom), message text out. Segments:

- ``MSH``: the parties, the message control ID (the delivery's payload key), ``UNICODE UTF-8`` (MSH-18).
- ``PID``: the patient as the SR's header has it after header hygiene (PID-3 ID with its issuer, PID-5 name,
  PID-7 birth date, PID-8 sex).
- ``ORC`` / ``OBR``: the accession number as placer and filler order number (ORC-2/3, OBR-2/3), the study's
  procedure (OBR-4), its date and time (OBR-7), result status ``P`` (preliminary: AI-generated, unverified) or
  ``C`` (a correction), ``RAD`` (OBR-24). A raised triage priority goes into ORC-7 and OBR-27 (TQ component 6,
  HL7 table 0027: ``A`` urgent, ``S`` stat); a routine study leaves them empty (never lowering the order's own).
- ``NTE`` (a correction only): the control ID of the message it replaces.
- ``OBX``: the Study Instance UID, the SR's and the pages' series and SOP Instance UIDs (so the RIS can link
  them); the triage reason; the AI-generated / DEMO statements; one ``CWE`` per checklist finding coded as in the SR
  (finding code = present / absent / uncertain; a post-coordinated Finding Site as a second ``CWE`` with the same
  sub-ID); where the record has them, the model's probability of presence (``NM``, DCM 111012 Certainty of
  Finding, UCUM ``%``) and the site's threshold that decided presence (``NM``, ``%``), same sub-ID; abnormal flag
  ``AA`` only on a finding answered *present* that raised the priority; then the stage-8 findings and impression, one
  ``TX`` per line.
"""
from __future__ import annotations

import datetime as dt
from dataclasses import dataclass

from highdicom.sr import CodedConcept

from inference.record import DEMO_STATEMENT, UNVERIFIED_STATEMENT, ReasoningRecord
from inference.triage import Priority, Triage
from sr_writer.codes import CodeTable, load_table
from sr_writer.hl7.encoding import CHARSET, Field, message, msh, numbered, segment
from sr_writer.result_header import StudyHeader, dicom_datetime, utc_stamp
from sr_writer.triage import statement as triage_statement

VERSION = "2.5.1"
MESSAGE_TYPE = ("ORU", "R01", "ORU_R01")
PRIORITY_CODES = {Priority.URGENT: "A", Priority.STAT: "S"}  # HL7 table 0027 (A = ASAP, S = STAT)
CRITICAL_FLAG = "AA"  # HL7 table 0078: critical abnormal
SEXES = {"M": "M", "F": "F", "O": "O"}  # DICOM Patient's Sex -> HL7 table 0001 (else U)


@dataclass(frozen=True)
class Route:
    """Who sends to whom (MSH-3 to MSH-6) and the processing ID (MSH-11: P production, T training, D debugging)."""

    sending_application: str = "CXRNODE"
    sending_facility: str = ""
    receiving_application: str = ""
    receiving_facility: str = ""
    processing_id: str = "P"


def _coded(code: CodedConcept) -> list[str]:
    """A highdicom coded concept as CWE: identifier^text^coding system."""
    return [str(code.value), str(code.meaning), str(code.scheme_designator)]


def _name(pn: str) -> list[str]:
    """DICOM PN (Family^Given^Middle^Prefix^Suffix) as XPN (family^given^middle^suffix^prefix)."""
    parts = (pn.split("^") + [""] * 5)[:5]
    family, given, middle, prefix, suffix = parts
    return [family, given, middle, suffix, prefix]


def _tq(priority: Priority) -> Field:
    code = PRIORITY_CODES.get(priority, "")
    return ["", "", "", "", "", code] if code else ""


class _Obx:
    def __init__(self, status: str, observed: str, analysed: str) -> None:
        self.rows: list[str] = []
        self.status, self.observed, self.analysed = status, observed, analysed

    def add(self, value_type: str, identifier: Field, value: Field, sub_id: str = "", flag: str = "",
            units: Field = "") -> None:
        self.rows.append(numbered("OBX", {1: str(len(self.rows) + 1), 2: value_type, 3: identifier, 4: sub_id,
                                          5: value, 6: units, 8: flag, 11: self.status, 14: self.observed,
                                          19: self.analysed}))

    def lines(self, identifier: Field, text: str, sub_id: str = "") -> None:
        for line in text.splitlines() or [""]:
            if line.strip():
                self.add("TX", identifier, line.rstrip(), sub_id)


def build_oru(record: ReasoningRecord, header: StudyHeader, route: Route, triage: Triage, control_id: str,
              created_at: dt.datetime, replaces: str | None = None, table: CodeTable | None = None) -> str:
    """The ORU^R01 message text (segments ended by CR); :func:`sr_writer.hl7.encoding.encode` makes its bytes.
    ``replaces``: the control ID of the message this one corrects (result status C)."""
    table = table or load_table()
    status = "C" if replaces else "P"
    stamp = utc_stamp(created_at)
    observed = dicom_datetime(header.study_date, header.study_time)
    accession = header.accession_number
    procedure: Field = (list(header.procedure_code) if header.procedure_code
                        else ["", header.procedure_text])
    rows = [
        msh(route.sending_application, route.sending_facility, route.receiving_application,
            route.receiving_facility, stamp, "", list(MESSAGE_TYPE), control_id, route.processing_id, VERSION,
            "", "", "", "", "", CHARSET),
        numbered("PID", {1: "1", 3: [header.patient_id, "", "", header.issuer_of_patient_id],
                         5: _name(header.patient_name), 7: header.birth_date, 8: SEXES.get(header.sex, "U")}),
        numbered("ORC", {1: "RE", 2: accession, 3: accession, 7: _tq(triage.priority)}),
        numbered("OBR", {1: "1", 2: accession, 3: accession, 4: procedure, 7: observed, 22: stamp, 24: "RAD",
                         25: status, 27: _tq(triage.priority)}),
    ]
    if replaces:
        rows.append(segment("NTE", "1", "L", f"Corrected result: replaces message {replaces}. "
                                             f"{UNVERIFIED_STATEMENT}"))
    obx = _Obx(status, observed, stamp)
    structure, private = table.structure, table.private
    obx.add("ST", _coded(structure["study_instance_uid"]), header.study_instance_uid)
    if header.sr is not None:
        obx.add("ST", _coded(structure["series_instance_uid"]), header.sr.series_instance_uid, "sr")
        obx.add("ST", _coded(private["sr_instance_uid"]), header.sr.sop_instance_uid, "sr")
    for number, page in enumerate(header.pages, start=1):
        obx.add("ST", _coded(structure["series_instance_uid"]), page.series_instance_uid, f"page-{number}")
        obx.add("ST", _coded(private["page_instance_uid"]), page.sop_instance_uid, f"page-{number}")
    if triage.raised:
        obx.add("TX", _coded(private["triage_reason"]), triage_statement(triage))
    obx.add("TX", _coded(structure["comment"]), UNVERIFIED_STATEMENT)
    percent = _coded(structure["percent"])
    if record.provenance.demo_model:
        obx.add("TX", _coded(structure["comment"]), DEMO_STATEMENT)
    for number, finding in enumerate(record.findings, start=1):
        entry = table.finding(finding.key)
        sub_id = f"finding-{number}"
        name: Field = _coded(entry.code) if entry.code is not None else ["", entry.label]
        flag = CRITICAL_FLAG if triage.raised_by_present(finding.key) else ""
        obx.add("CWE", name, _coded(table.presence[finding.presence.value]), sub_id, flag)
        if entry.site is not None:
            obx.add("CWE", _coded(structure["finding_site"]), _coded(entry.site), sub_id)
        for concept, value in table.scores(finding.probability, finding.threshold):
            obx.add("NM", _coded(concept), f"{value:g}", sub_id, units=percent)
    obx.lines(_coded(structure["report_findings"]), record.report.findings, "report")
    obx.lines(_coded(structure["report_impression"]), record.report.impression, "report")
    return message([*rows, *obx.rows])
