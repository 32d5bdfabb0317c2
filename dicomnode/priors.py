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
from pydicom.pixels import get_decoder
from pydicom.uid import (
    HTJ2K,
    JPEG2000,
    UID,
    DeflatedExplicitVRLittleEndian,
    ExplicitVRLittleEndian,
    HTJ2KLossless,
    HTJ2KLosslessRPCL,
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
from pynetdicom import AE, build_context, build_role, evt
from pynetdicom.association import Association
from pynetdicom.dimse_primitives import C_STORE
from pynetdicom.presentation import PresentationContext
from pynetdicom.sop_class import (  # type: ignore[attr-defined]  # pynetdicom makes these names at import time
    ComputedRadiographyImageStorage,
    DigitalXRayImageStorageForPresentation,
    DigitalXRayImageStorageForProcessing,
    StudyRootQueryRetrieveInformationModelFind,
    StudyRootQueryRetrieveInformationModelGet,
    StudyRootQueryRetrieveInformationModelMove,
)
from pynetdicom.status import QR_GET_SERVICE_CLASS_STATUS, QR_MOVE_SERVICE_CLASS_STATUS

from dicomnode.association import Peer, ScuError, accept_nul_padded_ae_titles, association, make_ae, requestor_ae
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
_UNCOMPRESSED: list[str] = [ExplicitVRLittleEndian, ImplicitVRLittleEndian]
# encapsulated syntaxes a prior may be stored in, lossless first; only those pydicom can decode here are negotiated
_ENCAPSULATED = [
    JPEGLosslessSV1, JPEGLossless, JPEG2000Lossless, JPEGLSLossless, RLELossless, HTJ2KLossless, HTJ2KLosslessRPCL,
    JPEG2000, JPEGLSNearLossless, JPEGBaseline8Bit, JPEGExtended12Bit, HTJ2K, DeflatedExplicitVRLittleEndian,
]


def decodable_syntaxes() -> list[str]:
    """The encapsulated transfer syntaxes whose pixel data the node can decode (a pydicom decoder is available);
    deflate needs none."""
    usable: list[str] = []
    for syntax in _ENCAPSULATED:
        try:
            if not UID(syntax).is_compressed or get_decoder(syntax).is_available:
                usable.append(syntax)
        except (NotImplementedError, ValueError):  # no decoder for this syntax in this pydicom
            continue
    return usable


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
    listen_host: str = "",
) -> PriorFetch:
    """Find and retrieve the prior in one call (what the reasoning worker needs); never raises, logs the outcome.
    ``listen_host``: where the C-MOVE receiver listens (pass the node's ``node.host``; "" is every interface)."""
    if not config_priors.enabled:
        return PriorFetch(None, [], "no prior: priors disabled")
    found = lookup_prior(config_priors, patient_id, current_study_uid, current_study_date, current_study_time)
    if found.prior is None:
        log.info("priors: study %s: %s", current_study_uid, found.reason)
        return PriorFetch(None, [], found.reason)
    got = retrieve(config_priors, found.prior.study_instance_uid, dest_dir, listen_host)
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


@dataclass
class _Retrieved:
    """The final answer to a C-GET / C-MOVE: its status and sub-operation counts (None where the PACS gave none)."""

    what: str
    code: int
    completed: int | None = None
    failed: int | None = None
    warning: int | None = None
    comment: str = ""

    @property
    def expected(self) -> int | None:
        counts = [n for n in (self.completed, self.failed, self.warning) if n is not None]
        return sum(counts) if counts else None

    def missing(self, received: int) -> int:
        """How many instances the PACS tried to send and did not (1 when it failed sub-operations without counts)."""
        if self.expected is not None:
            return max(0, self.expected - received)
        return 1 if self.code in _SUBOPERATIONS_FAILED and not received else 0

    def status_text(self) -> str:
        statuses = QR_MOVE_SERVICE_CLASS_STATUS if self.what == "C-MOVE" else QR_GET_SERVICE_CLASS_STATUS
        meaning = statuses.get(self.code, ("", ""))[1]
        detail = "; ".join(part for part in (meaning, self.comment) if part)
        return f"status 0x{self.code:04X}" + (f" ({detail})" if detail else "")


# final statuses that mean "some or all instances could not be sent": asked again with other transfer syntaxes
_SUBOPERATIONS_FAILED = frozenset({0xA702, 0xB000})


def _count(ds: Dataset, keyword: str) -> int | None:
    value = ds.get(keyword)
    try:
        return int(value) if value is not None and value != "" else None
    except (TypeError, ValueError):
        return None


def _final_status(assoc: Association, responses: Iterable[tuple[Dataset, Dataset | None]], what: str) -> _Retrieved:
    """The final status of a C-GET / C-MOVE; _PriorsError when none came or when the PACS refused the request
    itself (anything but success or failed sub-operations)."""
    final = None
    for status, _identifier in responses:
        if not status:
            raise _no_response(what, assoc)
        final = status
    if final is None:
        raise _PriorsError(f"{what}: no final status")
    answer = _Retrieved(what, int(final.Status), _count(final, "NumberOfCompletedSuboperations"),
                        _count(final, "NumberOfFailedSuboperations"), _count(final, "NumberOfWarningSuboperations"),
                        _answer_text(final, "ErrorComment"))
    if answer.code != 0x0000 and answer.code not in _SUBOPERATIONS_FAILED:
        raise _PriorsError(f"{what} failed with {answer.status_text()}")
    return answer


