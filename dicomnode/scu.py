"""DICOM SCU to a peer: C-ECHO and C-STORE of files in one association, with each C-STORE status checked.

Used by the delivery loop and by the ``echo``/``send`` CLI commands.
"""
from __future__ import annotations

import logging
import re
import socket
import ssl
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from pydicom import Dataset, dcmread
from pydicom.uid import UID, ExplicitVRLittleEndian, ImplicitVRLittleEndian
from pynetdicom import AE
from pynetdicom import _config as pynetdicom_config
from pynetdicom.presentation import PresentationContext, build_context

if TYPE_CHECKING:
    from dicomnode.config import Destination, TLSConfig

LOG = logging.getLogger("dicomnode.scu")

#: C-STORE statuses that mean the peer kept the object (success and the storage warnings).
STORED_STATUSES = frozenset({0x0000, 0xB000, 0xB006, 0xB007})
MAX_CONTEXTS = 128
# Send files as they are stored (file meta stripped, in PDU-sized chunks) instead of decoding and re-encoding each
# one: the SR's re-encoding alone cost more than its transfer. store_files only sends a file whose own transfer
# syntax the peer accepted, which is what this mode requires. Process-wide, like the listener's receive setting.
pynetdicom_config.STORE_SEND_CHUNKED_DATASET = True
UNCOMPRESSED_ORDER = (ExplicitVRLittleEndian, ImplicitVRLittleEndian)
UNCOMPRESSED = frozenset(UNCOMPRESSED_ORDER)
_PEER_RE = re.compile(r"^(?P<ae>[^@]{1,16})@(?P<host>\[[^\]]+\]|[^:]+):(?P<port>\d{1,5})$")


class ScuError(RuntimeError):
    """No association (refused, rejected, aborted, unreachable)."""


@dataclass(frozen=True)
class Peer:
    """A remote application entity and how we call it."""

    ae_title: str
    host: str
    port: int
    calling_aet: str = "CXRNODE"
    tls: "TLSConfig | None" = None
    connect_timeout: float = 10.0
    acse_timeout: float = 30.0
    dimse_timeout: float = 120.0

    @classmethod
    def parse(cls, text: str, calling_aet: str = "CXRNODE") -> "Peer":
        """``AE@HOST:PORT`` -> Peer."""
        match = _PEER_RE.match(text.strip())
        if not match or not 0 < int(match["port"]) < 65536:
            raise ValueError(f"peer {text!r} is not AE@HOST:PORT")
        return cls(match["ae"], match["host"].strip("[]"), int(match["port"]), calling_aet)

    @classmethod
    def from_destination(cls, destination: "Destination", calling_aet: str, association_timeout: float = 30.0
                         ) -> "Peer":
        assert destination.ae_title and destination.host and destination.port, "a DIMSE destination"
        return cls(destination.ae_title, destination.host, destination.port,
                   destination.calling_aet or calling_aet, destination.tls,
                   connect_timeout=min(10.0, association_timeout), acse_timeout=association_timeout)

    def __str__(self) -> str:
        return f"{self.ae_title}@{self.host}:{self.port}"


@dataclass(frozen=True)
class StoreOutcome:
    """The answer to one C-STORE: ``status`` None when none came (association lost, timeout)."""

    path: Path
    sop_instance_uid: str | None
    status: int | None
    error: str | None = None
    permanent: bool = False  # refused for good (DICOMweb 4xx): dead-lettered without further tries

    @property
    def stored(self) -> bool:
        return self.status in STORED_STATUSES


def tls_context(tls: "TLSConfig") -> ssl.SSLContext:
    """A client-side TLS context: verify the peer against ``tls.ca`` and present ``cert``/``key`` when given."""
    context = ssl.create_default_context(ssl.Purpose.SERVER_AUTH, cafile=str(tls.ca) if tls.ca else None)
    context.check_hostname = False
    if tls.cert and tls.key:
        context.load_cert_chain(str(tls.cert), str(tls.key))
    return context


