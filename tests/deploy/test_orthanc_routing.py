"""The Orthanc Lua routing rule in deploy/: chest CR/DX studies are forwarded once stable, nothing else, no loop.

Real Orthanc with the rule loaded; DCMTK storescp stands in for the node; DCMTK storescu is the modality.
"""
from __future__ import annotations

import contextlib
import time
from pathlib import Path
from types import SimpleNamespace

import pydicom
import pytest

from dicomnode.demo.synthetic import StudySpec, write_study
from dicomnode.peers.dcmtk import StoreSCP, storescu
from dicomnode.peers.orthanc import OrthancServer
from tests.dicom_objects import blank_pixels, object_in, save_in

RULE = Path(__file__).resolve().parents[2] / "deploy" / "orthanc" / "route-chest-to-cxrnode.lua"
MODALITY = "AINODE"  # a non-default Orthanc modality name: proves the rule is parameterized
NODE_AET = "CXRNODE"
TIMEOUT = 120.0


def _poll(condition, timeout: float = TIMEOUT, what: str = "condition"):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        time.sleep(0.2)
    raise TimeoutError(f"timed out waiting for {what}")


def _received_uids(scp: StoreSCP) -> list[str]:
    uids = []
    for path in scp.received():
        try:
            uids.append(pydicom.dcmread(path, stop_before_pixels=True).SOPInstanceUID)
        except Exception:  # storescp may still be writing it
            continue
    return uids


def _result_object(directory: Path, study: StudySpec, modality: str, sop_class: str | None = None,
                   description: str = "AI CXR reasoning") -> Path:
    """A stand-in for the node's SR (modality SR) or Secondary Capture page (modality OT) in ``study``."""
    sop_class = sop_class or ("1.2.840.10008.5.1.4.1.1.88.11" if modality == "SR" else "1.2.840.10008.5.1.4.1.1.7")
    ds = object_in(study, sop_class, modality, 9901)
    ds.SeriesDescription = description
    if sop_class.startswith("1.2.840.10008.5.1.4.1.1.88."):
        ds.ValueType, ds.CompletionFlag, ds.VerificationFlag = "CONTAINER", "COMPLETE", "UNVERIFIED"
    else:
        ds.ConversionType = "WSD"
        blank_pixels(ds, 16)
    return save_in(directory, ds)


@pytest.fixture
def routing(tmp_path: Path):
    with _routing(tmp_path) as started:
        yield started


@contextlib.contextmanager
def _routing(tmp_path: Path, extra_lua: str = ""):
    preamble = tmp_path / "params.lua"
    preamble.write_text(f"CXR_NODE_MODALITY = '{MODALITY}'\nCXR_NODE_AET = '{NODE_AET}'\n{extra_lua}")
    with StoreSCP(tmp_path / "node-received", aet=NODE_AET) as scp:
        orthanc = OrthancServer(
            tmp_path / "orthanc",
            modalities={MODALITY: (NODE_AET, "127.0.0.1", scp.port)},
            lua_scripts=[preamble, RULE],
            stable_age=1,
            extra_config={"UserMetadata": {"CxrNodeForwarded": 4600}},
        )
        with orthanc:
            yield SimpleNamespace(orthanc=orthanc, scp=scp, dir=tmp_path)


def _send(routing, files: list[Path], calling_aet: str = "MODALITY") -> None:
    result = storescu(files, routing.orthanc.aet, "127.0.0.1", routing.orthanc.dicom_port, calling_aet=calling_aet)
    assert result.returncode == 0, result.stderr


def _uids(files: list[Path]) -> set[str]:
    return {pydicom.dcmread(p, stop_before_pixels=True).SOPInstanceUID for p in files}


