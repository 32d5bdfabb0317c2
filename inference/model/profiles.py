"""Model profiles (package data ``inference/data/model_profiles.yaml``): per-family chat, image, box and quantization
conventions."""
from __future__ import annotations

from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any

import yaml

from inference.chat import BoxConvention

DEFAULT_PROFILES_PATH = Path(str(resources.files("inference.data").joinpath("model_profiles.yaml")))
CXRTREK_SYSTEM_PROMPT = ("You are a helpful radiology assistant to help radiologists analyze, interpret medical "
                         "images and answer clinical questions.")
_WRAPPERS = (None, "think_answer")


class ProfileError(ValueError):
    """A malformed profile file or an unknown profile."""


@dataclass(frozen=True)
class ModelProfile:
    name: str
    description: str
    model_types: tuple[str, ...]
    architectures: tuple[str, ...]
    box_convention: BoxConvention
    answer_wrapper: str | None
    system_prompt: str
    system_role: bool
    image_placement: str  # inline | first
    position_ids: str  # mrope | default
    pixel_layout: str  # patches | per_image
    skip_modules: tuple[str, ...]
    vision_modules: tuple[str, ...]


class ProfiledModel:
    """A chat model whose box convention and answer wrapper are those of its ``profile``."""

    profile: ModelProfile

    @property
    def box_convention(self) -> BoxConvention:
        return self.profile.box_convention

    @property
    def answer_wrapper(self) -> str | None:
        return self.profile.answer_wrapper


def _profile(name: str, raw: dict[str, Any], default_prompt: str) -> ModelProfile:
    try:
        match = raw.get("match") or {}
        profile = ModelProfile(
            name=name,
            description=str(raw.get("description", "")),
            model_types=tuple(match.get("model_types") or ()),
            architectures=tuple(match.get("architectures") or ()),
            box_convention=BoxConvention(raw["box_convention"]),
            answer_wrapper=raw.get("answer_wrapper"),
            system_prompt=raw.get("system_prompt") or default_prompt,
            system_role=bool(raw.get("system_role", True)),
            image_placement=str(raw.get("image_placement", "inline")),
            position_ids=str(raw.get("position_ids", "default")),
            pixel_layout=str(raw.get("pixel_layout", "per_image")),
            skip_modules=tuple(raw["skip_modules"]),
            vision_modules=tuple(raw.get("vision_modules") or ()),
        )
    except (KeyError, TypeError, ValueError) as exc:
        raise ProfileError(f"profile {name!r}: {exc!r}") from exc
    checks = {"answer_wrapper": (profile.answer_wrapper, _WRAPPERS),
              "image_placement": (profile.image_placement, ("inline", "first")),
              "position_ids": (profile.position_ids, ("mrope", "default")),
              "pixel_layout": (profile.pixel_layout, ("patches", "per_image"))}
    for key, (value, allowed) in checks.items():
        if value not in allowed:
            raise ProfileError(f"profile {name!r}: {key} must be one of {allowed}, not {value!r}")
    return profile


def load_profiles(path: str | Path | None = None) -> dict[str, ModelProfile]:
    """Read all profiles from the YAML file (default: the one shipped in the package)."""
    p = Path(path) if path else DEFAULT_PROFILES_PATH
    try:
        data = yaml.safe_load(p.read_text(encoding="utf-8"))
    except (OSError, yaml.YAMLError) as exc:
        raise ProfileError(f"{p}: {exc}") from exc
    if not isinstance(data, dict) or not isinstance(data.get("profiles"), dict):
        raise ProfileError(f"{p}: expected a mapping with 'profiles'")
    default_prompt = (data.get("system_prompts") or {}).get("cxrtrek", CXRTREK_SYSTEM_PROMPT)
    return {name: _profile(name, raw or {}, default_prompt) for name, raw in data["profiles"].items()}


def select_profile(config: dict[str, Any], override: str | None = None,
                   profiles: dict[str, ModelProfile] | None = None) -> ModelProfile:
    """The profile for a model's ``config.json`` dict: ``override`` by name, else model_type, else architectures."""
    profiles = profiles if profiles is not None else load_profiles()
    if override:
        if override not in profiles:
            raise ProfileError(f"unknown model profile {override!r}; known: {', '.join(sorted(profiles))}")
        return profiles[override]
    model_type = config.get("model_type")
    for profile in profiles.values():
        if model_type in profile.model_types:
            return profile
    architectures = set(config.get("architectures") or ())
    for profile in profiles.values():
        if architectures & set(profile.architectures):
            return profile
    raise ProfileError(f"no model profile for model_type={model_type!r}, architectures={sorted(architectures)}; "
                       f"pass profile= one of {', '.join(sorted(profiles))}")
