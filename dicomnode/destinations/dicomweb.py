"""Destination type ``dicomweb``: STOW-RS of the result objects to ``url`` (basic or bearer auth from the
environment), one request per study (the protocol: :mod:`dicomnode.dicomweb`)."""
from __future__ import annotations

from collections.abc import Sequence
from typing import Literal

from pydantic import Field, field_validator

from dicomnode.config_types import HttpAuth
from dicomnode.destinations.base import DeliveryItem, DicomObjectDestination, DicomObjectSender, Outcome
from dicomnode.destinations.registry import handler_for


class DicomwebDestination(DicomObjectDestination):
    type: Literal["dicomweb"] = "dicomweb"
    url: str  # the service root: STOW-RS posts to {url}/studies/{study}
    auth: HttpAuth = Field(default_factory=HttpAuth)
    timeout_seconds: float = Field(60, gt=0)

    @field_validator("url")
    @classmethod
    def _http(cls, value: str) -> str:
        if not value.startswith(("http://", "https://")):
            raise ValueError("the DICOMweb root, http:// or https://")
        return value

    @property
    def address(self) -> str:
        return self.url

    def describe(self) -> str:
        return f"dicomweb STOW-RS {self.url}, {self.auth.describe()}"


@handler_for(DicomwebDestination)
class DicomwebSender(DicomObjectSender[DicomwebDestination]):
    def send(self, items: Sequence[DeliveryItem]) -> list[Outcome]:
        from dicomnode.dicomweb import store_files

        outcomes = store_files(self.destination, [(item.study_instance_uid, item.path) for item in items])
        return [Outcome(o.stored, o.status, o.error, o.permanent) for o in outcomes]
