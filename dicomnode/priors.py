"""Prior studies from the PACS: find the patient's most recent earlier CR/DX study and retrieve its images.

Query/Retrieve SCU (Study Root). ``find_prior_study`` asks with C-FIND at STUDY level (PatientID, StudyDate up to
the current date, ModalitiesInStudy CR\\DX) and checks candidates whose PACS did not report ModalitiesInStudy at
SERIES level. ``retrieve_study`` fetches the study's CR/DX series into a directory, with C-GET (default) or with
C-MOVE (``retrieve: move``) to ``move_aet``, a Storage SCP the node runs on ``move_port`` only for the duration of
the move. The PACS must know ``move_aet`` at this host and ``move_port``; use an AE title other than the node's
listener (the PACS sends routed studies to that one), e.g. ``CXRNODE_QR``. Priors never enter the spool.

A PACS that is down, refuses, or has no prior never raises: the caller gets None / [] and the reason is logged
(``lookup_prior`` / ``retrieve`` also return it). Patient IDs are never logged.

Settings come from the typed ``reasoning.priors`` section (``dicomnode.config.PriorsConfig``), which refuses an
enabled section without host, port or query AE when the config loads.
"""
from __future__ import annotations

import logging
import os
import shutil
import tempfile
import threading
import time
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from pydicom.dataset import Dataset
from pydicom.uid import (
    JPEG2000,
    DeflatedExplicitVRLittleEndian,
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
    JPEG2000Lossless,
    JPEGBaseline8Bit,
    JPEGExtended12Bit,
    JPEGLossless,
    JPEGLosslessSV1,
    JPEGLSLossless,
    JPEGLSNearLossless,
    RLELossless,
)
from pynetdicom import AE, build_role, evt
from pynetdicom.association import Association
from pynetdicom.dimse_primitives import C_STORE
from pynetdicom.sop_class import (  # type: ignore[attr-defined]  # pynetdicom makes these names at import time
    ComputedRadiographyImageStorage,
    DigitalXRayImageStorageForPresentation,
    DigitalXRayImageStorageForProcessing,
    StudyRootQueryRetrieveInformationModelFind,
    StudyRootQueryRetrieveInformationModelGet,
    StudyRootQueryRetrieveInformationModelMove,
)

from dicomnode.association import Peer, ScuError, association, make_ae, requestor_ae
from dicomnode.config import PriorsConfig
from dicomnode.uids import clean_uid

log = logging.getLogger(__name__)

DEFAULT_MODALITIES: tuple[str, ...] = ("CR", "DX")
STORAGE_CLASSES: tuple[str, ...] = (
    ComputedRadiographyImageStorage,
    DigitalXRayImageStorageForPresentation,
    DigitalXRayImageStorageForProcessing,
)
_MULTI_VALUE_MATCHING: set[tuple[str, int, str]] = set()  # PACS seen to match ModalitiesInStudy "CR\\DX"
_UNCOMPRESSED = [ExplicitVRLittleEndian, ImplicitVRLittleEndian]
_COMPRESSED = [
    JPEGLosslessSV1, JPEGLossless, JPEG2000Lossless, JPEG2000, JPEGLSLossless, JPEGLSNearLossless, RLELossless,
    JPEGBaseline8Bit, JPEGExtended12Bit, DeflatedExplicitVRLittleEndian,
]


@dataclass(frozen=True)
class PriorSeries:
    series_instance_uid: str
    modality: str  # "" when the PACS did not say


@dataclass(frozen=True)
class PriorStudy:
    """The prior study as the PACS describes it."""

    study_instance_uid: str
    study_date: str
    study_time: str = ""
    accession_number: str = ""
    study_description: str = ""
    modalities: tuple[str, ...] = ()


@dataclass
class PriorLookup:
    prior: PriorStudy | None
    reason: str  # why there is no prior, or a short description of the one found


@dataclass
class RetrieveResult:
    files: list[Path] = field(default_factory=list)
    reason: str = ""


class _PriorsError(Exception):
    """A reason to give up, already phrased for the log."""


