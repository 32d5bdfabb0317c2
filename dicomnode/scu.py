"""DICOM SCU to a peer: C-ECHO and C-STORE of files in one association, with each C-STORE status checked.

Used by the delivery loop and by the ``echo``/``send`` CLI commands. Peers, AEs and associations:
:mod:`dicomnode.association` (sends files unchanged once :func:`~dicomnode.association.configure_pynetdicom` ran).
"""
from __future__ import annotations

import logging
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

from pydicom import Dataset, dcmread
from pydicom.uid import UID, ExplicitVRLittleEndian, ImplicitVRLittleEndian
from pynetdicom.presentation import PresentationContext, build_context

from dicomnode.association import Peer, ScuError, associate, close, requestor_ae

LOG = logging.getLogger("dicomnode.scu")

#: C-STORE statuses that mean the peer kept the object (success and the storage warnings).
STORED_STATUSES = frozenset({0x0000, 0xB000, 0xB006, 0xB007})
MAX_CONTEXTS = 128
UNCOMPRESSED_ORDER = (ExplicitVRLittleEndian, ImplicitVRLittleEndian)
UNCOMPRESSED = frozenset(UNCOMPRESSED_ORDER)


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


def echo(peer: Peer) -> int:
    """One C-ECHO; returns the status (0x0000 = success). ScuError when no association."""
    ae = requestor_ae(peer)
    ae.add_requested_context("1.2.840.10008.1.1")
    assoc = associate(ae, peer)
    try:
        status = assoc.send_c_echo()
    finally:
        close(assoc)
    if "Status" not in status:
        raise ScuError(f"{peer}: no C-ECHO response")
    return int(status.Status)


def file_header(path: Path) -> tuple[str, str, str]:
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
            headers[path] = file_header(path)
        except Exception as exc:  # any unreadable file is an outcome, not a crash
            outcomes[path] = StoreOutcome(path, None, None, f"unreadable: {exc}")
    contexts = requested_contexts(headers.values())
    if len(contexts) > MAX_CONTEXTS:
        raise ScuError(f"{len(contexts)} presentation contexts in one send; at most {MAX_CONTEXTS}")
    if headers:
        ae = requestor_ae(peer)
        ae.requested_contexts = contexts
        assoc = associate(ae, peer)
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
                    except Exception as exc:  # an undecodable file is an outcome, not a crash
                        outcomes[path] = StoreOutcome(path, sop_uid, None, f"cannot decompress for {peer}: {exc}")
                        continue
                    LOG.info("sent decompressed: the peer does not accept the compressed transfer syntax",
                             extra={"fields": {"sop_instance_uid": sop_uid, "peer": str(peer),
                                               "transfer_syntax": transfer_syntax}})
                else:
                    reason = ("SOP class not accepted" if not accepted
                              else f"transfer syntax {transfer_syntax} not accepted")
                    outcomes[path] = StoreOutcome(path, sop_uid, None, f"{peer}: {reason}")
                    continue
                try:
                    status = assoc.send_c_store(payload)
                except Exception as exc:  # network errors become outcomes
                    outcomes[path] = StoreOutcome(path, sop_uid, None, f"{type(exc).__name__}: {exc}")
                    continue
                if "Status" in status:
                    code = int(status.Status)
                    error = None if code in STORED_STATUSES else _status_text(status)
                    outcomes[path] = StoreOutcome(path, sop_uid, code, error)
                else:
                    outcomes[path] = StoreOutcome(path, sop_uid, None, "no C-STORE response (aborted or timed out)")
        finally:
            close(assoc)
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


def _status_text(status: Dataset) -> str:
    code = int(status.Status)
    comment = status.get("ErrorComment")
    return f"C-STORE status 0x{code:04X}" + (f": {comment}" if comment else "")