def test_chest_forwarded_others_not_and_no_loop(routing) -> None:
    small = dict(rows=64, columns=52)
    ct = write_study(routing.dir / "ct", StudySpec(modality="CT", views=("AXIAL",), **small))
    abdomen = write_study(routing.dir / "abd", StudySpec(body_part="ABDOMEN", views=("AP",), **small))
    # sent first: stable-study events are handled in order, so once the chest study arrives these were decided
    _send(routing, ct + abdomen)
    chest_spec = StudySpec(**small)
    chest = write_study(routing.dir / "chest", chest_spec)
    _send(routing, chest)
    got = _poll(lambda: set(_received_uids(routing.scp)) >= _uids(chest) and _received_uids(routing.scp),
                what="chest study forwarded")
    assert sorted(got) == sorted(_uids(chest)), "only the chest CR/DX study is forwarded, exactly once"

    # the node's results come back into the same study: they must not trigger another forward
    results = [_result_object(routing.dir, chest_spec, "SR"), _result_object(routing.dir, chest_spec, "OT")]
    _send(routing, results, calling_aet=NODE_AET)
    # a sentinel study (empty body part, CR) sent afterwards: once it is forwarded the results' event was handled
    sentinel = write_study(routing.dir / "sentinel", StudySpec(modality="CR", body_part="", views=("PA",), **small))
    _send(routing, sentinel)
    _poll(lambda: _uids(sentinel) <= set(_received_uids(routing.scp)), what="sentinel forwarded")
    received = _received_uids(routing.scp)
    assert sorted(received) == sorted(_uids(chest) | _uids(sentinel))
    assert len(routing.orthanc.sop_instance_uids(chest_spec.study_instance_uid)) == 4  # 2 images + SR + SC


def test_late_image_forwards_only_the_new_instance(routing) -> None:
    spec = StudySpec(rows=64, columns=52, views=("PA",))
    first = write_study(routing.dir / "first", spec)
    _send(routing, first)
    _poll(lambda: _uids(first) <= set(_received_uids(routing.scp)), what="first image forwarded")
    late_spec = StudySpec(rows=64, columns=52, views=("LATERAL",), study_instance_uid=spec.study_instance_uid,
                          modality="CR", body_part="THORAX")
    late = write_study(routing.dir / "late", late_spec)
    _send(routing, late)
    _poll(lambda: _uids(late) <= set(_received_uids(routing.scp)), what="late image forwarded")
    received = _received_uids(routing.scp)
    assert sorted(received) == sorted(_uids(first) | _uids(late))
    # the mark survives an Orthanc restart: it is stored as instance metadata, not only in the Lua state
    for instance in routing.orthanc.instances_of_study(spec.study_instance_uid):
        assert "CxrNodeForwarded" in routing.orthanc.rest_get(f"/instances/{instance['ID']}/metadata")


def test_derived_objects_never_forwarded_whatever_the_modalities(tmp_path: Path) -> None:
    """Even with SR/OT/PR/CR configured, SR, SC and PR objects from another sender, without the node's series
    description, are not forwarded: the rule refuses derived objects by modality and SOP class."""
    with _routing(tmp_path, "CXR_NODE_MODALITIES = 'CR,DX,OT,SR,PR'\n") as routing:
        small = dict(rows=64, columns=52)
        spec = StudySpec(**small)
        images = write_study(routing.dir / "chest", spec)
        derived = [_result_object(routing.dir, spec, "SR", description="Radiologist report"),
                   _result_object(routing.dir, spec, "OT", description="Screenshot"),
                   _result_object(routing.dir, spec, "CR", sop_class="1.2.840.10008.5.1.4.1.1.7",
                                  description="Screenshot"),
                   _result_object(routing.dir, spec, "PR", sop_class="1.2.840.10008.5.1.4.1.1.11.1",
                                  description="Annotations")]
        _send(routing, images + derived, calling_aet="WORKSTATION")
        got = _poll(lambda: _uids(images) <= set(_received_uids(routing.scp)) and _received_uids(routing.scp),
                    what="chest images forwarded")
        time.sleep(1.0)  # one forward per stable study: anything else would have come with the images
        assert sorted(_received_uids(routing.scp)) == sorted(_uids(images)) == sorted(got)
        assert len(routing.orthanc.sop_instance_uids(spec.study_instance_uid)) == len(images) + 4