def _pacs(config: PriorsConfig) -> Peer:
    """The PACS to query; _PriorsError when host, port or query AE is missing."""
    given = {"query_aet": config.query_aet, "host": config.host, "port": config.port}
    missing = [name for name, value in given.items() if not value]
    if missing:  # only possible for a disabled section used directly: config loading refuses an enabled one
        raise _PriorsError(f"priors not configured: {', '.join(missing)} missing")
    timeout = float(config.timeout_seconds)
    return Peer(str(config.query_aet), str(config.host), int(config.port or 0), config.calling_aet or "CXRNODE",
                connect_timeout=min(timeout, 10.0), acse_timeout=timeout, dimse_timeout=timeout)


def _modalities(config: PriorsConfig) -> tuple[str, ...]:
    return tuple(m.upper() for m in (config.modalities or DEFAULT_MODALITIES))


@contextmanager
def _associate(ae: AE, pacs: Peer, **kwargs: Any) -> Iterator[Association]:
    try:
        with association(ae, pacs, explain_unreachable=True, **kwargs) as assoc:
            yield assoc
    except ScuError as exc:
        raise _PriorsError(f"PACS {exc}") from None


def _add_storage_contexts(ae: AE, requested: bool) -> None:
    for sop_class in STORAGE_CLASSES:
        add = ae.add_requested_context if requested else ae.add_supported_context
        add(sop_class, _UNCOMPRESSED)
        for syntax in _COMPRESSED:
            add(sop_class, syntax)


def _answer_text(ds: Dataset, keyword: str) -> str:
    """A C-FIND answer value as text: "" when absent, several values joined with a backslash."""
    value = ds.get(keyword, "")
    if value is None:
        return ""
    if isinstance(value, (list, tuple)) or type(value).__name__ == "MultiValue":
        return "\\".join(str(v) for v in value)
    return str(value).strip()


class _NoResponse(_PriorsError):
    """The association died or timed out: nothing more can be asked on it."""


def _no_response(what: str, assoc: Association) -> _NoResponse:
    deadline = time.monotonic() + 1.0
    while assoc.is_established and time.monotonic() < deadline:  # an abort is noticed a moment later
        time.sleep(0.02)
    if assoc.is_aborted:
        return _NoResponse(f"{what}: PACS aborted the association (request refused?)")
    return _NoResponse(f"{what}: no response from PACS (timeout)")


def _c_find(assoc: Association, query: Dataset) -> list[Dataset]:
    """All matches of a C-FIND; raises _PriorsError on a failure status."""
    matches: list[Dataset] = []
    for status, identifier in assoc.send_c_find(query, StudyRootQueryRetrieveInformationModelFind):
        if not status:
            raise _no_response("C-FIND", assoc)
        code = int(status.Status)
        if code in (0xFF00, 0xFF01):
            if identifier is not None:
                matches.append(identifier)
        elif code != 0x0000:
            comment = _answer_text(status, "ErrorComment")
            raise _PriorsError(f"C-FIND failed with status 0x{code:04X}{': ' + comment if comment else ''}")
    return matches


def _study_query(patient_id: str, date_range: str, modalities: str) -> Dataset:
    ds = Dataset()
    ds.QueryRetrieveLevel = "STUDY"
    ds.PatientID = patient_id
    ds.StudyInstanceUID = ""
    ds.StudyDate = date_range
    ds.StudyTime = ""
    ds.AccessionNumber = ""
    ds.StudyDescription = ""
    ds.ModalitiesInStudy = modalities
    return ds


def _series_of(assoc: Association, study_uid: str) -> list[PriorSeries]:
    ds = Dataset()
    ds.QueryRetrieveLevel = "SERIES"
    ds.StudyInstanceUID = study_uid
    ds.SeriesInstanceUID = ""
    ds.Modality = ""
    series = []
    for match in _c_find(assoc, ds):
        uid = clean_uid(match.get("SeriesInstanceUID"))
        if uid:
            series.append(PriorSeries(uid, _answer_text(match, "Modality").upper()))
    return series


def _is_earlier(date: str, tm: str, current_date: str, current_time: str | None) -> bool:
    if not current_date:
        return True
    if not date:
        return False
    if date != current_date:
        return date < current_date
    if not tm or not current_time:
        return False  # same day without times: not known to be earlier
    return tm.split(".")[0].ljust(6, "0") < current_time.split(".")[0].ljust(6, "0")


