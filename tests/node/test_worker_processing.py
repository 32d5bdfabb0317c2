"""Processor registry: built-in names, ``module:factory`` specs and clear errors naming the config key."""
from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from delivery_support import PROCESSORS, delivery_config

from dicomnode.processing import (
    PassThroughProcessor,
    ProcessorOutput,
    ResultRecord,
    StudyInput,
    make_processor,
    register_processor,
    registered_processors,
    resolve_factory,
)


def test_passthrough_is_the_default_and_produces_nothing(data_dir: Path) -> None:
    config = delivery_config(data_dir, "sqlite://", processor="passthrough")
    processor = make_processor(config)
    assert isinstance(processor, PassThroughProcessor)
    assert list(processor.process(StudyInput("1.2.3", 1, 1, []))) == []
    assert "passthrough" in registered_processors()


def test_module_factory_spec(data_dir: Path) -> None:
    processor = make_processor(delivery_config(data_dir, "sqlite://", processor=f"{PROCESSORS}:sr_and_sc"))
    assert type(processor).__name__ == "SecondaryCaptureProcessor"


def test_registered_name_and_lazy_string_entry(data_dir: Path) -> None:
    class Fixed:
        def process(self, study: StudyInput) -> Iterator[ProcessorOutput]:
            yield ResultRecord("{}")

    register_processor("fixed-test", lambda config: Fixed())
    register_processor("lazy-test", f"{PROCESSORS}:sc")
    try:
        assert isinstance(make_processor(delivery_config(data_dir, "sqlite://", processor="fixed-test")), Fixed)
        assert resolve_factory("lazy-test").__name__ == "sc"
    finally:
        from dicomnode import processing

        processing._REGISTRY.pop("fixed-test")
        processing._REGISTRY.pop("lazy-test")


@pytest.mark.parametrize("spec, message", [
    ("reasoning-typo", "unknown processor 'reasoning-typo'"),
    ("no_such_module_xyz:make", "cannot import 'no_such_module_xyz'"),
    (f"{PROCESSORS}:nope", "has no 'nope'"),
    (":make", "is not 'package.module:factory'"),
    (f"{PROCESSORS}:CALLS_LOG", "is not callable"),
])
def test_bad_specs_name_the_key(data_dir: Path, spec: str, message: str) -> None:
    with pytest.raises(ValueError, match="processing.processor: ") as err:
        make_processor(delivery_config(data_dir, "sqlite://", processor=spec))
    assert message in str(err.value)


def test_factory_must_return_a_processor(data_dir: Path) -> None:
    register_processor("broken-test", lambda config: object())
    try:
        with pytest.raises(ValueError, match="did not return a Processor"):
            make_processor(delivery_config(data_dir, "sqlite://", processor="broken-test"))
    finally:
        from dicomnode import processing

        processing._REGISTRY.pop("broken-test")