def _combined(answers: list[_Retrieved]) -> _Retrieved | None:
    """One answer for the requests of one pass (at most one today: all wanted series in one identifier)."""
    if not answers:
        return None
    first = answers[0]
    total = lambda name: (sum(getattr(a, name) or 0 for a in answers)  # noqa: E731
                          if any(getattr(a, name) is not None for a in answers) else None)
    worst = next((a for a in answers if a.code != 0x0000), first)
    return _Retrieved(first.what, worst.code, total("completed"), total("failed"), total("warning"), worst.comment)


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
        uids = list(dict.fromkeys(x.series_instance_uid for x in wanted))  # a PACS may list a series twice
        ds.SeriesInstanceUID = uids if len(uids) > 1 else uids[0]
    return [ds]


def _syntax_names(syntaxes: Iterable[str]) -> str:
    return ", ".join(UID(ts).name for ts in syntaxes)


def _get_pass(pacs: Peer, s: PriorsConfig, study_uid: str, receiver: _Receiver, offers: list[list[str]]
              ) -> tuple[_Retrieved | None, list[str]]:
    """One C-GET association offering, per CR/DX storage class, one SCP-role context per list in ``offers``; the
    answer (None when the PACS has no CR/DX series) and the storage transfer syntaxes the PACS accepted."""
    ae = requestor_ae(pacs)
    ae.add_requested_context(StudyRootQueryRetrieveInformationModelFind)
    ae.add_requested_context(StudyRootQueryRetrieveInformationModelGet)
    for sop_class in STORAGE_CLASSES:
        for syntaxes in offers:
            ae.add_requested_context(sop_class, syntaxes)
    roles = [build_role(sop_class, scp_role=True) for sop_class in STORAGE_CLASSES]
    with _associate(ae, pacs, ext_neg=roles, evt_handlers=[(evt.EVT_C_STORE, receiver)]) as assoc:
        accepted = list(dict.fromkeys(str(cx.transfer_syntax[0]) for cx in assoc.accepted_contexts
                                      if cx.abstract_syntax in STORAGE_CLASSES))
        answers = [_final_status(assoc, assoc.send_c_get(query, StudyRootQueryRetrieveInformationModelGet), "C-GET")
                   for query in _retrieve_queries(assoc, s, study_uid)]
    return _combined(answers), accepted


def _get(s: PriorsConfig, study_uid: str, receiver: _Receiver) -> None:
    """C-GET offering the uncompressed syntaxes and, each in a context of its own, every syntax the node decodes.

    A PACS that cannot transcode may still send each instance in the context whose syntax is the stored one; but
    some (DCMTK's dcmqrscp) send every instance of a SOP class in the first context accepted for it and fail those
    stored otherwise. When instances are missing, the C-GET is asked again once per encapsulated syntax the PACS
    accepted, offering that syntax alone."""
    pacs = _pacs(s)
    decodable = decodable_syntaxes()
    first, accepted = _get_pass(pacs, s, study_uid, receiver, [_UNCOMPRESSED] + [[ts] for ts in decodable])
    if first is None:
        return
    tried = [ts for ts in accepted if ts in _UNCOMPRESSED]
    for syntax in (ts for ts in decodable if ts in accepted and UID(ts).is_compressed):
        if not first.missing(len(receiver.files)):
            break
        log.info("priors: C-GET: %d instance(s) not sent (%s); asking again offering only %s",
                 first.missing(len(receiver.files)), first.status_text(), UID(syntax).name)
        tried.append(syntax)
        try:
            _get_pass(pacs, s, study_uid, receiver, [[syntax]])
        except _PriorsError as exc:
            log.warning("priors: C-GET offering only %s: %s", UID(syntax).name, exc)
            break
    _conclude(first, receiver, f"offered: {_syntax_names(tried)}" if tried else "the PACS accepted no storage context")


def _conclude(first: _Retrieved, receiver: _Receiver, tried: str) -> None:
    """Raise when nothing came although the PACS failed sub-operations; log what is still missing otherwise."""
    missing = first.missing(len(receiver.files))
    if not missing:
        return
    expected = f" of {first.expected}" if first.expected is not None else ""
    text = (f"{first.what} failed with {first.status_text()}: the PACS did not send {missing}{expected} "
            f"instance(s) in a transfer syntax the node accepts ({tried}); it may hold them in another syntax and "
            f"be unable to convert")
    if not receiver.files:
        raise _PriorsError(text)
    log.warning("priors: %s", text)


