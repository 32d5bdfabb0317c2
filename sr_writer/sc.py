"""Secondary Capture instances (RGB, 8-bit) of the reasoning pages: same study, own series, one per page.

Pixel data is RLE Lossless by default (``OutputOptions.page_transfer_syntax``); a page is mostly runs of white.
"""
from __future__ import annotations

import datetime as dt
from collections.abc import Sequence

import numpy as np
from highdicom import ContributingEquipment
from highdicom.sc import SCImage
from PIL import Image
from pydicom.dataset import Dataset
from pydicom.sr.codedict import codes
from pydicom.encaps import encapsulate
from pydicom.uid import ExplicitVRLittleEndian, RLELossless, generate_uid

from inference.record import UNVERIFIED_STATEMENT as UNVERIFIED
from inference.record import ReasoningRecord
from sr_writer import provenance as prov
from sr_writer.options import OutputOptions
from sr_writer.rle import encode_frame


def build_pages(
    record: ReasoningRecord,
    images: Sequence[Image.Image],
    current: Sequence[Dataset],
    options: OutputOptions | None = None,
) -> list[Dataset]:
    """One SC instance per page image; patient and study copied from the first current source dataset."""
    options = options or OutputOptions()
    if not current:
        raise ValueError("at least one current source dataset is needed")
    ref = current[0]
    p = record.provenance
    series_uid = generate_uid()
    now = dt.datetime.now(dt.timezone.utc)
    description = options.series_description(options.sc_series_description, p.demo_model)
    out: list[Dataset] = []
    for number, image in enumerate(images, start=1):
        pixels = np.asarray(image if image.mode == "RGB" else image.convert("RGB"), dtype=np.uint8)
        equipment = ContributingEquipment(
            manufacturer=options.manufacturer,
            purpose_of_reference=codes.DCM.ProcessingEquipment,
            manufacturer_model_name=prov.model_title(p)[:64],
            software_versions=prov.software_versions(p),
            device_serial_number=prov.device_uid(p),
            institution_name=options.institution_name,
            station_name=options.station_name,
            contribution_datetime=now,
            contribution_description=f"Processing Algorithm: {prov.summary(p)}"[:64],
        )
        sc = SCImage.from_ref_dataset(
            ref_dataset=ref,
            pixel_array=pixels,
            photometric_interpretation="RGB",
            bits_allocated=8,
            coordinate_system="PATIENT",
            patient_orientation=("L", "F"),  # placeholder: emptied below, a page has no patient orientation
            series_instance_uid=series_uid,
            series_number=options.sc_series_number,
            sop_instance_uid=generate_uid(),
            instance_number=number,
            manufacturer=options.manufacturer,
            transfer_syntax_uid=ExplicitVRLittleEndian,
            contributing_equipment=[equipment],
            specific_character_set="ISO_IR 192",
            series_description=description,
            manufacturer_model_name=prov.model_title(p)[:64],
            software_versions=prov.software_versions(p),
            institution_name=options.institution_name,
            institutional_department_name=options.institutional_department_name,
            content_date=now.date(),
            content_time=now.time().replace(microsecond=0),
        )
        sc.PatientOrientation = None  # type 2: present, empty
        if ref.get("BodyPartExamined"):
            sc.BodyPartExamined = ref.BodyPartExamined  # CHEST: unpaired, so Laterality (type 2C) stays absent
        else:
            sc.Laterality = None  # unknown body part: type 2C present, empty
        sc.BurnedInAnnotation = "YES"
        sc.RecognizableVisualFeatures = "NO"
        sc.ConversionType = "WSD"  # workstation: rendered by software
        sc.ImageType = ["DERIVED", "SECONDARY"]
        sc.DerivationDescription = f"Reasoning page {number} of {len(images)}"
        title = f"{'DEMO ' if p.demo_model else ''}AI reasoning page {number} of {len(images)}"
        sc.ImageComments = f"{title}. {UNVERIFIED}"
        sc.SourceImageSequence = [_source_item(ds) for ds in current]
        if options.page_transfer_syntax == RLELossless:
            encode_rle(sc, pixels)
        out.append(sc)
    return out


def encode_rle(ds: Dataset, pixels: np.ndarray) -> None:
    """Replace the native Pixel Data of single-frame ``ds`` by its RLE Lossless encoding (``pixels`` as stored)."""
    ds.PixelData = encapsulate([encode_frame(pixels)])
    element = ds["PixelData"]
    element.VR = "OB"
    element.is_undefined_length = True
    ds.file_meta.TransferSyntaxUID = RLELossless



def _source_item(ds: Dataset) -> Dataset:
    item = Dataset()
    item.ReferencedSOPClassUID = ds.SOPClassUID
    item.ReferencedSOPInstanceUID = ds.SOPInstanceUID
    return item
