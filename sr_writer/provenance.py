"""Algorithm identification derived from a record's provenance: device UID, names and version strings."""
from __future__ import annotations

import hashlib

from inference.record import Provenance


def device_uid(provenance: Provenance) -> str:
    """A UID that is the same for the same weights (and quantization) and changes when they change.

    A 2.25 UID (ISO/IEC 9834-8): the first 128 bits of SHA-256 over the weights hash and the quantization. A model
    served by an engine has no weights hash here (the OpenAI API does not tell): its served model id and the
    engine's version stand in for it.
    """
    if provenance.weights_sha256 or not provenance.engine_url:
        identity = f"cxr-node-device|{provenance.weights_sha256}|{provenance.quantization}"
    else:
        identity = f"cxr-node-engine-device|{provenance.model_name}|{provenance.engine_version}"
    digest = hashlib.sha256(identity.encode()).digest()
    return f"2.25.{int.from_bytes(digest[:16], 'big')}"


def model_title(provenance: Provenance) -> str:
    """E.g. "Qwen2.5-VL-3B-CXR 1.0" (name and version)."""
    return " ".join(p for p in (provenance.model_name, provenance.model_version) if p).strip()


def software_versions(provenance: Provenance) -> list[str]:
    """Software Versions values (LO, 64 characters each)."""
    values = [f"cxr-node {provenance.software_version}"]
    if provenance.model_version:
        values.append(f"model {provenance.model_version}")
    if provenance.transformers_version:
        values.append(f"transformers {provenance.transformers_version}")
    if provenance.engine_url:
        values.append(f"engine {provenance.engine_version or 'unknown version'}")
    return [v[:64] for v in values]


def served_by(provenance: Provenance) -> str | None:
    """For a model served by an engine (no weights hash: the OpenAI API does not tell the weights), the engine that
    served it; None for weights the node loaded itself."""
    if provenance.weights_sha256 or not provenance.engine_url:
        return None
    return f"served by the engine at {provenance.engine_url} (version {provenance.engine_version or 'unknown'})"


def summary(provenance: Provenance) -> str:
    """One line naming everything that identifies the algorithm run."""
    parts = [
        f"Model: {model_title(provenance)}",
        served_by(provenance) or f"weights sha256 {provenance.weights_sha256}",
        f"quantization {provenance.quantization}",
        f"dtype {provenance.dtype}",
        f"device {provenance.device}",
        f"profile {provenance.profile}",
        f"software cxr-node {provenance.software_version}",
    ]
    if provenance.transformers_version:
        parts.append(f"transformers {provenance.transformers_version}")
    if provenance.demo_model:
        parts.append("DEMO model (random weights)")
    return "; ".join(parts)