def _candidates(
    assoc: Association, s: PriorsConfig, patient_id: str, current_uid: str, date: str, tm: str | None
) -> list[PriorStudy]:
    date_range = f"-{date}" if date else ""
    wanted = "\\".join(_modalities(s))
    matches = _c_find(assoc, _study_query(patient_id, date_range, wanted))
    pacs = (str(s.host), int(s.port or 0), str(s.query_aet))
    if matches:
        _MULTI_VALUE_MATCHING.add(pacs)
    elif pacs not in _MULTI_VALUE_MATCHING:
        # a PACS may match a multi-valued ModalitiesInStudy literally: ask without it and filter here (until this
        # PACS has once answered the multi-valued query, which proves it understands it)
        matches = _c_find(assoc, _study_query(patient_id, date_range, ""))
    studies = []
    for m in matches:
        uid = clean_uid(m.get("StudyInstanceUID"))
        returned_pid = _answer_text(m, "PatientID")
        if not uid or uid == current_uid or (returned_pid and returned_pid != patient_id):
            continue
        study_date, study_time = _answer_text(m, "StudyDate"), _answer_text(m, "StudyTime")
        if not _is_earlier(study_date, study_time, date, tm):
            continue
        modalities = tuple(v.upper() for v in _answer_text(m, "ModalitiesInStudy").split("\\") if v)
        studies.append(
            PriorStudy(
                study_instance_uid=uid,
                study_date=study_date,
                study_time=study_time,
                accession_number=_answer_text(m, "AccessionNumber"),
                study_description=_answer_text(m, "StudyDescription"),
                modalities=modalities,
            )
        )
    studies.sort(key=lambda p: (p.study_date, p.study_time.split(".")[0].ljust(6, "0")), reverse=True)
    return studies


def lookup_prior(
    config: PriorsConfig,
    patient_id: str,
    current_study_uid: str,
    current_study_date: str,
    current_study_time: str | None = None,
) -> PriorLookup:
    """The patient's most recent CR/DX study before the current one, or None with the reason."""
    if not patient_id:
        return PriorLookup(None, "no prior: current study has no Patient ID")
    try:
        pacs = _pacs(config)
        ae = requestor_ae(pacs)
        ae.add_requested_context(StudyRootQueryRetrieveInformationModelFind)
        with _associate(ae, pacs) as assoc:
            for candidate in _candidates(assoc, config, patient_id, current_study_uid, current_study_date,
                                         current_study_time):
                modalities = set(candidate.modalities)
                if not modalities:  # PACS ignored ModalitiesInStudy: look at the series
                    modalities = {series.modality for series in _series_of(assoc, candidate.study_instance_uid)}
                    candidate = replace(candidate, modalities=tuple(sorted(modalities - {""})))
                if modalities & set(_modalities(config)):
                    return PriorLookup(candidate, f"prior study {candidate.study_instance_uid} of "
                                                  f"{candidate.study_date or 'unknown date'}")
        wanted = "/".join(_modalities(config))
        return PriorLookup(None, f"no prior: PACS has no earlier {wanted} study of the patient")
    except _PriorsError as exc:
        return PriorLookup(None, f"no prior: {exc}")
    except Exception as exc:  # never let the PACS break a study's reasoning
        log.exception("priors: unexpected error during C-FIND")
        return PriorLookup(None, f"no prior: {type(exc).__name__}: {exc}")


@dataclass
class PriorFetch:
    """The prior study and its retrieved CR/DX files; ``files`` empty means no usable prior (``reason`` says why)."""

    prior: PriorStudy | None
    files: list[Path]
    reason: str


def fetch_prior(
    config_priors: PriorsConfig,
    patient_id: str,
    current_study_uid: str,
    current_study_date: str,
    dest_dir: str | Path,
    current_study_time: str | None = None,
) -> PriorFetch:
    """Find and retrieve the prior in one call (what the reasoning worker needs); never raises, logs the outcome."""
    if not config_priors.enabled:
        return PriorFetch(None, [], "no prior: priors disabled")
    found = lookup_prior(config_priors, patient_id, current_study_uid, current_study_date, current_study_time)
    if found.prior is None:
        log.info("priors: study %s: %s", current_study_uid, found.reason)
        return PriorFetch(None, [], found.reason)
    got = retrieve(config_priors, found.prior.study_instance_uid, dest_dir)
    level = logging.INFO if got.files else logging.WARNING
    log.log(level, "priors: study %s: %s; %s", current_study_uid, found.reason, got.reason)
    return PriorFetch(found.prior, got.files, got.reason if not got.files else f"{found.reason}; {got.reason}")