class _MoveNegotiation:
    """``EVT_REQUESTED`` handler of the C-MOVE receiver: its storage contexts for the association the PACS opens.

    ``pacs_order``: accept, in each context, the first syntax the PACS proposes that the node can decode (a PACS
    that cannot transcode proposes the stored syntax first); otherwise uncompressed first (the node's preference,
    for a PACS that proposed a compressed syntax it cannot produce from an uncompressed file)."""

    def __init__(self) -> None:
        self.pacs_order = True

    def __call__(self, event: evt.Event) -> None:
        ours = _UNCOMPRESSED + decodable_syntaxes()
        proposed: list[PresentationContext] = event.assoc.requestor.requested_contexts
        contexts = []
        for sop_class in STORAGE_CLASSES:
            order = ours
            if self.pacs_order:
                offered = [ts for cx in proposed if cx.abstract_syntax == sop_class for ts in cx.transfer_syntax]
                order = list(dict.fromkeys([ts for ts in offered if ts in ours] + ours))
            contexts.append(build_context(sop_class, order))
        event.assoc.acceptor.supported_contexts = contexts


MOVE = StudyRootQueryRetrieveInformationModelMove


def _move_pass(pacs: Peer, s: PriorsConfig, study_uid: str, move_aet: str) -> _Retrieved | None:
    ae = requestor_ae(pacs)
    ae.add_requested_context(StudyRootQueryRetrieveInformationModelFind)
    ae.add_requested_context(MOVE)
    with _associate(ae, pacs) as assoc:
        answers = [_final_status(assoc, assoc.send_c_move(query, move_aet, MOVE), "C-MOVE")
                   for query in _retrieve_queries(assoc, s, study_uid)]
    return _combined(answers)


def _move(s: PriorsConfig, study_uid: str, receiver: _Receiver, listen_host: str) -> None:
    """C-MOVE to ``move_aet``: a Storage SCP on ``listen_host``:``move_port`` for the duration of the retrieve.

    The receiver accepts the syntax the PACS proposes first when the node can decode it; instances still missing
    are asked for again with the receiver preferring uncompressed."""
    pacs = _pacs(s)
    if not s.move_port or not s.move_aet:
        raise _PriorsError("priors.retrieve is 'move' but move_aet / move_port are not set")
    scp = make_ae(s.move_aet, acse_timeout=pacs.acse_timeout, dimse_timeout=pacs.dimse_timeout,
                  network_timeout=pacs.dimse_timeout)
    for sop_class in STORAGE_CLASSES:  # replaced per association by _MoveNegotiation
        scp.add_supported_context(sop_class, _UNCOMPRESSED + decodable_syntaxes())
    accept_nul_padded_ae_titles()  # the PACS's sub-association may pad our AE title so (tiny-pacs)
    negotiation = _MoveNegotiation()
    handlers: list[Any] = [(evt.EVT_REQUESTED, negotiation), (evt.EVT_C_STORE, receiver)]
    try:
        server = scp.start_server((listen_host, int(s.move_port)), block=False, evt_handlers=handlers)
    except OSError as exc:
        where = f"{listen_host}:{s.move_port}" if listen_host else f"port {s.move_port}"
        raise _PriorsError(f"cannot listen for C-MOVE on {where}: {exc.strerror or exc}") from None
    assert server is not None  # block=False returns the running server (typed Optional for block=True)
    try:
        first = _move_pass(pacs, s, study_uid, s.move_aet)
        if first is None:
            return
        tried = "accepting the PACS's proposed syntax"
        if first.missing(len(receiver.files)):
            log.info("priors: C-MOVE: %d instance(s) not sent (%s); asking again accepting uncompressed first",
                     first.missing(len(receiver.files)), first.status_text())
            negotiation.pacs_order = False
            tried += ", then uncompressed first"
            try:
                _move_pass(pacs, s, study_uid, s.move_aet)
            except _PriorsError as exc:
                log.warning("priors: C-MOVE accepting uncompressed first: %s", exc)
        _conclude(first, receiver, tried)
    finally:
        server.shutdown()


def retrieve(config_priors: PriorsConfig, study_uid: str, dest_dir: str | Path, listen_host: str = ""
             ) -> RetrieveResult:
    """Fetch the CR/DX images of ``study_uid`` into ``dest_dir``; files and, when empty, the reason.

    ``listen_host``: the address the C-MOVE receiver binds (the node's ``node.host``); "" binds every interface."""
    dest = Path(dest_dir)
    uid = clean_uid(study_uid)
    if uid is None:
        return RetrieveResult([], "not retrieved: invalid Study Instance UID")
    try:
        s = config_priors
        _pacs(s)
        dest.mkdir(parents=True, exist_ok=True)
        receiver = _Receiver(dest)
        if s.retrieve == "move":
            _move(s, uid, receiver, listen_host)
        else:
            _get(s, uid, receiver)
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


def retrieve_study(config_priors: PriorsConfig, study_uid: str, dest_dir: str | Path, listen_host: str = ""
                   ) -> list[Path]:
    """The retrieved files (``<SOPInstanceUID>.dcm`` in ``dest_dir``); [] with a logged reason on failure."""
    result = retrieve(config_priors, study_uid, dest_dir, listen_host)
    if result.files:
        log.info("priors: study %s: %s", study_uid, result.reason)
    else:
        log.warning("priors: study %s: %s", study_uid, result.reason)
    return result.files
