"""Small stand-in DICOM objects for tests: a header in a synthetic study, an 8-bit blank image, a Part-10 file."""
from __future__ import annotations

from pathlib import Path

import numpy as np
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian, generate_uid

from dicomnode.demo.synthetic import StudySpec


def object_in(study: StudySpec, sop_class: str, modality: str, series_number: int) -> Dataset:
    """A new instance (fresh SOP and series UIDs) of ``sop_class`` in ``study``: patient, study date, chest."""
    ds = Dataset()
    ds.SOPClassUID, ds.SOPInstanceUID = sop_class, generate_uid()
    ds.StudyInstanceUID, ds.SeriesInstanceUID = study.study_instance_uid, generate_uid()
    ds.PatientID, ds.PatientName, ds.StudyDate = study.patient_id, study.patient_name, study.study_date
    ds.Modality, ds.BodyPartExamined, ds.SeriesNumber, ds.InstanceNumber = modality, "CHEST", series_number, 1
    return ds


def blank_pixels(ds: Dataset, size: int) -> None:
    """Give ``ds`` a black ``size`` x ``size`` 8-bit MONOCHROME2 image."""
    ds.SamplesPerPixel, ds.PhotometricInterpretation, ds.Rows, ds.Columns = 1, "MONOCHROME2", size, size
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 8, 8, 7, 0
    ds.PixelData = np.zeros((size, size), np.uint8).tobytes()


def save_in(directory: Path, ds: Dataset) -> Path:
    """``ds`` as an Explicit VR Little Endian Part-10 file ``<Modality>-<SOP Instance UID>.dcm`` in ``directory``."""
    ds.file_meta = FileMetaDataset()
    ds.file_meta.MediaStorageSOPClassUID, ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPClassUID, ds.SOPInstanceUID
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    path = directory / f"{ds.Modality}-{ds.SOPInstanceUID}.dcm"
    ds.save_as(path, enforce_file_format=True)
    return path
