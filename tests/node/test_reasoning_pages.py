"""The reasoning processor's page processes: results as bytes ready to store, and a lost page process costs no
study (its pages are made in the worker, and the next study gets new page processes)."""
from __future__ import annotations

import io
import logging
from collections.abc import Iterator
from pathlib import Path

import pydicom
import pytest

from dicomnode.config import config_from_dict
from dicomnode.demo.synthetic import StudySpec, write_study
from dicomnode.processing import ProcessorOutput, ResultObject, StudyInput
from dicomnode.reasoning import ReasoningProcessor


def _study(tmp_path: Path, n: int) -> StudyInput:
    spec = StudySpec(rows=256, columns=208, patient_id=f"PAGES{n}")
    return StudyInput(spec.study_instance_uid, job_id=n, generation=1,
                      instance_paths=write_study(tmp_path / f"study{n}", spec))


def _objects(outputs: Iterator[ProcessorOutput]) -> list[ResultObject]:
    """The result objects a processor yields (its record aside)."""
    return [o for o in outputs if isinstance(o, ResultObject)]


def test_page_processes_and_a_lost_one(tmp_path: Path, qwen_demo_dir: Path, caplog: pytest.LogCaptureFixture) -> None:
    config = config_from_dict({
        "storage": {"data_dir": str(tmp_path / "node")},
        "model": {"path": str(qwen_demo_dir), "quantization": "none"},
        "reasoning": {"max_new_tokens": 2},
        "output": {"page_processes": 2},
    })
    processor = ReasoningProcessor(config)
    try:
        first = _objects(processor.process(_study(tmp_path, 1)))
        kinds = [obj.kind for obj in first]
        assert kinds.count("sr") == 1 and kinds.count("sc") >= 2  # in the order they were finished
        for obj in first:  # encoded once, by the writer: the bytes that were validated are stored
            assert obj.data is not None
            back = pydicom.dcmread(io.BytesIO(obj.data))
            assert back.SOPInstanceUID == obj.dataset.SOPInstanceUID
        pages = [pydicom.dcmread(io.BytesIO(o.data)) for o in first if o.kind == "sc"]
        assert all(p.file_meta.TransferSyntaxUID == pydicom.uid.RLELossless for p in pages)
        assert sorted(int(p.InstanceNumber) for p in pages) == list(range(1, len(pages) + 1))

        pool = processor.results._pool
        assert pool is not None
        for process in list(pool._processes.values()):  # a page process dies (OOM killer, operator)
            process.kill()
        with caplog.at_level(logging.WARNING, logger="dicomnode.result_making"):
            second = _objects(processor.process(_study(tmp_path, 2)))
        assert [o.kind for o in second].count("sc") >= 2
        assert any("page process lost" in r.getMessage() for r in caplog.records)
        third = _objects(processor.process(_study(tmp_path, 3)))
        assert processor.results._pool is not None and processor.results._pool is not pool  # new page processes
        assert [o.kind for o in third].count("sc") >= 2
    finally:
        processor.close()
    assert processor.results._pool is None
