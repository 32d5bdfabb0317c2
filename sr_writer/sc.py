"""Secondary Capture instances (RGB, 8-bit) of the reasoning pages: same study, own series, one per page.

Pixel data is RLE Lossless by default (``OutputOptions.page_transfer_syntax``): a page is mostly runs of white.
Encoding the pixels (``page_pixels``) is separate from building the datasets (``build_page_datasets``), so a node can
encode in the process that rendered the pages and send back only the small encoded frames.
"""
from __future__ import annotations

import copy
import datetime as dt
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from highdicom import ContributingEquipment
from highdicom.sc import SCImage
from PIL import Image
from pydicom.dataset import Dataset
from pydicom.encaps import encapsulate
from pydicom.sr.codedict import codes
from pydicom.uid import UID, ExplicitVRLittleEndian, RLELossless, generate_uid

from inference.record import UNVERIFIED_STATEMENT as UNVERIFIED
from inference.record import ReasoningRecord
from sr_writer import provenance as prov
from sr_writer.options import OutputOptions
from sr_writer.rle import encode_frame, encode_image
from sr_writer.text import sweep_text


@dataclass(frozen=True)
class PagePixels:
    """One page's RGB pixels, encoded in ``transfer_syntax`` (RLE: the encapsulated frame; else native bytes)."""

    rows: int
    columns: int
    transfer_syntax: str
    data: bytes


def page_pixels(image: Image.Image, transfer_syntax: str = RLELossless) -> PagePixels:
    """Encode a rendered page for its SC instance."""
    rgb = image if image.mode == "RGB" else image.convert("RGB")
    if transfer_syntax == RLELossless:  # straight from the image's bands, no array copy
        return PagePixels(rgb.height, rgb.width, RLELossless, encapsulate([encode_image(rgb)]))
    return encode_pixels(np.asarray(rgb, dtype=np.uint8), transfer_syntax)


def encode_pixels(pixels: np.ndarray, transfer_syntax: str = RLELossless) -> PagePixels:
    """One frame of uint8 ``pixels`` (rows, columns[, samples]) in ``transfer_syntax``."""
    rows, columns = pixels.shape[:2]
    if transfer_syntax == RLELossless:
        return PagePixels(rows, columns, RLELossless, encapsulate([encode_frame(pixels)]))
    return PagePixels(rows, columns, ExplicitVRLittleEndian, np.ascontiguousarray(pixels).tobytes())


def set_pixel_data(ds: Dataset, page: PagePixels) -> None:
    """Put an encoded frame into ``ds``: Pixel Data (OB; undefined length when encapsulated) and transfer syntax."""
    ds.PixelData = page.data
    element = ds["PixelData"]
    element.VR = "OB"
    element.is_undefined_length = page.transfer_syntax == RLELossless
    ds.file_meta.TransferSyntaxUID = UID(page.transfer_syntax)


def build_pages(
    record: ReasoningRecord,
    images: Sequence[Image.Image],
    current: Sequence[Dataset],
    options: OutputOptions | None = None,
) -> list[Dataset]:
    """One SC instance per page image; patient and study copied from the first current source dataset."""
    options = options or OutputOptions()
    return build_page_datasets(record, [page_pixels(i, options.page_transfer_syntax) for i in images], current,
                               options)


