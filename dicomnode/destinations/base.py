"""What every destination type is built from: its config class, what it is given to send, and its sender.

A destination type (``dimse``, ``dicomweb``, ...) is a :class:`DestinationConfig` subclass with a ``type`` literal,
plus a :class:`Sender` subclass registered for it with :func:`dicomnode.destinations.registry.handler_for`.

What a destination receives is decided by its sender, in two ways:
- ``object_payload``: each result object as soon as it is stored (the DICOM types: the object's own file, when the
  destination takes its kind);
- ``result_set_payloads``: once the whole result set of a job is stored (message types such as HL7 or FHIR build
  their message from it here).
Either way a :class:`Payload` is stored durably and a delivery row queued for it before anything is sent; the
delivery loop then hands due rows to ``send`` as :class:`DeliveryItem` s and records each :class:`Outcome`
(retries with back-off, dead letter, audit and metrics are the loop's, the same for every type).
"""
from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import ClassVar, Generic, TypeVar

from pydantic import Field, field_validator

from dicomnode.config_types import ConfigModel, HttpAuth, ResultKinds, RetryConfig, registered_kinds
from inference.triage import TriageRule

DICOM_MEDIA_TYPE = "application/dicom"


class DestinationConfig(ConfigModel):
    """The keys every destination has; a type adds its own (and a ``type`` literal)."""

    name: str = Field(min_length=1, max_length=64)
    type: str
    retry: RetryConfig = Field(default_factory=RetryConfig)

    @property
    def address(self) -> str:
        """Where it sends, for people (dashboard, ``config check``): ``AE@host:port``, a URL, ..."""
        raise NotImplementedError

    def describe(self) -> str:
        """One line for ``cxr-node config check``."""
        return f"{self.type} {self.address}"

    @property
    def parallel_sends(self) -> int:
        """How many delivery loops may send to it at once."""
        return 1

    def takes(self, kind: str) -> bool:
        """Whether it is sent result objects of ``kind`` as they are made."""
        return False


class DicomObjectDestination(DestinationConfig):
    """A destination that is sent the DICOM result objects of the kinds in ``objects`` (default: all)."""

    objects: ResultKinds = Field(default_factory=registered_kinds)
    # at most this many associations (requests) at once: objects that are ready while another is being sent go on
    # a second one instead of waiting (1: one object after the other)
    associations: int = Field(2, ge=1, le=8)

    @property
    def parallel_sends(self) -> int:
        return self.associations

    def takes(self, kind: str) -> bool:
        return kind in self.objects


class HttpDestination(DestinationConfig):
    """A destination sent to over HTTP(S): ``url`` (what it is: ``url_meaning``), basic or bearer ``auth`` from the
    environment, ``timeout_seconds`` a request. Listed first among the bases, its keys come last."""

    url_meaning: ClassVar[str] = "the URL"
    url: str
    auth: HttpAuth = Field(default_factory=HttpAuth)
    timeout_seconds: float = Field(60, gt=0)

    @field_validator("url")
    @classmethod
    def _http(cls, value: str) -> str:
        if not value.startswith(("http://", "https://")):
            raise ValueError(f"{cls.url_meaning}, http:// or https://")
        return value

    @property
    def address(self) -> str:
        return self.url


@dataclass(frozen=True)
class NodeIdentity:
    """Who is sending: what a sender needs to know of the node."""

    ae_title: str = "CXRNODE"
    association_timeout: float = 30.0
    triage_rules: tuple[TriageRule, ...] = ()  # the config's triage.rules: message types mark a raised priority


@dataclass(frozen=True)
class StoredObject:
    """A result object stored in the job's results folder."""

    kind: str
    sop_class_uid: str
    sop_instance_uid: str
    series_instance_uid: str
    path: Path


@dataclass(frozen=True)
class ResultSet:
    """A job's whole result set, stored: what message types build their payloads from."""

    job_id: int
    study_instance_uid: str
    generation: int
    objects: list[StoredObject]
    record_json: str | None  # the reasoning record (inference.record.ReasoningRecord as JSON), when there is one
    # payload keys this destination was queued for an earlier result set of the study (newest last): the
    # messages an amendment replaces
    earlier_keys: list[str] = field(default_factory=list)

    def first(self, kind: str) -> StoredObject | None:
        return next((obj for obj in self.objects if obj.kind == kind), None)


@dataclass(frozen=True)
class Payload:
    """One thing to deliver: a stored result object (``path``) or a message to store first (``data``).

    ``key`` is what the destination must never be queued twice: a DICOM object's SOP Instance UID, a message's
    id."""

    kind: str
    key: str
    media_type: str = DICOM_MEDIA_TYPE
    path: Path | None = None
    data: bytes | None = None
    suffix: str = ".dcm"  # of the file a message is stored in
    sop_instance_uid: str | None = None
    sop_class_uid: str | None = None

    def __post_init__(self) -> None:
        if (self.path is None) == (self.data is None):
            raise ValueError("a payload is a stored file (path) or a message to store (data), not both")


@dataclass(frozen=True)
class DeliveryItem:
    """A due delivery row, as a sender is given it."""

    id: int
    job_id: int
    study_instance_uid: str
    kind: str
    key: str
    media_type: str
    path: Path
    sop_instance_uid: str | None = None


@dataclass(frozen=True)
class Outcome:
    """What became of one item: ``delivered``, or why not (``permanent``: retrying cannot help, dead-letter now).
    ``status`` is the protocol's code where it has one (DICOM status, HTTP status)."""

    delivered: bool
    status: int | None = None
    error: str | None = None
    permanent: bool = False

    @classmethod
    def failed(cls, error: str, status: int | None = None, permanent: bool = False) -> Outcome:
        return cls(False, status, error, permanent)


class SendError(RuntimeError):
    """Nothing could be sent (no association, connection refused, ...): every item of the attempt failed with this
    reason, and is retried."""


D = TypeVar("D", bound=DestinationConfig)


class Sender(ABC, Generic[D]):
    """How one destination of a type is sent to; made once per destination (no I/O in the constructor)."""

    config_class: ClassVar[type[DestinationConfig]]

    def __init__(self, destination: D, node: NodeIdentity) -> None:
        self.destination = destination
        self.node = node

    def object_payload(self, obj: StoredObject) -> Payload | None:
        """What to queue for a result object just stored (None: nothing)."""
        return None

    def result_set_payloads(self, result: ResultSet) -> list[Payload]:
        """What to queue once the whole result set is stored."""
        return []

    @abstractmethod
    def send(self, items: Sequence[DeliveryItem]) -> list[Outcome]:
        """Send ``items``; one outcome per item, in order. ``SendError`` when nothing could be sent."""


class DicomObjectSender(Sender[D], ABC):
    """A sender of DICOM result objects: each object of a kind the destination takes, as it is stored."""

    def object_payload(self, obj: StoredObject) -> Payload | None:
        if not self.destination.takes(obj.kind):
            return None
        return Payload(obj.kind, obj.sop_instance_uid, DICOM_MEDIA_TYPE, path=obj.path,
                       sop_instance_uid=obj.sop_instance_uid, sop_class_uid=obj.sop_class_uid)

