"""Routing loops: the node never reasons on its own results nor on any SR, SC, KO or PR (issue 14, part 4).

A running node (listener + worker + delivery to a real Orthanc) gets a study, delivers its SR and SC page, and is
then sent those results back (as a PACS forwarding "everything new in the study" would): they are stored and
acknowledged, recorded as not selected with the reason, and the study is not reopened nor reasoned on again.
"""
from __future__ import annotations

from pathlib import Path

import pytest
from cxr_test_processors import read_calls
from delivery_support import PROCESSORS, deliveries, orthanc_destination
from ingest_support import Db, make_config, running_node, store, wait_until

from dicomnode.db.states import DeliveryState, JobState
from dicomnode.demo.synthetic import StudySpec, write_study
from dicomnode.loop_guard import derived_object_kind, loop_skip_reason
from tests.dicom_objects import blank_pixels, object_in, save_in

SMALL = {"rows": 64, "columns": 52}


@pytest.mark.parametrize(("sop_class", "modality", "kind"), [
    ("1.2.840.10008.5.1.4.1.1.88.22", "SR", "structured report"),
    ("1.2.840.10008.5.1.4.1.1.88.34", "SR", "structured report"),
    ("1.2.840.10008.5.1.4.1.1.88.59", "KO", "key object selection"),
    ("1.2.840.10008.5.1.4.1.1.7", "OT", "secondary capture"),
    ("1.2.840.10008.5.1.4.1.1.7.2", "CR", "secondary capture"),  # SC that claims a modality of the selection
    ("1.2.840.10008.5.1.4.1.1.11.1", "PR", "presentation state"),
    ("1.2.840.10008.5.1.4.1.1.1.1", "PR", "presentation state"),  # modality alone is enough
    ("1.2.840.10008.5.1.4.1.1.1.1", "DX", None),
    ("1.2.840.10008.5.1.4.1.1.1", "CR", None),
])
def test_derived_object_kinds(sop_class: str, modality: str, kind: str | None) -> None:
    assert derived_object_kind(sop_class, modality) == kind
    reason = loop_skip_reason(sop_class, modality, own_object=False)
    assert (reason is None) == (kind is None)
    assert loop_skip_reason("1.2.840.10008.5.1.4.1.1.1.1", "DX", own_object=True).startswith("written by this node")


def _derived(directory: Path, study: StudySpec, sop_class: str, modality: str) -> Path:
    """A foreign derived object in ``study`` with pixel data and a chest body part (everything else selects it)."""
    ds = object_in(study, sop_class, modality, 77)
    blank_pixels(ds, 8)
    return save_in(directory, ds)


def test_own_results_sent_back_are_never_reasoned_on(tmp_path: Path, orthanc) -> None:
    data_dir = tmp_path / "data"
    # the configured selection would take SR/OT/KO/PR: the guard is not configuration
    config = make_config(
        data_dir, destinations=[orthanc_destination(orthanc)],
        processing={"processor": f"{PROCESSORS}:sr_and_sc", "poll_seconds": 0.2},
        study={"quiet_seconds": 0.5, "modalities": ["CR", "DX", "SR", "OT", "KO", "PR"]})
    spec = StudySpec(views=("PA",), **SMALL)
    files = write_study(tmp_path / "in", spec)
    uid = spec.study_instance_uid
    with running_node(config, role="all") as node:
        db = Db(config.database_url)
        try:
            assert store(files, node.port).statuses == [0]
            wait_until(lambda: db.study_state(uid) == JobState.DELIVERED.value, timeout=120, what="delivered")
            sent = deliveries(db.session_factory)
            assert len(sent) == 2 and {d.state for d in sent} == {DeliveryState.SENT.value}
            assert len(read_calls(data_dir)) == 1

            # the PACS forwards the node's results back, then foreign derived objects of the same study
            own = [data_dir / d.path for d in sent]
            foreign = [_derived(tmp_path, spec, "1.2.840.10008.5.1.4.1.1.7", "OT"),
                       _derived(tmp_path, spec, "1.2.840.10008.5.1.4.1.1.11.1", "PR"),
                       _derived(tmp_path, spec, "1.2.840.10008.5.1.4.1.1.7.2", "CR")]
            assert store(own + foreign, node.port, calling_aet="ORTHANC").statuses == [0] * 5
            back = {i.sop_instance_uid: i for i in db.instances(uid)}
            assert len(back) == 6
            for delivery in sent:
                row = back[delivery.sop_instance_uid]
                assert not row.selected and row.skip_reason.startswith("written by this node")
            reasons = sorted(back[p.name.split("-", 1)[1].removesuffix(".dcm")].skip_reason for p in foreign)
            assert reasons == ["presentation state (derived object): never reasoned on",
                               "secondary capture (derived object): never reasoned on",
                               "secondary capture (derived object): never reasoned on"]
            # no new generation, no second reasoning, nothing new to deliver
            wait_until(lambda: db.study_state(uid) == JobState.DELIVERED.value, what="still delivered")
            assert [j.generation for j in db.jobs(uid)] == [1]
            assert len(read_calls(data_dir)) == 1
            assert len(deliveries(db.session_factory)) == 2
        finally:
            db.close()