def build_page_datasets(
    record: ReasoningRecord,
    pages: Sequence[PagePixels],
    current: Sequence[Dataset],
    options: OutputOptions | None = None,
    *,
    series_uid: str | None = None,
    first_number: int = 1,
    total: int | None = None,
    made_at: dt.datetime | None = None,
    templates: dict[tuple[int, int], Dataset] | None = None,
) -> list[Dataset]:
    """One SC instance per encoded page, numbered from ``first_number`` of ``total`` (default: these pages are all).

    highdicom builds (and checks) the first of each page size; the other pages are copies of it that differ in
    their UID, number, texts and pixel data. Pages of one study made in several calls (page processes) share
    ``series_uid`` and ``made_at``; ``templates`` (page size -> template), when given, is reused and filled across
    calls for the same set."""
    options = options or OutputOptions()
    if not current:
        raise ValueError("at least one current source dataset is needed")
    series_uid = series_uid or generate_uid()
    made_at = made_at or dt.datetime.now(dt.UTC)
    total = total if total is not None else len(pages)
    templates = {} if templates is None else templates
    out: list[Dataset] = []
    for number, page in enumerate(pages, start=first_number):
        size = (page.rows, page.columns)
        if size not in templates:
            templates[size] = _template(record, size, current, options, series_uid, made_at)
        sc = copy.deepcopy(templates[size])
        sc.SOPInstanceUID = generate_uid()
        sc.file_meta.MediaStorageSOPInstanceUID = sc.SOPInstanceUID
        sc.InstanceNumber = number
        sc.DerivationDescription = f"Reasoning page {number} of {total}"
        title = f"{'DEMO ' if record.provenance.demo_model else ''}AI reasoning page {number} of {total}"
        sc.ImageComments = f"{title}. {UNVERIFIED}"
        set_pixel_data(sc, page)
        out.append(sc)
    return out


def _template(record: ReasoningRecord, size: tuple[int, int], current: Sequence[Dataset], options: OutputOptions,
              series_uid: str, now: dt.datetime) -> Dataset:
    """A page's SC instance, everything but its UID, number, texts and pixel data (blank)."""
    ref = current[0]
    p = record.provenance
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
        pixel_array=np.zeros((*size, 3), np.uint8),
        photometric_interpretation="RGB",
        bits_allocated=8,
        coordinate_system="PATIENT",
        patient_orientation=("L", "F"),  # placeholder: emptied below, a page has no patient orientation
        series_instance_uid=series_uid,
        series_number=options.sc_series_number,
        sop_instance_uid=generate_uid(),
        instance_number=1,
        manufacturer=options.manufacturer,
        transfer_syntax_uid=ExplicitVRLittleEndian,
        contributing_equipment=[equipment],
        specific_character_set="ISO_IR 192",
        series_description=options.series_description(options.sc_series_description, p.demo_model),
        manufacturer_model_name=prov.model_title(p)[:64],
        software_versions=prov.software_versions(p),
        institution_name=options.institution_name,
        institutional_department_name=options.institutional_department_name,
        content_date=now.date(),
        content_time=now.time().replace(microsecond=0),
    )
    # type 2: present, empty (pydicom's keyword attributes are typed without the None that empties them)
    sc.PatientOrientation = None  # type: ignore[assignment]
    sc.SeriesDate, sc.SeriesTime = sc.ContentDate, sc.ContentTime
    _body_part(sc, ref)
    sc.BurnedInAnnotation = "YES"
    sc.RecognizableVisualFeatures = "NO"
    sc.ConversionType = "WSD"  # workstation: rendered by software
    sc.ImageType = ["DERIVED", "SECONDARY"]
    sc.SourceImageSequence = [_source_item(ds) for ds in current]
    del sc.PixelData  # each page brings its own; copies of the template stay small
    sweep_text(sc)  # no TAB or control character in any text (sr_writer.text); the per-page texts are ours
    return sc


UNPAIRED_BODY_PARTS = ("CHEST",)  # body parts dciodvfy knows as unpaired: Laterality must then be absent


def _body_part(sc: Dataset, ref: Dataset) -> None:
    """Body Part Examined (type 3) and Laterality (type 2C, required for a paired or unknown body part).

    CHEST is copied without Laterality. Any other body part (THORAX, which dciodvfy does not know, or a paired
    part) is left out and Laterality is written: the source's R or L, else empty (a page shows both sides). Copying
    THORAX without Laterality made dciodvfy refuse the pages of a THORAX study (issue 17)."""
    body_part = str(ref.get("BodyPartExamined", "") or "").strip().upper()
    if body_part in UNPAIRED_BODY_PARTS:
        sc.BodyPartExamined = body_part
        return
    laterality = str(ref.get("Laterality", "") or "")
    sc.Laterality = laterality if laterality in ("R", "L") else None


def _source_item(ds: Dataset) -> Dataset:
    item = Dataset()
    item.ReferencedSOPClassUID = ds.SOPClassUID
    item.ReferencedSOPInstanceUID = ds.SOPInstanceUID
    return item
