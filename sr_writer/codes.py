"""The finding-code mapping table (package data ``sr_writer/data/finding_codes.yaml``): load, verify against pydicom,
look up.

Codes whose source is ``pydicom.sr.codedict codes.<SCHEME>.<Keyword>`` are checked against pydicom's dictionary
when the table loads, and so is every finding site; other codes cite a published source. Every finding has a code.
"""
from __future__ import annotations

import re
from dataclasses import dataclass, field
from functools import lru_cache
from importlib import resources
from pathlib import Path
from typing import Any

import yaml
from highdicom.sr import CodedConcept
from pydicom.sr._concepts_dict import concepts
from pydicom.sr.codedict import codes

# The table shipped inside the package (config/finding_codes.yaml in a clone is a link to it).
TABLE_PATH = Path(str(resources.files("sr_writer.data").joinpath("finding_codes.yaml")))
_CODEDICT_SOURCE = re.compile(r"^pydicom\.sr\.codedict codes\.(\w+)\.(\w+)")


class CodeTableError(ValueError):
    """The mapping table is malformed or names a code that pydicom's dictionary does not hold."""


@dataclass(frozen=True)
class FindingCode:
    key: str
    label: str
    code: CodedConcept | None  # None: an unknown key (no entry in the table)
    source: str  # where the code comes from
    laterality: CodedConcept | None = None
    site: CodedConcept | None = None  # Finding Site that post-coordinates ``code`` (both from pydicom's dictionary)


@dataclass(frozen=True)
class CodeTable:
    findings: dict[str, FindingCode]
    anatomy: dict[str, FindingCode]
    presence: dict[str, CodedConcept]
    structure: dict[str, CodedConcept]
    private: dict[str, CodedConcept]
    private_designator: str
    private_name: str
    private_organization: str
    triage: dict[str, CodedConcept] = field(default_factory=dict)  # concept (Priority), urgent, stat

    def finding(self, key: str) -> FindingCode:
        """The entry for a finding or anatomy key; unknown keys get a text-only entry."""
        if key in self.findings:
            return self.findings[key]
        if key in self.anatomy:
            return self.anatomy[key]
        return FindingCode(key, key.replace("_", " ").capitalize(), None, "unknown key; no code")

    def scores(self, probability: float | None, threshold: float | None) -> list[tuple[CodedConcept, float]]:
        """A finding's probability of presence (DCM 111012 Certainty of Finding) and the threshold that decided it
        (private Presence threshold), each in percent (UCUM ``%``, 4 decimals), where the record has them: what the
        SR, the ORU and the FHIR Observation carry, the same numbers in each."""
        named = ((self.structure["certainty_of_finding"], probability), (self.private["presence_threshold"], threshold))
        return [(concept, round(100 * value, 4)) for concept, value in named if value is not None]

    def stage_code(self, number: int, title: str) -> CodedConcept:
        return CodedConcept(f"STAGE-{number}", self.private_designator, f"Stage {number}: {title}"[:64])


def _concept(spec: dict[str, Any], source: str, where: str) -> CodedConcept:
    scheme, value, meaning = str(spec["scheme"]), str(spec["value"]), str(spec["meaning"])
    match = _CODEDICT_SOURCE.match(source)
    if match:
        try:
            known = getattr(getattr(codes, match.group(1)), match.group(2))
        except AttributeError as exc:
            raise CodeTableError(f"{where}: {source} is not in pydicom.sr.codedict") from exc
        if (known.value, known.scheme_designator) != (value, scheme):
            raise CodeTableError(f"{where}: {scheme} {value} differs from {source} = {known}")
    return CodedConcept(value, scheme, meaning)


def _in_codedict(spec: dict[str, Any], where: str) -> CodedConcept:
    """A concept that must be in pydicom's code dictionary under its scheme (any keyword)."""
    scheme, value = str(spec["scheme"]), str(spec["value"])
    if value not in _CODEDICT_VALUES.get(scheme, set()):
        raise CodeTableError(f"{where}: {scheme} {value} is not in pydicom.sr.codedict")
    return CodedConcept(value, scheme, str(spec["meaning"]))


_CODEDICT_VALUES: dict[str, set[str]] = {
    scheme: {value for entry in keywords.values() if isinstance(entry, dict) for value in entry}  # pydicom: untyped
    for scheme, keywords in concepts.items()
}


def _entry(key: str, spec: dict[str, Any], where: str) -> FindingCode:
    source = str(spec.get("source") or "")
    if not source or not spec.get("code"):
        raise CodeTableError(f"{where}.{key}: every entry needs a code and its source")
    code = _concept(spec["code"], source, f"{where}.{key}")
    laterality = None
    if spec.get("laterality"):
        side = spec["laterality"]
        laterality = _concept(side, f"pydicom.sr.codedict codes.SCT.{side['meaning']}", f"{where}.{key}.laterality")
    site = _in_codedict(spec["site"], f"{where}.{key}.site") if spec.get("site") else None
    return FindingCode(key, str(spec["label"]), code, source, laterality, site)


def parse_table(data: dict[str, Any]) -> CodeTable:
    """Build and verify a table from its YAML content."""
    private = data["private_scheme"]
    designator = str(private["designator"])
    return CodeTable(
        findings={k: _entry(k, v, "findings") for k, v in data["findings"].items()},
        anatomy={k: _entry(k, v, "anatomy") for k, v in data["anatomy"].items()},
        presence={k: _concept(v["code"], v["source"], f"presence.{k}") for k, v in data["presence"].items()},
        structure={k: _concept(v["code"], v["source"], f"structure.{k}") for k, v in data["structure"].items()},
        private={k: CodedConcept(str(v["value"]), designator, str(v["meaning"])) for k, v in data["private"].items()},
        private_designator=designator,
        private_name=str(private["name"]),
        private_organization=str(private["responsible_organization"]),
        triage={k: _concept(v["code"], v["source"], f"triage.{k}") for k, v in data.get("triage", {}).items()},
    )


@lru_cache(maxsize=4)
def load_table(path: str | Path = TABLE_PATH) -> CodeTable:
    """The verified mapping table (cached)."""
    with open(path, encoding="utf-8") as handle:
        return parse_table(yaml.safe_load(handle))