def find_prior_study(
    config_priors: PriorsConfig,
    patient_id: str,
    current_study_uid: str,
    current_study_date: str,
    current_study_time: str | None = None,
) -> PriorStudy | None:
    """The patient's most recent earlier CR/DX study in the PACS; None (reason logged) when none or on failure."""
    result = lookup_prior(config_priors, patient_id, current_study_uid, current_study_date, current_study_time)
    if result.prior is None:
        level = logging.INFO if result.reason.startswith("no prior: PACS has no") else logging.WARNING
        log.log(level, "priors: study %s: %s", current_study_uid, result.reason)
    else:
        log.info("priors: study %s: %s", current_study_uid, result.reason)
    return result.prior


def _chunked_dataset_path(event: evt.Event) -> Path | None:
    """The Part-10 file pynetdicom wrote when ``STORE_RECV_CHUNKED_DATASET`` is on, else None."""
    try:
        path = event.dataset_path
    except AttributeError:
        return None
    return Path(path) if path else None


class _Receiver:
    """C-STORE handler writing CR/DX instances into ``dest_dir`` as ``<SOPInstanceUID>.dcm`` (atomic rename)."""

    def __init__(self, dest_dir: Path) -> None:
        self.dest_dir = dest_dir
        self.files: list[Path] = []
        self.errors: list[str] = []
        self._lock = threading.Lock()

    def __call__(self, event: evt.Event) -> int:
        request = event.request  # typed as any DIMSE primitive; a C-STORE here (EVT_C_STORE)
        uid = clean_uid(request.AffectedSOPInstanceUID) if isinstance(request, C_STORE) else None
        if uid is None:
            self.errors.append("instance with an invalid SOP Instance UID refused")
            return 0xC210
        path = self.dest_dir / f"{uid}.dcm"
        try:
            fd, tmp = tempfile.mkstemp(dir=self.dest_dir, prefix=".recv-")
            with os.fdopen(fd, "wb") as handle:  # no fsync: a prior is a scratch copy, re-fetchable
                chunked = _chunked_dataset_path(event)
                if chunked is None:
                    handle.write(event.encoded_dataset())
                else:  # the node's listener turns on chunked receive process-wide: the file is already there
                    with open(chunked, "rb") as source:
                        shutil.copyfileobj(source, handle)
            os.replace(tmp, path)
        except OSError as exc:
            self.errors.append(f"cannot store {uid}: {exc}")
            return 0xA700
        with self._lock:
            if path not in self.files:
                self.files.append(path)
        return 0x0000


def _check_retrieve(assoc: Association, responses: Iterable[tuple[Dataset, Dataset | None]], what: str) -> None:
    final = None
    for status, _identifier in responses:
        if not status:
            raise _no_response(what, assoc)
        final = status
    if final is None:
        raise _PriorsError(f"{what}: no final status")
    code = int(final.Status)
    if code not in (0x0000, 0xB000):  # success, or warning (some sub-operations failed)
        comment = _answer_text(final, "ErrorComment")
        raise _PriorsError(f"{what} failed with status 0x{code:04X}{': ' + comment if comment else ''}")
    failed = int(final.get("NumberOfFailedSuboperations", 0) or 0)
    if failed:
        log.warning("priors: %s: %d sub-operations failed", what, failed)


def _retrieve_queries(assoc: Association, s: PriorsConfig, study_uid: str) -> list[Dataset]:
    """One SERIES-level identifier per CR/DX series; a STUDY-level one when the PACS lists no series."""
    try:
        series = _series_of(assoc, study_uid)
    except _NoResponse:
        raise
    except _PriorsError as exc:
        log.info("priors: series query failed (%s); retrieving the whole study", exc)
        series = []
    wanted = [x for x in series if x.modality in _modalities(s) or not x.modality]
    if series and not wanted:
        return []
    ds = Dataset()
    ds.QueryRetrieveLevel = "SERIES" if wanted else "STUDY"
    ds.StudyInstanceUID = study_uid
    if wanted:  # one request for all wanted series (UID list matching)
        uids = [x.series_instance_uid for x in wanted]
        ds.SeriesInstanceUID = uids if len(uids) > 1 else uids[0]
    return [ds]


