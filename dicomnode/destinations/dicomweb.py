"""Destination type ``dicomweb``: STOW-RS of the result objects to ``url`` (basic or bearer auth from the
environment), one request per study (the protocol: :mod:`dicomnode.dicomweb`)."""
from __future__ import annotations

from collections.abc import Sequence
from typing import Literal

from dicomnode.destinations.base import (
    DeliveryItem,
    DicomObjectDestination,
    DicomObjectSender,
    HttpDestination,
    Outcome,
)
from dicomnode.destinations.registry import handler_for


class DicomwebDestination(HttpDestination, DicomObjectDestination):
    url_meaning = "the DICOMweb root"  # STOW-RS posts to {url}/studies/{study}
    type: Literal["dicomweb"] = "dicomweb"

    def describe(self) -> str:
        return f"dicomweb STOW-RS {self.url}, {self.auth.describe()}"


@handler_for(DicomwebDestination)
class DicomwebSender(DicomObjectSender[DicomwebDestination]):
    def send(self, items: Sequence[DeliveryItem]) -> list[Outcome]:
        from dicomnode.dicomweb import store_files

        outcomes = store_files(self.destination, [(item.study_instance_uid, item.path) for item in items])
        return [Outcome(o.stored, o.status, o.error, o.permanent) for o in outcomes]
