"""FHIR R4: the transaction Bundle of a result set (``bundle``). Pure: data in, a JSON-ready dict out; the HTTP
transport is the node's (``dicomnode.destinations.fhir``)."""
from sr_writer.fhir.bundle import build_bundle, resource_id

__all__ = ["build_bundle", "resource_id"]
