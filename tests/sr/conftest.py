"""Fixtures for the result-object tests: small synthetic studies (no patient data)."""
from __future__ import annotations

import pytest
from pydicom.dataset import Dataset

from dicomnode.demo.synthetic import StudySpec, make_study, prior_spec


def small_spec(**kw) -> StudySpec:
    base = dict(rows=320, columns=256, seed=3)
    base.update(kw)
    return StudySpec(**base)


@pytest.fixture(scope="module")
def spec() -> StudySpec:
    return small_spec()


@pytest.fixture(scope="module")
def study(spec: StudySpec) -> list[Dataset]:
    return make_study(spec)


@pytest.fixture(scope="module")
def prior_study(spec: StudySpec) -> list[Dataset]:
    return make_study(prior_spec(spec))


def content_items(items) -> list[Dataset]:
    """Every content item under ``items``, depth first (the items themselves included)."""
    out = []
    for item in items:
        out.append(item)
        out += content_items(item.get("ContentSequence", []))
    return out
