"""STOW-RS delivery to a ``type: dicomweb`` destination through ``dicomweb-client``.

One POST per study (``{url}/studies/{StudyInstanceUID}``: the server checks every object belongs to the study the
node reasoned on). Outcomes, per object, in the terms of :class:`dicomnode.scu.StoreOutcome`:

- 200, or 202 with the object in the ReferencedSOPSequence: stored (``status`` 0, or the HTTP status).
- 4xx: refused for good (``permanent``): the delivery is dead-lettered with the server's reason; 409 names the
  study mismatch.
- 202 with the object in the FailedSOPSequence: its FailureReason; out-of-resources (0xA7xx) is retried, any other
  reason is permanent.
- 5xx, timeouts and connection errors: no outcome (``status`` None): retried with the destination's backoff.

``dicomweb-client``'s own retries are turned off: the delivery loop owns retries, and a row once stored is never
sent again.
"""
from __future__ import annotations

import json
import logging
import os
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Protocol

import requests
from dicomweb_client.api import DICOMwebClient
from pydicom import Dataset, dcmread

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


def _refusal(status: int, reason: str, study_uid: str, studies: dict[str, str]) -> Callable[[str], str]:
    """The dead-letter text of an object refused with HTTP ``status``; a 409 names the study mismatch."""
    def text(sop_uid: str) -> str:
        if status == 409:
            own = studies.get(sop_uid) or "(none)"
            detail = (f"the object's StudyInstanceUID {own} is not the study {study_uid} it belongs to"
                      if own != study_uid else f"the server refused it for study {study_uid}")
            return f"STOW-RS refused, HTTP 409 (study mismatch): {detail}"
        return f"STOW-RS refused, HTTP {status}: {reason}"
    return text


def _failure(path: Path, sop_uid: str, reason: int | None) -> StoreOutcome:
    code = f"0x{reason:04X}" if reason is not None else "unknown"
    transient = reason is not None and (reason & 0xFF00) == 0xA700
    return StoreOutcome(path, sop_uid, reason, f"STOW-RS failure reason {code}", permanent=not transient)


def stow_study(client: DICOMwebClient, study_uid: str, paths: Sequence[Path]) -> list[StoreOutcome]:
    """POST the objects at ``paths`` (all of ``study_uid``) in one STOW-RS request; one outcome per path.

    Raises :class:`DicomwebError` when there is no answer to act on (connection error, timeout, 5xx)."""
    datasets: list[Dataset] = []
    outcomes: dict[Path, StoreOutcome] = {}
    sent: list[tuple[Path, str]] = []
    studies: dict[str, str] = {}  # SOP Instance UID -> the study its header names
    for path in paths:
        try:
            ds = dcmread(path)
        except Exception as exc:  # an unreadable file is an outcome, not a crash
            outcomes[path] = StoreOutcome(path, None, None, f"unreadable: {exc}", permanent=True)
            continue
        datasets.append(ds)
        sent.append((path, str(ds.SOPInstanceUID)))
        studies[str(ds.SOPInstanceUID)] = str(ds.get("StudyInstanceUID", ""))
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
                refused = _refusal(status, server_reason(response), study_uid, studies)
                referenced = _uids_in(body, REFERENCED_SOP_SEQUENCE)  # a 4xx may still have stored some
                for path, sop_uid in sent:
                    outcomes[path] = (StoreOutcome(path, sop_uid, 0) if sop_uid in referenced else
                                      StoreOutcome(path, sop_uid, status, refused(sop_uid), permanent=True))
                return [outcomes[p] for p in paths]
        except (requests.ConnectionError, requests.Timeout) as exc:
            raise DicomwebError(f"STOW-RS to {client.base_url}: {type(exc).__name__}: {exc}") from exc
        referenced = _uids_in(body, REFERENCED_SOP_SEQUENCE)
        failed = _uids_in(body, FAILED_SOP_SEQUENCE)
        for path, sop_uid in sent:
            if sop_uid in failed:
                outcomes[path] = _failure(path, sop_uid, failed[sop_uid])
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
