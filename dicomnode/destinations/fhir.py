"""Destination type ``fhir``: one FHIR R4 transaction Bundle per result set (``sr_writer.fhir``: DiagnosticReport,
an Observation per finding, a Flag for a raised triage priority) POSTed to ``url`` (basic or bearer auth from the
environment, as for DICOMweb).

The Bundle is built when the whole result set is stored and written to the results folder before its delivery row;
every resource has an id derived from the Study Instance UID and is sent as ``PUT <type>/<id>``, so a later result
set of the study (an amendment, status ``amended``) updates the same resources, and a Bundle sent twice (a crash
between the server's answer and our commit) changes nothing. What the server answers:

- 200 with a transaction-response whose entries are all 2xx: delivered;
- 4xx (the server refuses the Bundle: invalid, unauthorized, ...): permanent, the server's OperationOutcome in the
  error; 408 and 429 are retried;
- 5xx, no answer within ``timeout_seconds``, connection refused, or an answer that is no transaction-response:
  retried.
"""
from __future__ import annotations

import datetime as dt
import json
import logging
from collections.abc import Sequence
from typing import Any, ClassVar, Literal

import requests

from dicomnode.destinations.base import DeliveryItem, HttpDestination, Outcome, Payload, ResultSet, SendError
from dicomnode.destinations.messages import MessageSender, StoredResult, replaced_key
from dicomnode.destinations.registry import handler_for
from sr_writer.fhir import build_bundle
from sr_writer.result_header import message_id

LOG = logging.getLogger("dicomnode.fhir")
MEDIA_TYPE = "application/fhir+json"
KIND = "fhir"
RETRIED_4XX = (408, 429)
MAX_REASON = 500


class FhirDestination(HttpDestination):
    built_from: ClassVar[tuple[str, ...]] = ("sr",)  # result kinds its message is built from (output.objects)
    url_meaning = "the FHIR base URL"  # the Bundle is POSTed to it
    type: Literal["fhir"] = "fhir"

    def describe(self) -> str:
        return f"fhir R4 transaction Bundle to {self.url}, {self.auth.describe()}"


def outcome_text(body: Any) -> str:
    """The words of an OperationOutcome (its issues' details, diagnostics and expressions)."""
    if not isinstance(body, dict) or body.get("resourceType") != "OperationOutcome":
        return ""
    words = []
    for issue in body.get("issue", []):
        text = (issue.get("details") or {}).get("text") or issue.get("diagnostics") or issue.get("code") or ""
        where = ", ".join(issue.get("expression") or [])
        words.append(f"{text} ({where})" if where else str(text))
    return "; ".join(w for w in words if w)


def _reason(response: requests.Response) -> str:
    try:
        text = outcome_text(response.json())
    except ValueError:
        text = ""
    return (text or (response.text or "").strip() or response.reason or "")[:MAX_REASON]


@handler_for(FhirDestination)
class FhirSender(MessageSender[FhirDestination]):
    def message_payload(self, result: ResultSet, stored: StoredResult) -> Payload:
        bundle = build_bundle(stored.record, stored.header, stored.triage, dt.datetime.now(dt.UTC),
                              amended=replaced_key(result) is not None)
        key = message_id("FHIR", result.study_instance_uid, result.generation)
        data = json.dumps(bundle, ensure_ascii=False, indent=1).encode("utf-8")
        return Payload(KIND, key, MEDIA_TYPE, data=data, suffix=".json")

    def send(self, items: Sequence[DeliveryItem]) -> list[Outcome]:
        from dicomnode.dicomweb import make_session

        session = make_session(self.destination.auth)
        try:
            outcomes = []
            for number, item in enumerate(items):
                try:
                    outcomes.append(self._post(session, item))
                except requests.ConnectionError as exc:
                    reason = f"cannot reach {self.destination.url}: {type(exc).__name__}"
                    if number == 0:
                        raise SendError(reason) from None
                    outcomes.append(Outcome.failed(reason))
            return outcomes
        finally:
            session.close()

    def _post(self, session: requests.Session, item: DeliveryItem) -> Outcome:
        d = self.destination
        try:
            response = session.post(d.url.rstrip("/") + "/", data=item.path.read_bytes(), timeout=d.timeout_seconds,
                                    headers={"Content-Type": f"{MEDIA_TYPE}; charset=utf-8",
                                             "Accept": MEDIA_TYPE})
        except requests.Timeout:
            return Outcome.failed(f"no answer from {d.url} within {d.timeout_seconds:g} s")
        status = response.status_code
        if status >= 500 or status in RETRIED_4XX:
            return Outcome.failed(f"{d.url} answered {status}: {_reason(response)}", status)
        if status >= 400:
            return Outcome.failed(f"{d.url} refused the Bundle ({status}): {_reason(response)}", status,
                                  permanent=True)
        try:
            body = response.json()
        except ValueError:
            return Outcome.failed(f"{d.url} answered {status} without JSON", status)
        if not isinstance(body, dict) or body.get("type") not in ("transaction-response", "batch-response"):
            return Outcome.failed(f"{d.url} answered {status} with no transaction-response", status)
        failed = [entry.get("response", {}) for entry in body.get("entry", [])
                  if not str(entry.get("response", {}).get("status", "")).strip().startswith("2")]
        if failed:
            first = failed[0]
            words = outcome_text(first.get("outcome")) or str(first.get("status"))
            return Outcome.failed(f"{d.url}: {len(failed)} entries of the Bundle failed: {words}"[:MAX_REASON],
                                  status, permanent=str(first.get("status", "")).startswith("4"))
        LOG.info("fhir bundle stored", extra={"fields": {"destination": d.name, "key": item.key,
                                                         "entries": len(body.get("entry", []))}})
        return Outcome(True, status)