def _get(s: PriorsConfig, study_uid: str, receiver: _Receiver) -> None:
    pacs = _pacs(s)
    ae = requestor_ae(pacs)
    ae.add_requested_context(StudyRootQueryRetrieveInformationModelFind)
    ae.add_requested_context(StudyRootQueryRetrieveInformationModelGet)
    _add_storage_contexts(ae, requested=True)
    roles = [build_role(sop_class, scp_role=True) for sop_class in STORAGE_CLASSES]
    with _associate(ae, pacs, ext_neg=roles, evt_handlers=[(evt.EVT_C_STORE, receiver)]) as assoc:
        for query in _retrieve_queries(assoc, s, study_uid):
            _check_retrieve(assoc, assoc.send_c_get(query, StudyRootQueryRetrieveInformationModelGet), "C-GET")


def _move(s: PriorsConfig, study_uid: str, receiver: _Receiver) -> None:
    pacs = _pacs(s)
    if not s.move_port or not s.move_aet:
        raise _PriorsError("priors.retrieve is 'move' but move_aet / move_port are not set")
    scp = make_ae(s.move_aet, acse_timeout=pacs.acse_timeout, dimse_timeout=pacs.dimse_timeout,
                  network_timeout=pacs.dimse_timeout)
    _add_storage_contexts(scp, requested=False)
    try:
        server = scp.start_server(("", int(s.move_port)), block=False, evt_handlers=[(evt.EVT_C_STORE, receiver)])
    except OSError as exc:
        raise _PriorsError(f"cannot listen for C-MOVE on port {s.move_port}: {exc.strerror or exc}") from None
    assert server is not None  # block=False returns the running server (typed Optional for block=True)
    try:
        ae = requestor_ae(pacs)
        ae.add_requested_context(StudyRootQueryRetrieveInformationModelFind)
        ae.add_requested_context(StudyRootQueryRetrieveInformationModelMove)
        with _associate(ae, pacs) as assoc:
            for query in _retrieve_queries(assoc, s, study_uid):
                _check_retrieve(assoc, assoc.send_c_move(query, s.move_aet, StudyRootQueryRetrieveInformationModelMove),
                                "C-MOVE")
    finally:
        server.shutdown()


def retrieve(config_priors: PriorsConfig, study_uid: str, dest_dir: str | Path) -> RetrieveResult:
    """Fetch the CR/DX images of ``study_uid`` into ``dest_dir``; files and, when empty, the reason."""
    dest = Path(dest_dir)
    uid = clean_uid(study_uid)
    if uid is None:
        return RetrieveResult([], "not retrieved: invalid Study Instance UID")
    try:
        s = config_priors
        _pacs(s)
        dest.mkdir(parents=True, exist_ok=True)
        receiver = _Receiver(dest)
        (_move if s.retrieve == "move" else _get)(s, uid, receiver)
    except _PriorsError as exc:
        return RetrieveResult([], f"not retrieved: {exc}")
    except Exception as exc:
        log.exception("priors: unexpected error during retrieve")
        return RetrieveResult([], f"not retrieved: {type(exc).__name__}: {exc}")
    files = sorted(receiver.files)
    if not files:
        detail = "; ".join(receiver.errors[:3]) or "PACS sent no CR/DX instances"
        return RetrieveResult([], f"not retrieved: {detail}")
    return RetrieveResult(files, f"retrieved {len(files)} instance(s) with C-{s.retrieve.upper()}")


def retrieve_study(config_priors: PriorsConfig, study_uid: str, dest_dir: str | Path) -> list[Path]:
    """The retrieved files (``<SOPInstanceUID>.dcm`` in ``dest_dir``); [] with a logged reason on failure."""
    result = retrieve(config_priors, study_uid, dest_dir)
    if result.files:
        log.info("priors: study %s: %s", study_uid, result.reason)
    else:
        log.warning("priors: study %s: %s", study_uid, result.reason)
    return result.files