def _application_entity(peer: Peer) -> AE:
    ae = AE(ae_title=peer.calling_aet)
    ae.connection_timeout = peer.connect_timeout
    ae.acse_timeout = peer.acse_timeout
    ae.dimse_timeout = peer.dimse_timeout
    ae.network_timeout = peer.dimse_timeout
    ae.maximum_pdu_size = 0
    return ae


def _no_delay(assoc) -> None:  # type: ignore[no-untyped-def]
    """TCP_NODELAY on the association's socket: a C-STORE ends in a small PDU that Nagle's algorithm would hold
    back until the peer's delayed ACK (tens of milliseconds per object on loopback)."""
    try:
        assoc.dul.socket.socket.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    except (AttributeError, OSError):  # no plain TCP socket underneath: keep the default
        pass


def _associate(ae: AE, peer: Peer):  # type: ignore[no-untyped-def]
    kwargs = {}
    if peer.tls is not None and peer.tls.enabled:
        kwargs["tls_args"] = (tls_context(peer.tls), None)
    try:
        assoc = ae.associate(peer.host, peer.port, ae_title=peer.ae_title, **kwargs)
    except (OSError, ssl.SSLError) as exc:
        raise ScuError(f"{peer}: {exc}") from exc
    if assoc.is_established:
        _no_delay(assoc)
        return assoc
    if assoc.is_rejected:
        raise ScuError(f"{peer}: association rejected")
    if assoc.is_aborted:
        raise ScuError(f"{peer}: association aborted or connection refused")
    raise ScuError(f"{peer}: no association (connection refused or timed out)")


def echo(peer: Peer) -> int:
    """One C-ECHO; returns the status (0x0000 = success). ScuError when no association."""
    ae = _application_entity(peer)
    ae.add_requested_context("1.2.840.10008.1.1")
    assoc = _associate(ae, peer)
    try:
        status = assoc.send_c_echo()
    finally:
        _close(assoc)
    if "Status" not in status:
        raise ScuError(f"{peer}: no C-ECHO response")
    return int(status.Status)


def _close(assoc) -> None:  # type: ignore[no-untyped-def]
    if assoc.is_established:
        assoc.release()
    else:
        assoc.abort()


def _file_header(path: Path) -> tuple[str, str, str]:
    ds = dcmread(path, stop_before_pixels=True, specific_tags=["SOPClassUID", "SOPInstanceUID"])
    meta = ds.file_meta
    sop_class = str(meta.get("MediaStorageSOPClassUID") or ds.SOPClassUID)
    sop_uid = str(meta.get("MediaStorageSOPInstanceUID") or ds.SOPInstanceUID)
    return sop_class, sop_uid, str(meta.TransferSyntaxUID)


