"""STOW-RS delivery to a ``type: dicomweb`` destination through ``dicomweb-client``.

One POST per study (``{url}/studies/{StudyInstanceUID}``: the server checks every object belongs to the study the
node reasoned on). Outcomes, per object, in the terms of :class:`dicomnode.scu.StoreOutcome`:

- 200, or 202 with the object in the ReferencedSOPSequence: stored (``status`` 0, or the HTTP status).
- 4xx: refused for good (``permanent``): the delivery is dead-lettered with the server's reason. A 409 (PS3.18: the
  store failed) is read per object from the body's FailedSOPSequence: an object naming another study is a study
  mismatch; one the server may already hold (FailureReason 0x0110 processing failure, 0x0111 duplicate) is fetched
  back (WADO-RS): when the server holds it with the node's content it is delivered, with other content it is
  refused naming the attributes that differ.
- 202 with the object in the FailedSOPSequence: its FailureReason (0x0110/0x0111 checked as for a 409);
  out-of-resources (0xA7xx) is retried, any other reason is permanent.
- 5xx, timeouts and connection errors: no outcome (``status`` None): retried with the destination's backoff.

``dicomweb-client``'s own retries are turned off: the delivery loop owns retries, and a row once stored is never
sent again.
"""
from __future__ import annotations

import json
import logging
import os
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Protocol

import requests
from dicomweb_client.api import DICOMwebClient
from pydicom import Dataset, dcmread
from pynetdicom.status import STORAGE_SERVICE_CLASS_STATUS

from dicomnode.scu import StoreOutcome

if TYPE_CHECKING:
    from dicomnode.config_types import HttpAuth


class StowTarget(Protocol):
    """Where STOW-RS posts to (a ``type: dicomweb`` destination's config)."""

    name: str
    url: str
    auth: HttpAuth
    timeout_seconds: float

LOG = logging.getLogger("dicomnode.dicomweb")
REFERENCED_SOP_SEQUENCE = "00081199"
FAILED_SOP_SEQUENCE = "00081198"
REFERENCED_SOP_INSTANCE_UID = "00081155"
FAILURE_REASON = "00081197"
MAX_REASON = 500


class DicomwebError(RuntimeError):
    """The server could not be reached or did not answer (connection refused, timeout, 5xx)."""


def make_session(auth: HttpAuth) -> requests.Session:
    """A requests session with the destination's credentials, read from the environment now."""
    session = requests.Session()
    if auth.type == "basic":
        session.auth = (auth.username or "", os.environ.get(auth.password_env or "", ""))
    elif auth.type == "bearer":
        session.headers["Authorization"] = f"Bearer {os.environ.get(auth.token_env or '', '')}"
    return session


def make_client(destination: StowTarget) -> DICOMwebClient:
    assert destination.url is not None
    client = DICOMwebClient(destination.url.rstrip("/"), session=make_session(destination.auth),
                            timeout=destination.timeout_seconds)
    client.set_http_retry_params(retry=True, max_attempts=1, retriable_error_codes=())  # the node retries
    return client


def server_reason(response: requests.Response) -> str:
    """The server's words for a refusal: a JSON message/details, else the body's first characters."""
    text = (response.text or "").strip()
    try:
        body = json.loads(text) if text else None
    except ValueError:
        body = None
    if isinstance(body, dict):
        parts = [str(body[key]) for key in ("Message", "Details", "message", "error", "detail") if body.get(key)]
        if parts:
            text = "; ".join(parts)
    return " ".join(text.split())[:MAX_REASON] or response.reason or "no reason given"


def _uids_in(response_ds: dict, sequence: str) -> dict[str, int | None]:
    """SOP Instance UID -> FailureReason (or None) of the items of a DICOM JSON response sequence."""
    items = (response_ds.get(sequence) or {}).get("Value") or []
    found: dict[str, int | None] = {}
    for item in items:
        uid = ((item.get(REFERENCED_SOP_INSTANCE_UID) or {}).get("Value") or [None])[0]
        reason = ((item.get(FAILURE_REASON) or {}).get("Value") or [None])[0]
        if uid:
            found[str(uid)] = int(reason) if reason is not None else None
    return found


# FailureReason values a server may give for an object it already holds (PS3.18 Table 10.5.3-1, PS3.7 Annex C)
MAYBE_ALREADY_STORED = frozenset({0x0110, 0x0111})


