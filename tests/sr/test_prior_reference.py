"""The prior study in the SR's content tree (issue 24): stage 5's comparison cites each prior image it compared as
an IMAGE item, the image library (TID 1600) lists it, and Pertinent Other Evidence holds it; highdicom reads all
three back from the bytes the node sends."""
from __future__ import annotations

import io

import highdicom as hd
import pytest
from pydicom.dataset import Dataset

from dicomnode.demo.records import make_record
from sr_writer import OutputOptions, build_result_objects
from sr_writer.codes import load_table


def _read(result) -> hd.sr.Comprehensive3DSR:  # type: ignore[no-untyped-def]
    return hd.sr.srread(io.BytesIO(result.encoded[str(result.sr.SOPInstanceUID)]))


def _stage(doc: Dataset, number: int) -> Dataset:
    return next(i for i in doc.ContentSequence if i.ConceptNameCodeSequence[0].CodeValue == f"STAGE-{number}")


def _images(items) -> list[hd.sr.ImageContentItem]:  # type: ignore[no-untyped-def]
    return [hd.sr.ImageContentItem.from_dataset(i) for i in items if i.ValueType == "IMAGE"]


@pytest.mark.parametrize("sop_class", ["comprehensive3d", "comprehensive"])
def test_stage_5_cites_the_prior_and_highdicom_reads_it_back(study, prior_study, sop_class: str) -> None:
    record = make_record(study, prior_study, positive=("pneumothorax",))
    result = build_result_objects(record, study, prior_study, options=OutputOptions(sr_sop_class=sop_class))
    doc = _read(result)
    prior_uids = {str(ds.SOPInstanceUID) for ds in prior_study}
    compared = {r.sop_instance_uid for r in record.images if r.role == "prior"}
    assert compared and compared <= prior_uids

    cited = _images(_stage(doc, 5).ContentSequence)
    assert {c.referenced_sop_instance_uid for c in cited} == compared
    name = load_table().private["prior_image"]
    for item in cited:
        assert item.name == name and item.relationship_type == hd.sr.RelationshipTypeValues.CONTAINS
        assert item.referenced_sop_class_uid == prior_study[0].SOPClassUID

    library = hd.sr.utils.find_content_items(doc, name=hd.sr.CodedConcept("111028", "DCM", "Image Library"))
    in_library = {i.referenced_sop_instance_uid for i in _images(hd.sr.utils.find_content_items(
        library[0], value_type=hd.sr.ValueTypeValues.IMAGE, recursive=True))}
    assert compared <= in_library and {str(ds.SOPInstanceUID) for ds in study} <= in_library

    other = {str(s.ReferencedSOPInstanceUID) for study_item in doc.PertinentOtherEvidenceSequence
             for series in study_item.ReferencedSeriesSequence for s in series.ReferencedSOPSequence}
    assert compared <= other  # every IMAGE reference is to evidence the SR lists


def test_no_prior_no_citation(study) -> None:
    result = build_result_objects(make_record(study, positive=("pneumothorax",)), study)
    doc = _read(result)
    assert _images(_stage(doc, 5).ContentSequence) == []
    assert "PertinentOtherEvidenceSequence" not in doc