def store_files(peer: Peer, paths: Sequence[Path | str]) -> list[StoreOutcome]:
    """C-STORE ``paths`` in one association; one outcome per path, in order. ScuError when no association.

    Unreadable files and files whose SOP class/transfer syntax the peer did not accept get an outcome with
    ``status=None`` and an ``error``; after an abort the rest get "association lost".
    """
    files = [Path(p) for p in paths]
    headers: dict[Path, tuple[str, str, str]] = {}
    outcomes: dict[Path, StoreOutcome] = {}
    for path in files:
        try:
            headers[path] = _file_header(path)
        except Exception as exc:  # noqa: BLE001 - any unreadable file is an outcome, not a crash
            outcomes[path] = StoreOutcome(path, None, None, f"unreadable: {exc}")
    contexts = requested_contexts(headers.values())
    if len(contexts) > MAX_CONTEXTS:
        raise ScuError(f"{len(contexts)} presentation contexts in one send; at most {MAX_CONTEXTS}")
    if headers:
        ae = _application_entity(peer)
        ae.requested_contexts = contexts
        assoc = _associate(ae, peer)
        try:
            for path, (sop_class, sop_uid, transfer_syntax) in headers.items():
                if not assoc.is_established:
                    outcomes[path] = StoreOutcome(path, sop_uid, None, "association lost")
                    continue
                accepted = {
                    cx.transfer_syntax[0] for cx in assoc.accepted_contexts if cx.abstract_syntax == sop_class
                }
                if transfer_syntax in accepted:
                    payload: Path | Dataset = path
                elif _is_compressed(transfer_syntax) and accepted & UNCOMPRESSED:
                    try:  # the peer takes only uncompressed data: decode (lossless codecs give the same pixels)
                        payload = _decompressed(path)
                    except Exception as exc:  # noqa: BLE001 - an undecodable file is an outcome, not a crash
                        outcomes[path] = StoreOutcome(path, sop_uid, None, f"cannot decompress for {peer}: {exc}")
                        continue
                    LOG.info("sent decompressed: the peer does not accept the compressed transfer syntax",
                             extra={"fields": {"sop_instance_uid": sop_uid, "peer": str(peer),
                                               "transfer_syntax": transfer_syntax}})
                else:
                    reason = "SOP class not accepted" if not accepted else f"transfer syntax {transfer_syntax} not accepted"
                    outcomes[path] = StoreOutcome(path, sop_uid, None, f"{peer}: {reason}")
                    continue
                try:
                    status = assoc.send_c_store(payload)
                except Exception as exc:  # noqa: BLE001 - network errors become outcomes
                    outcomes[path] = StoreOutcome(path, sop_uid, None, f"{type(exc).__name__}: {exc}")
                    continue
                if "Status" in status:
                    code = int(status.Status)
                    error = None if code in STORED_STATUSES else _status_text(status)
                    outcomes[path] = StoreOutcome(path, sop_uid, code, error)
                else:
                    outcomes[path] = StoreOutcome(path, sop_uid, None, "no C-STORE response (aborted or timed out)")
        finally:
            _close(assoc)
    return [outcomes[path] for path in files]


def requested_contexts(headers: Iterable[tuple[str, str, str]]) -> list[PresentationContext]:
    """Presentation contexts for files given as (SOP class, SOP instance, transfer syntax).

    Per SOP class: one context with the uncompressed syntaxes (the files' own first) and one context for each
    compressed syntax on its own, so that a peer taking RLE is sent RLE and one that does not still gets the
    object, decompressed, rather than none at all.
    """
    uncompressed: dict[str, list[str]] = {}
    compressed: dict[str, list[str]] = {}
    for sop_class, _, transfer_syntax in headers:
        plain = uncompressed.setdefault(sop_class, [])
        if _is_compressed(transfer_syntax):
            own = compressed.setdefault(sop_class, [])
            if transfer_syntax not in own:
                own.append(transfer_syntax)
        elif transfer_syntax not in plain:
            plain.append(transfer_syntax)
    contexts = []
    for sop_class, plain in uncompressed.items():
        contexts.append(build_context(sop_class, plain + [ts for ts in UNCOMPRESSED_ORDER if ts not in plain]))
        contexts += [build_context(sop_class, ts) for ts in compressed.get(sop_class, [])]
    return contexts


def _is_compressed(transfer_syntax: str) -> bool:
    """Encapsulated syntax; an unknown UID counts as uncompressed (the peer refuses it, the file gets an outcome)."""
    try:
        return UID(transfer_syntax).is_compressed
    except ValueError:
        return False


def _decompressed(path: Path) -> Dataset:
    ds = dcmread(path)
    # the same object, natively encoded: same SOP Instance UID (pydicom would make a new one) and same colour space
    ds.decompress(as_rgb=False, generate_instance_uid=False)
    return ds


def _status_text(status) -> str:  # type: ignore[no-untyped-def]
    code = int(status.Status)
    comment = status.get("ErrorComment")
    return f"C-STORE status 0x{code:04X}" + (f": {comment}" if comment else "")
