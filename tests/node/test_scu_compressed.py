"""Compressed result objects (RLE pages) reach every peer: as they are where the peer takes the compressed
syntax, decompressed (same pixels) where it takes only uncompressed data."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pydicom
import pytest
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import (
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
    RLELossless,
    SecondaryCaptureImageStorage,
    generate_uid,
)

from dicomnode.association import Peer
from dicomnode.peers.dcmtk import StoreSCP
from dicomnode.scu import requested_contexts, store_files
from sr_writer.rle import encode_frame
from sr_writer.sc import encode_pixels, set_pixel_data


def _page(path: Path, rle: bool, seed: int) -> tuple[Path, np.ndarray, str]:
    pixels = np.full((48, 64, 3), 255, np.uint8)
    pixels[10:20, 5:60] = np.random.default_rng(seed).integers(0, 256, (10, 55, 3), dtype=np.uint8)
    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.SOPClassUID, ds.SOPInstanceUID = SecondaryCaptureImageStorage, generate_uid()
    ds.StudyInstanceUID, ds.SeriesInstanceUID = generate_uid(), generate_uid()
    ds.PatientID, ds.Modality, ds.ConversionType = "SCU0001", "OT", "WSD"
    ds.Rows, ds.Columns, ds.SamplesPerPixel, ds.PhotometricInterpretation = 48, 64, 3, "RGB"
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation, ds.PlanarConfiguration = 8, 8, 7, 0, 0
    ds.PixelData = pixels.tobytes()
    if rle:
        set_pixel_data(ds, encode_pixels(pixels, RLELossless))
    ds.save_as(path, enforce_file_format=True)
    return path, pixels, str(ds.SOPInstanceUID)


def _received(directory: Path) -> dict[str, Dataset]:
    return {str(ds.SOPInstanceUID): ds for ds in (pydicom.dcmread(p) for p in directory.rglob("*") if p.is_file())}


def test_contexts_keep_compressed_syntaxes_apart() -> None:
    sc = SecondaryCaptureImageStorage
    contexts = requested_contexts([(sc, "1", RLELossless), (sc, "2", ExplicitVRLittleEndian), (sc, "3", RLELossless)])
    assert [(c.abstract_syntax, c.transfer_syntax) for c in contexts] == [
        (sc, [ExplicitVRLittleEndian, ImplicitVRLittleEndian]), (sc, [RLELossless])]


@pytest.mark.parametrize("accept_all", [False, True], ids=["uncompressed-only peer", "peer taking RLE"])
def test_rle_page_reaches_the_peer(tmp_path: Path, accept_all: bool, caplog: pytest.LogCaptureFixture) -> None:
    rle, rle_pixels, rle_uid = _page(tmp_path / "rle.dcm", rle=True, seed=1)
    plain, plain_pixels, plain_uid = _page(tmp_path / "plain.dcm", rle=False, seed=2)
    # storescp's default accepts uncompressed syntaxes only; +xa accepts every syntax it knows, RLE included
    with StoreSCP(tmp_path / "in", extra_args=["+xa"] if accept_all else []) as scp, caplog.at_level("INFO"):
        outcomes = store_files(Peer("STORESCP", "127.0.0.1", scp.port), [rle, plain])
    assert [o.stored for o in outcomes] == [True, True], [o.error for o in outcomes]
    received = _received(tmp_path / "in")
    expected = RLELossless if accept_all else ExplicitVRLittleEndian
    assert received[rle_uid].file_meta.TransferSyntaxUID == expected
    assert (received[rle_uid].pixel_array == rle_pixels).all()
    assert (received[plain_uid].pixel_array == plain_pixels).all()
    decompressed = [r for r in caplog.records if "sent decompressed" in r.getMessage()]
    assert len(decompressed) == (0 if accept_all else 1)


def test_orthanc_keeps_rle(tmp_path: Path, orthanc) -> None:
    path, pixels, uid = _page(tmp_path / "rle.dcm", rle=True, seed=3)
    [outcome] = store_files(Peer("ORTHANC", "127.0.0.1", orthanc.dicom_port), [path])
    assert outcome.stored, outcome.error
    [hit] = [h for h in orthanc.rest_post("/tools/lookup", uid) if h["Type"] == "Instance"]
    assert orthanc.rest_get(f"/instances/{hit['ID']}/metadata/TransferSyntax") == RLELossless
    stored = pydicom.dcmread(__import__("io").BytesIO(orthanc.rest_get_bytes(f"/instances/{hit['ID']}/file")))
    assert (stored.pixel_array == pixels).all()


def test_undecodable_file_is_an_outcome(tmp_path: Path) -> None:
    path, _, uid = _page(tmp_path / "bad.dcm", rle=True, seed=4)
    ds = pydicom.dcmread(path)
    ds.PixelData = pydicom.encaps.encapsulate([encode_frame(np.zeros((2, 2, 3), np.uint8))])  # wrong size
    ds.save_as(path, enforce_file_format=True)
    good, _, good_uid = _page(tmp_path / "good.dcm", rle=True, seed=5)
    with StoreSCP(tmp_path / "in") as scp:
        bad_outcome, good_outcome = store_files(Peer("STORESCP", "127.0.0.1", scp.port), [path, good])
    assert bad_outcome.status is None and "cannot decompress" in (bad_outcome.error or "")
    assert good_outcome.stored
    assert set(_received(tmp_path / "in")) == {good_uid} and uid != good_uid


def test_unknown_transfer_syntax_is_an_outcome(tmp_path: Path) -> None:
    path, _, _ = _page(tmp_path / "odd.dcm", rle=False, seed=6)
    ds = pydicom.dcmread(path)
    ds.file_meta.TransferSyntaxUID = "1.2.3.4"  # readable header, but no transfer syntax anybody knows
    ds.save_as(path)
    rle, _, rle_uid = _page(tmp_path / "rle.dcm", rle=True, seed=7)
    with StoreSCP(tmp_path / "in") as scp:
        odd_outcome, rle_outcome = store_files(Peer("STORESCP", "127.0.0.1", scp.port), [path, rle])
    assert odd_outcome.status is None and "1.2.3.4 not accepted" in (odd_outcome.error or "")
    assert rle_outcome.stored and set(_received(tmp_path / "in")) == {rle_uid}
