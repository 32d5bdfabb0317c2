"""Destination types, one module each (``dimse``, ``dicomweb``, ``hl7``, ``fhir``), registered with
``@handler_for``; see :mod:`dicomnode.destinations.base` for what a type is made of and ``docs/ARCHITECTURE.md`` for
adding one."""
from dicomnode.destinations import dicomweb, dimse, fhir, hl7  # noqa: F401 - importing registers the built-in types
from dicomnode.destinations.base import (
    DeliveryItem,
    DestinationConfig,
    DicomObjectDestination,
    NodeIdentity,
    Outcome,
    Payload,
    ResultSet,
    Sender,
    SendError,
    StoredObject,
)
from dicomnode.destinations.dicomweb import DicomwebDestination
from dicomnode.destinations.dimse import DimseDestination
from dicomnode.destinations.fhir import FhirDestination
from dicomnode.destinations.hl7 import Hl7Destination
from dicomnode.destinations.registry import destination_type, handler_for, make_sender, type_names

__all__ = ["DeliveryItem", "DestinationConfig", "DicomObjectDestination", "DicomwebDestination", "DimseDestination",
           "FhirDestination", "Hl7Destination", "NodeIdentity", "Outcome", "Payload", "ResultSet", "SendError",
           "Sender", "StoredObject", "destination_type", "handler_for", "make_sender", "type_names"]
