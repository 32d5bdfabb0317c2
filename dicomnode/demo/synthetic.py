"""Synthetic chest X-ray studies for the demo, tests and benchmarks (no patient data anywhere).

A smooth phantom (lungs, heart, spine, ribs) in a 12/16-bit CR or DX instance with the attributes a PACS and our
pipeline look at. Deterministic for a given seed.
"""
from __future__ import annotations

import datetime as dt
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import PYDICOM_IMPLEMENTATION_UID, UID, ExplicitVRLittleEndian, generate_uid

DX_FOR_PRESENTATION = "1.2.840.10008.5.1.4.1.1.1.1"
CR_IMAGE_STORAGE = "1.2.840.10008.5.1.4.1.1.1"
CT_IMAGE_STORAGE = "1.2.840.10008.5.1.4.1.1.2"
SOP_CLASS_BY_MODALITY = {"DX": DX_FOR_PRESENTATION, "CR": CR_IMAGE_STORAGE, "CT": CT_IMAGE_STORAGE}


@dataclass
class StudySpec:
    """What a synthetic study looks like. Defaults give a two-view DX chest study."""

    patient_name: str = "Demo^Patient"
    patient_id: str = "DEMO0001"
    patient_birth_date: str = "19600101"
    patient_sex: str = "O"
    study_instance_uid: str = field(default_factory=generate_uid)
    study_date: str = "20260101"
    study_time: str = "101500"
    accession_number: str = "ACC0001"
    modality: str = "DX"
    body_part: str = "CHEST"
    views: tuple[str, ...] = ("PA", "LATERAL")
    rows: int = 512
    columns: int = 416
    bits_stored: int = 12
    photometric: str = "MONOCHROME2"
    with_window: bool = True
    seed: int = 0
    character_set: str = "ISO_IR 192"


