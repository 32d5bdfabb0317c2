"""Shared fixtures of the evaluation-harness tests: the CXRTrek demo file (vendored under tests/data/cxrtrek)."""
from __future__ import annotations

import json
from pathlib import Path

import pytest

DEMO = Path(__file__).resolve().parents[1] / "data" / "cxrtrek" / "cxrtrek_demo_80.json"


@pytest.fixture(scope="session")
def demo_path() -> Path:
    return DEMO.resolve()


@pytest.fixture(scope="session")
def demo_studies(demo_path: Path):
    from inference.evaluation.dataset import load_dataset

    return load_dataset(demo_path)




def _kind(item: dict) -> str:
    from inference.parsing import qtype_from_cxrtrek

    return qtype_from_cxrtrek(item["qtype"]).value


@pytest.fixture(scope="session")
def model_eval_data(demo_path: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """(dataset, images dir): the first two demo studies trimmed to a few items covering every question type and
    a findings-checklist item, with small synthetic chest images written at the dataset's relative image paths."""
    from dicomnode.demo.synthetic import write_cxrtrek_phantoms

    root = tmp_path_factory.mktemp("eval_data")
    studies = json.loads(demo_path.read_text())[:2]
    for study in studies:
        meta = study["cxrtrek_data"]
        kept, kinds = [], set()
        for item in meta["content"]:
            checklist = str(item.get("target", "")).startswith("abnormality_") and "checklist" not in kinds
            if "<image>" in item["question"] or _kind(item) not in kinds or checklist:
                kept.append(item)
                kinds.add(_kind(item))
                if checklist:
                    kinds.add("checklist")
        meta["content"] = kept
    write_cxrtrek_phantoms(studies, root / "images")
    dataset = root / "subset.json"
    dataset.write_text(json.dumps(studies))
    return dataset, root / "images"
