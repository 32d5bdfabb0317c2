"""The report-reading rule set (``feedback_terms.yaml``): finding synonyms and the cues around them, validated.

The packaged file is read with importlib.resources; ``feedback.terms_file`` names a site's copy instead.
"""
from __future__ import annotations

from functools import cache
from importlib import resources
from pathlib import Path

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

TERMS_FILE = "feedback_terms.yaml"


class TermsError(ValueError):
    """The rule set cannot be read or is invalid (the message names the file and the key)."""


def _phrases(values: list[str]) -> list[str]:
    cleaned = [" ".join(str(v).lower().split()) for v in values]
    if any(not v for v in cleaned):
        raise ValueError("empty phrase")
    return cleaned


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class FindingTerms(_Strict):
    mentions: list[str]  # phrases that name the finding
    absent: list[str] = Field(default_factory=list)  # phrases that say on their own that it is absent
    implies: list[str] = Field(default_factory=list)  # findings present whenever this one is (a tube: a device)

    _clean = field_validator("mentions", "absent")(_phrases)


class Cues(_Strict):
    negation_before: list[str]
    negation_after: list[str]
    uncertain_before: list[str]
    uncertain_after: list[str]
    ignore_before: list[str]
    pseudo: list[str]
    unrelated: list[str] = Field(default_factory=list)
    terminate: list[str]
    terminate_after_comma: list[str] = Field(default_factory=list)

    _clean = field_validator("*")(_phrases)


class Sections(_Strict):
    skip: list[str] = Field(default_factory=list)

    _clean = field_validator("skip")(_phrases)


class Terms(_Strict):
    version: int
    sections: Sections = Field(default_factory=Sections)
    cues: Cues
    findings: dict[str, FindingTerms]

    @field_validator("findings")
    @classmethod
    def _implied_exist(cls, values: dict[str, FindingTerms]) -> dict[str, FindingTerms]:
        for key, terms in values.items():
            unknown = [k for k in terms.implies if k not in values]
            if unknown:
                raise ValueError(f"{key}.implies names unknown finding(s) {', '.join(unknown)}")
        return values


def parse_terms(text: str, where: str) -> Terms:
    try:
        data = yaml.safe_load(text)
        return Terms.model_validate(data)
    except yaml.YAMLError as exc:
        raise TermsError(f"{where}: invalid YAML: {exc}") from None
    except ValidationError as exc:
        first = exc.errors()[0]
        loc = ".".join(str(p) for p in first["loc"]) or "(root)"
        raise TermsError(f"{where}: {loc}: {first['msg']}") from None


@cache
def packaged_terms() -> Terms:
    text = resources.files("dicomnode.data").joinpath(TERMS_FILE).read_text(encoding="utf-8")
    return parse_terms(text, f"package file {TERMS_FILE}")


def load_terms(path: Path | None = None) -> Terms:
    """The rule set at ``path``, or the packaged one."""
    if path is None:
        return packaged_terms()
    try:
        text = Path(path).read_text(encoding="utf-8")
    except OSError as exc:
        raise TermsError(f"feedback.terms_file {path}: cannot read ({exc.strerror or exc})") from None
    return parse_terms(text, f"feedback.terms_file {path}")
