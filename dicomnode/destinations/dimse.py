"""Destination type ``dimse``: C-STORE of the result objects to ``ae_title@host:port`` (TLS optional), one
association per batch, optionally followed by Storage Commitment (:mod:`dicomnode.commitment`)."""
from __future__ import annotations

from collections.abc import Sequence
from typing import Literal

from pydantic import Field, field_validator

from dicomnode.association import Peer, ScuError
from dicomnode.config_types import TLSConfig, ae_title
from dicomnode.destinations.base import DeliveryItem, DicomObjectDestination, DicomObjectSender, Outcome, SendError
from dicomnode.destinations.registry import handler_for
from dicomnode.scu import store_files


class DimseDestination(DicomObjectDestination):
    type: Literal["dimse"] = "dimse"
    ae_title: str
    host: str
    port: int = Field(ge=1, le=65535)
    tls: TLSConfig | None = None
    calling_aet: str | None = None
    # Storage Commitment: after delivery ask the peer to commit (N-ACTION, push model); files are kept until it
    # reports them committed; no report within commitment_timeout_seconds: re-asked, metric, status
    storage_commitment: bool = False
    commitment_timeout_seconds: float = Field(300, gt=0)

    @field_validator("ae_title", "calling_aet")
    @classmethod
    def _check_ae(cls, value: str | None) -> str | None:
        return ae_title(value) if value is not None else None

    @property
    def address(self) -> str:
        return f"{self.ae_title}@{self.host}:{self.port}" + (" (TLS)" if self.tls and self.tls.enabled else "")

    def describe(self) -> str:
        commitment = (f", storage commitment (timeout {self.commitment_timeout_seconds:g} s)"
                      if self.storage_commitment else "")
        return f"dimse {self.address}{commitment}"

    def peer(self, calling_aet: str, association_timeout: float = 30.0) -> Peer:
        """How the node calls this destination."""
        return Peer(self.ae_title, self.host, self.port, self.calling_aet or calling_aet, self.tls,
                    connect_timeout=min(10.0, association_timeout), acse_timeout=association_timeout)


@handler_for(DimseDestination)
class DimseSender(DicomObjectSender[DimseDestination]):
    def send(self, items: Sequence[DeliveryItem]) -> list[Outcome]:
        peer = self.destination.peer(self.node.ae_title, self.node.association_timeout)
        try:
            outcomes = store_files(peer, [item.path for item in items])
        except ScuError as exc:
            raise SendError(str(exc)) from exc
        return [Outcome(o.stored, o.status, o.error, o.permanent) for o in outcomes]