def phantom(rows: int, columns: int, view: str, bits_stored: int, seed: int = 0) -> np.ndarray:
    """A chest-like intensity image (bright = dense, as MONOCHROME2 shows it), uint16 within ``bits_stored``."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:rows, 0:columns].astype(np.float32)
    y, x = yy / rows, xx / columns
    body = np.clip(1.0 - ((x - 0.5) / 0.48) ** 2 - ((y - 0.55) / 0.6) ** 2, 0, 1) ** 0.3
    img = 0.55 * body
    if view.upper() in ("LATERAL", "LL", "RL"):
        lung = np.exp(-(((x - 0.5) / 0.22) ** 2 + ((y - 0.45) / 0.25) ** 2))
        img -= 0.35 * lung
        img += 0.35 * np.exp(-(((x - 0.82) / 0.05) ** 2)) * (y > 0.1)  # spine
        img += 0.25 * np.exp(-(((x - 0.38) / 0.12) ** 2 + ((y - 0.62) / 0.14) ** 2))  # heart
    else:
        for cx in (0.3, 0.7):
            lung = np.exp(-(((x - cx) / 0.14) ** 2 + ((y - 0.45) / 0.26) ** 2))
            img -= 0.38 * lung
        img += 0.3 * np.exp(-(((x - 0.5) / 0.035) ** 2)) * (y > 0.08)  # spine
        img += 0.3 * np.exp(-(((x - 0.55) / 0.12) ** 2 + ((y - 0.62) / 0.11) ** 2))  # heart
        ribs = 0.5 + 0.5 * np.sin(2 * np.pi * (y * 11 + 0.6 * np.abs(x - 0.5)))
        img += 0.05 * ribs * body
    img += 0.01 * rng.standard_normal(img.shape).astype(np.float32)
    img = np.clip(img, 0, 1)
    return (img * (2**bits_stored - 1)).astype(np.uint16)


def make_instance(spec: StudySpec, view: str, instance_number: int, series_instance_uid: str) -> Dataset:
    """One synthetic image instance of the study ``spec`` describes."""
    sop_class = SOP_CLASS_BY_MODALITY[spec.modality]
    pixels = phantom(spec.rows, spec.columns, view, spec.bits_stored, spec.seed + instance_number)
    if spec.photometric == "MONOCHROME1":
        pixels = (2**spec.bits_stored - 1 - pixels).astype(np.uint16)

    ds = Dataset()
    ds.SpecificCharacterSet = spec.character_set
    ds.SOPClassUID = sop_class
    ds.SOPInstanceUID = generate_uid()
    ds.StudyDate = ds.SeriesDate = ds.ContentDate = spec.study_date
    ds.StudyTime = ds.SeriesTime = ds.ContentTime = spec.study_time
    ds.AccessionNumber = spec.accession_number
    ds.Modality = spec.modality
    ds.Manufacturer = "cxr-node synthetic"
    ds.ReferringPhysicianName = ""
    ds.StudyDescription = "CHEST 2 VIEWS" if len(spec.views) > 1 else "CHEST 1 VIEW"
    ds.SeriesDescription = f"CHEST {view}"
    ds.PatientName = spec.patient_name
    ds.PatientID = spec.patient_id
    ds.PatientBirthDate = spec.patient_birth_date
    ds.PatientSex = spec.patient_sex
    ds.BodyPartExamined = spec.body_part
    ds.ViewPosition = "LL" if view.upper() == "LATERAL" else view.upper()
    ds.StudyInstanceUID = spec.study_instance_uid
    ds.SeriesInstanceUID = series_instance_uid
    ds.StudyID = "1"
    ds.SeriesNumber = instance_number
    ds.InstanceNumber = 1
    ds.PatientOrientation = ["P", "F"] if view.upper() in ("LATERAL", "LL") else ["L", "F"]
    ds.ImageType = ["ORIGINAL", "PRIMARY"]
    if spec.modality == "DX":
        ds.PresentationIntentType = "FOR PRESENTATION"
        ds.ImagerPixelSpacing = [0.14, 0.14]
        ds.PixelIntensityRelationship = "LOG"
        ds.PixelIntensityRelationshipSign = 1
        ds.BurnedInAnnotation = "NO"
        ds.LossyImageCompression = "00"
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = spec.photometric
    ds.Rows, ds.Columns = spec.rows, spec.columns
    ds.BitsAllocated = 16
    ds.BitsStored = spec.bits_stored
    ds.HighBit = spec.bits_stored - 1
    ds.PixelRepresentation = 0
    ds.RescaleIntercept, ds.RescaleSlope, ds.RescaleType = 0, 1, "US"
    if spec.with_window:
        ds.WindowCenter = int(2 ** (spec.bits_stored - 1))
        ds.WindowWidth = int(2**spec.bits_stored)
    ds.PixelData = pixels.tobytes()

    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = UID(sop_class)
    meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    meta.ImplementationClassUID = PYDICOM_IMPLEMENTATION_UID
    ds.file_meta = meta
    return ds


def make_study(spec: StudySpec | None = None) -> list[Dataset]:
    """All instances of a synthetic study: one series per view, in ``spec.views`` order."""
    spec = spec or StudySpec()
    return [make_instance(spec, view, n, generate_uid()) for n, view in enumerate(spec.views, start=1)]


def write_study(directory: str | Path, spec: StudySpec | None = None) -> list[Path]:
    """Write a synthetic study as Part-10 files named by SOP Instance UID; return the paths."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    paths = []
    for ds in make_study(spec):
        path = directory / f"{ds.SOPInstanceUID}.dcm"
        ds.save_as(path, enforce_file_format=True)
        paths.append(path)
    return paths


def prior_spec(current: StudySpec, days_before: int = 90) -> StudySpec:
    """A prior study of the same patient, ``days_before`` days earlier."""
    date = dt.datetime.strptime(current.study_date, "%Y%m%d") - dt.timedelta(days=days_before)
    return StudySpec(
        patient_name=current.patient_name,
        patient_id=current.patient_id,
        patient_birth_date=current.patient_birth_date,
        patient_sex=current.patient_sex,
        study_date=date.strftime("%Y%m%d"),
        accession_number=current.accession_number + "P",
        modality=current.modality,
        views=current.views[:1],
        rows=current.rows,
        columns=current.columns,
        bits_stored=current.bits_stored,
        seed=current.seed + 1000,
    )


def write_cxrtrek_phantoms(studies: list[dict], images_dir: str | Path) -> int:
    """A small synthetic chest image (8-bit PNG/JPEG by extension; the first of each study frontal, the others
    lateral) at each relative image path of CXRTrek-format ``studies`` that has none yet: the public CXRTrek file
    carries no images. Returns how many were written."""
    from PIL import Image

    written = 0
    for study in studies:
        for index, rel in enumerate(study["cxrtrek_data"]["image"]):
            path = Path(images_dir) / rel
            if path.exists():
                continue
            path.parent.mkdir(parents=True, exist_ok=True)
            pixels = phantom(96, 80, "PA" if index == 0 else "LATERAL", 8, seed=index).astype(np.uint8)
            Image.fromarray(pixels).save(path)
            written += 1
    return written