def failure_reason_text(reason: int | None) -> str:
    """``0x0110 (processing failure)``: a FailureReason with its PS3.7 meaning."""
    if reason is None:
        return "no failure reason given"
    meaning = STORAGE_SERVICE_CLASS_STATUS.get(reason, ("", ""))[1]
    if not meaning and (reason & 0xF000) == 0xC000:
        meaning = "cannot understand"
    return f"0x{reason:04X}" + (f" ({meaning.lower()})" if meaning else "")


def _differences(ours: Dataset, theirs: Dataset) -> list[str]:
    """Keywords (or tags) of the elements of ``ours`` that ``theirs`` lacks or holds with another value; file meta
    left out, pixel data compared decoded when the two are encoded differently. Names only: values may be patient
    data."""
    different = []
    for element in ours:
        if element.tag.group == 0x0002:
            continue
        name = element.keyword or str(element.tag)
        if element.tag not in theirs:
            different.append(name)
        elif element.keyword == "PixelData":
            if element.value != theirs[element.tag].value and not _same_pixels(ours, theirs):
                different.append(name)
        elif element.value != theirs[element.tag].value:
            different.append(name)
    return different


def _same_pixels(ours: Dataset, theirs: Dataset) -> bool:
    try:
        return bool((ours.pixel_array == theirs.pixel_array).all())
    except Exception:  # noqa: BLE001 - undecodable either side: not known to be the same
        return False


def _held(client: DICOMwebClient, study_uid: str, ds: Dataset) -> tuple[bool | None, list[str]]:
    """Whether the server holds ``ds``'s SOP Instance (WADO-RS, as stored) and, if so, what differs from ``ds``.
    None when it could not be asked."""
    try:
        stored = client.retrieve_instance(study_uid, str(ds.SeriesInstanceUID), str(ds.SOPInstanceUID),
                                          media_types=(("application/dicom", "*"),))
    except requests.HTTPError as exc:
        if exc.response is not None and exc.response.status_code == 404:
            return False, []
        LOG.warning("WADO-RS check of an already stored object failed", extra={"fields": {"error": str(exc)}})
        return None, []
    except (requests.RequestException, ValueError) as exc:
        LOG.warning("WADO-RS check of an already stored object failed", extra={"fields": {"error": str(exc)}})
        return None, []
    return True, _differences(ds, stored)


def _failed_object(client: DICOMwebClient, status: int, study_uid: str, path: Path, ds: Dataset,
                   reason: int | None) -> StoreOutcome:
    """The outcome of an object the server named in its FailedSOPSequence (``status``: the HTTP status)."""
    sop_uid, own_study = str(ds.SOPInstanceUID), str(ds.get("StudyInstanceUID", "")) or "(none)"
    refused = f"STOW-RS refused, HTTP {status}, failure reason {failure_reason_text(reason)}"
    code = status if status >= 400 or reason is None else reason  # the row's last_status: HTTP 4xx, else the reason
    if own_study != study_uid:
        return StoreOutcome(path, sop_uid, code, f"STOW-RS refused, HTTP {status} (study mismatch): the object's "
                            f"StudyInstanceUID {own_study} is not the study {study_uid} it belongs to "
                            f"(failure reason {failure_reason_text(reason)})", permanent=True)
    if reason is not None and (reason & 0xFF00) == 0xA700:
        return StoreOutcome(path, sop_uid, reason, f"{refused}: the server is out of resources")  # retried
    if reason is None or reason in MAYBE_ALREADY_STORED:
        held, different = _held(client, study_uid, ds)
        if held and not different:
            LOG.info("STOW-RS: the server already holds the object, with the node's content: delivered",
                     extra={"fields": {"sop_instance_uid": sop_uid, "study_instance_uid": study_uid}})
            return StoreOutcome(path, sop_uid, 0)
        if held:
            return StoreOutcome(path, sop_uid, code, (
                f"{refused}: the server already holds SOP Instance {sop_uid} with other content "
                f"({', '.join(different[:8])}{', ...' if len(different) > 8 else ''} differ), e.g. an earlier result "
                f"with the same UIDs: delete it on the server, then retry the job to send this one"), permanent=True)
        if held is None:  # could not look: try again later
            return StoreOutcome(path, sop_uid, None, f"{refused}; whether the server already holds the object "
                                                     f"could not be checked (WADO-RS failed)")
        return StoreOutcome(path, sop_uid, code, f"{refused}; the server does not hold SOP Instance {sop_uid}",
                            permanent=True)
    return StoreOutcome(path, sop_uid, code, refused, permanent=True)


