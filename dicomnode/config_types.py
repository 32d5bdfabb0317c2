"""Building blocks of the node's configuration that more than one section uses: the strict base model, AE titles,
TLS, retry back-off and HTTP credentials.

A leaf module (it imports nothing of the node), so that :mod:`dicomnode.config` and the destination types in
:mod:`dicomnode.destinations` can both build on it.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Annotated, Literal

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, model_validator


class ConfigModel(BaseModel):
    """Every config section: unknown keys are errors, assignments are validated."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True)


def ae_title(value: str) -> str:
    """``value`` stripped, when it is a valid AE title (1-16 ASCII characters, no backslash); else ValueError."""
    value = value.strip()
    if not value or len(value) > 16 or "\\" in value or not value.isascii():
        raise ValueError("AE title must be 1-16 ASCII characters without backslash")
    return value


def registered_kinds() -> list[str]:
    """The result kinds the node can make (sr_writer.kinds), in the order they are made."""
    from sr_writer.kinds import kind_names

    return kind_names()


def _known_kinds(values: list[str]) -> list[str]:
    known = registered_kinds()
    unknown = [value for value in values if value not in known]
    if unknown:
        raise ValueError(f"unknown result kind {', '.join(unknown)} (known: {', '.join(known)})")
    return values


# a list of registered result kind names (``output.objects``, a destination's ``objects``)
ResultKinds = Annotated[list[str], AfterValidator(_known_kinds)]


class TLSConfig(ConfigModel):
    enabled: bool = False
    cert: Path | None = None
    key: Path | None = None
    ca: Path | None = None
    require_client_cert: bool = True

    @model_validator(mode="after")
    def _needs_files(self) -> TLSConfig:
        if self.enabled:
            missing = [name for name in ("cert", "key") if getattr(self, name) is None]
            if missing:
                raise ValueError(f"TLS enabled but {', '.join(missing)} not set")
            if self.require_client_cert and self.ca is None:
                raise ValueError("require_client_cert needs ca")
        return self


class RetryConfig(ConfigModel):
    max_attempts: int = Field(10, ge=1)
    initial_seconds: float = Field(5, gt=0)
    max_seconds: float = Field(600, gt=0)


class HttpAuth(ConfigModel):
    """How the node authenticates to an HTTP service (DICOMweb, FHIR); secrets come from environment variables,
    never the file."""

    type: Literal["none", "basic", "bearer"] = "none"
    username: str | None = None
    password_env: str | None = None  # name of the environment variable holding the password (basic)
    token_env: str | None = None  # name of the environment variable holding the token (bearer)

    @model_validator(mode="after")
    def _needs_secrets(self) -> HttpAuth:
        needed = {"none": (), "basic": ("username", "password_env"), "bearer": ("token_env",)}[self.type]
        missing = [key for key in needed if not getattr(self, key)]
        if missing:
            raise ValueError(f"auth type {self.type} needs {', '.join(missing)}")
        for key in ("password_env", "token_env"):
            name = getattr(self, key)
            if key in needed and not os.environ.get(name or ""):
                raise ValueError(f"{key}: environment variable {name} is not set (it holds the secret)")
        return self

    def describe(self) -> str:
        """``auth basic, password from $X`` (names the variable, never the secret)."""
        secret = {"basic": f", password from ${self.password_env}", "bearer": f", token from ${self.token_env}"}
        return f"auth {self.type}{secret.get(self.type, '')}"