def stow_study(client: DICOMwebClient, study_uid: str, paths: Sequence[Path]) -> list[StoreOutcome]:
    """POST the objects at ``paths`` (all of ``study_uid``) in one STOW-RS request; one outcome per path.

    Raises :class:`DicomwebError` when there is no answer to act on (connection error, timeout, 5xx)."""
    datasets: list[Dataset] = []
    outcomes: dict[Path, StoreOutcome] = {}
    sent: list[tuple[Path, Dataset]] = []
    for path in paths:
        try:
            ds = dcmread(path)
        except Exception as exc:  # an unreadable file is an outcome, not a crash
            outcomes[path] = StoreOutcome(path, None, None, f"unreadable: {exc}", permanent=True)
            continue
        datasets.append(ds)
        sent.append((path, ds))
    if datasets:
        try:
            answer = client.store_instances(datasets, study_instance_uid=study_uid)
            status, body = 200, answer.to_json_dict() if answer is not None else {}
        except requests.HTTPError as exc:
            response = exc.response
            if response is None or response.status_code >= 500:
                code = response.status_code if response is not None else "no response"
                reason = server_reason(response) if response is not None else str(exc)
                raise DicomwebError(f"STOW-RS HTTP {code}: {reason}") from exc
            status, body = response.status_code, _json_body(response)
            if status not in (200, 202):
                referenced = _uids_in(body, REFERENCED_SOP_SEQUENCE)  # a 4xx may still have stored some
                failed = _uids_in(body, FAILED_SOP_SEQUENCE)
                for path, obj in sent:
                    sop_uid = str(obj.SOPInstanceUID)
                    if sop_uid in referenced:
                        outcomes[path] = StoreOutcome(path, sop_uid, 0)
                    elif status == 409:  # PS3.18: the store failed; the reasons are per object, when given
                        outcomes[path] = _failed_object(client, status, study_uid, path, obj, failed.get(sop_uid))
                    else:
                        outcomes[path] = StoreOutcome(path, sop_uid, status, f"STOW-RS refused, HTTP {status}: "
                                                      f"{server_reason(response)}", permanent=True)
                return [outcomes[p] for p in paths]
        except (requests.ConnectionError, requests.Timeout) as exc:
            raise DicomwebError(f"STOW-RS to {client.base_url}: {type(exc).__name__}: {exc}") from exc
        referenced = _uids_in(body, REFERENCED_SOP_SEQUENCE)
        failed = _uids_in(body, FAILED_SOP_SEQUENCE)
        for path, obj in sent:
            sop_uid = str(obj.SOPInstanceUID)
            if sop_uid in failed:
                outcomes[path] = _failed_object(client, status, study_uid, path, obj, failed[sop_uid])
            elif sop_uid in referenced or (status == 200 and not failed):
                outcomes[path] = StoreOutcome(path, sop_uid, 0)
            else:  # 202 that names neither: not known to be stored; try again later
                outcomes[path] = StoreOutcome(path, sop_uid, None, "STOW-RS response does not list the object")
    return [outcomes[p] for p in paths]


def _json_body(response: requests.Response) -> dict:
    try:
        body = response.json()
    except ValueError:
        return {}
    return body if isinstance(body, dict) else {}


def study_of(path: Path) -> str | None:
    try:
        return str(dcmread(path, stop_before_pixels=True, specific_tags=["StudyInstanceUID"]).StudyInstanceUID)
    except Exception:  # unreadable: the caller's outcome says so
        return None


def store_files(destination: StowTarget, items: Sequence[tuple[str, Path]]) -> list[StoreOutcome]:
    """STOW-RS ``items`` (study UID the object belongs to, file) to ``destination``: one request per study; one
    outcome per item, in order. A study whose request got no answer gets outcomes with ``status`` None and the
    error (retried later); the other studies are unaffected."""
    client = make_client(destination)
    by_study: dict[str, list[Path]] = {}
    for study_uid, path in items:
        by_study.setdefault(study_uid, []).append(path)
    outcomes: dict[Path, StoreOutcome] = {}
    for study_uid, paths in by_study.items():
        try:
            outcomes.update(zip(paths, stow_study(client, study_uid, paths), strict=True))
        except DicomwebError as exc:
            LOG.warning("STOW-RS failed", extra={"fields": {"destination": destination.name, "error": str(exc)}})
            outcomes.update((p, StoreOutcome(p, None, None, str(exc))) for p in paths)
    return [outcomes[path] for _, path in items]
