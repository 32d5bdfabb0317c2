"""DICOM instances -> display images (``display_image``: the one rule the model's input and the reasoning page
both use) and the model's images of a study, ordered by view.

Any transfer syntax pydicom can decode with the installed plugins works, and what it cannot GDCM may
(``inference.pixels``). Views come from ViewPosition, then ViewCodeSequence, then series/protocol description;
frontal views (PA, AP) are ordered before laterals. ImageLaterality is not used: on chest radiographs it names the
body side (usually B), not the projection.
"""
from __future__ import annotations

import logging
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Literal

import numpy as np
from PIL import Image
from pydicom.dataset import Dataset
from pydicom.pixels import apply_color_lut, apply_modality_lut

from inference.pixels import DecodeError, decoded_pixels
from inference.record import ImageRef

log = logging.getLogger(__name__)

FRONTAL = ("PA", "AP")
LATERAL = ("LATERAL", "LL", "RL")
CHUNK_PIXELS = 1 << 22  # pixels converted to floating point at a time (32 MB as float64)

_VIEW_POSITION = {"PA": "PA", "AP": "AP", "LL": "LL", "RL": "RL", "LATERAL": "LATERAL", "LAT": "LATERAL",
                  "LLD": "LL", "RLD": "RL"}
# ViewCodeSequence (CID 4010): legacy SNOMED-RT and SNOMED CT codes, then meanings.
_VIEW_CODES = {"R-10214": "PA", "399348003": "PA", "R-10206": "AP", "399182005": "AP",
               "R-10236": "LL", "399173006": "LL", "R-10232": "RL", "399198007": "RL"}
_VIEW_MEANINGS = (("postero-anterior", "PA"), ("posteroanterior", "PA"), ("antero-posterior", "AP"),
                  ("anteroposterior", "AP"), ("left lateral", "LL"), ("right lateral", "RL"), ("lateral", "LATERAL"))
_VIEW_WORDS = ((r"\bPA\b|POSTERO-?ANTERIOR", "PA"), (r"\bAP\b|ANTERO-?POSTERIOR|PORTABLE|SUPINE", "AP"),
               (r"\bLL\b|LEFT LAT", "LL"), (r"\bRL\b|RIGHT LAT", "RL"), (r"\bLAT\b|LATERAL", "LATERAL"),
               (r"FRONTAL", "PA"))


class ImageError(ValueError):
    """An instance whose pixels cannot be turned into a model image; the message says which and why."""


@dataclass(frozen=True)
class ModelImage:
    """One image for the model and where it came from (source size kept for boxes)."""

    image: Image.Image  # 8-bit RGB
    role: Literal["current", "prior"]
    view: str
    rows: int  # source pixel matrix
    columns: int
    study_instance_uid: str
    series_instance_uid: str
    sop_instance_uid: str
    sop_class_uid: str
    frame: int = 1

    def ref(self, index: int) -> ImageRef:
        return ImageRef(index=index, role=self.role, study_instance_uid=self.study_instance_uid,
                        series_instance_uid=self.series_instance_uid, sop_instance_uid=self.sop_instance_uid,
                        sop_class_uid=self.sop_class_uid, frame=self.frame, view=self.view, rows=self.rows,
                        columns=self.columns)


def view_of(ds: Dataset) -> str:
    """PA, AP, LL, RL, LATERAL or UNKNOWN."""
    vp = str(ds.get("ViewPosition", "") or "").strip().upper()
    if vp in _VIEW_POSITION:
        return _VIEW_POSITION[vp]
    for item in ds.get("ViewCodeSequence", None) or []:
        code = str(item.get("CodeValue", "") or "")
        if code in _VIEW_CODES:
            return _VIEW_CODES[code]
        meaning = str(item.get("CodeMeaning", "") or "").lower()
        for word, view in _VIEW_MEANINGS:
            if word in meaning:
                return view
    for keyword in ("SeriesDescription", "ProtocolName", "PerformedProcedureStepDescription"):
        text = str(ds.get(keyword, "") or "").upper()
        for pattern, view in _VIEW_WORDS:
            if re.search(pattern, text):
                return view
    return "UNKNOWN"


def _view_rank(view: str) -> int:
    return 0 if view == "PA" else 1 if view == "AP" else 2 if view in LATERAL else 3


def _window(values: np.ndarray, center: float, width: float, function: str) -> np.ndarray:
    """DICOM PS3.3 C.11.2.1.2 windowing to [0, 1] (LINEAR, LINEAR_EXACT, SIGMOID)."""
    if function == "SIGMOID":
        return 1.0 / (1.0 + np.exp(-4.0 * (values - center) / width))
    if function == "LINEAR_EXACT":
        return np.clip((values - (center - width / 2)) / width, 0, 1)
    return np.clip((values - (center - 0.5)) / max(width - 1, 1e-6) + 0.5, 0, 1)


def _first(value: object) -> float:
    if isinstance(value, (list, tuple)) or hasattr(value, "__getitem__") and not isinstance(value, (str, bytes)):
        return float(value[0])
    return float(value)  # type: ignore[arg-type]


def _apply_lut(values: np.ndarray, item: Dataset) -> np.ndarray:
    """A VOI LUT (PS3.3 C.11.2.1.1) applied to modality values, scaled to [0, 1] by the LUT's largest output."""
    count, first, bits = (int(v) for v in item.LUTDescriptor)
    count = count or 65536
    data = item.LUTData
    if isinstance(data, bytes):
        lut = np.frombuffer(data, dtype="<u2" if bits > 8 else np.uint8).astype(np.float64)
    else:
        lut = np.atleast_1d(np.asarray(data, dtype=np.float64))
    lut = lut[:count]
    if lut.size == 0:
        raise ImageError("VOI LUT without data")
    index = np.clip(np.rint(values).astype(np.int64) - first, 0, lut.size - 1)
    top = float(lut.max()) or float(2**bits - 1)
    return np.clip(lut[index] / top, 0, 1)


def _voi_window(ds: Dataset) -> tuple[float, float, str] | None:
    """The first Window Center / Width pair and its VOI LUT Function; None without one (or a width of zero)."""
    if ds.get("WindowCenter") is None or ds.get("WindowWidth") is None:
        return None
    try:
        center, width = _first(ds.WindowCenter), _first(ds.WindowWidth)
    except (TypeError, ValueError, IndexError):
        return None
    function = str(ds.get("VOILUTFunction", "LINEAR") or "LINEAR").strip().upper()
    if width <= 0 or (function == "LINEAR" and width < 1):
        return None
    return center, width, function if function in ("LINEAR", "LINEAR_EXACT", "SIGMOID") else "LINEAR"


def _value_range(ds: Dataset, raw: np.ndarray, rows: int) -> tuple[float, float]:
    """The smallest and largest modality value in the frame, taken in blocks of ``rows`` rows."""
    lo, hi = np.inf, -np.inf
    for start in range(0, raw.shape[0], rows):
        block = apply_modality_lut(raw[start:start + rows], ds)
        lo, hi = min(lo, float(np.min(block))), max(hi, float(np.max(block)))
    return lo, (hi if hi > lo else lo + 1.0)


def _grey_to_uint8(ds: Dataset, raw: np.ndarray) -> np.ndarray:
    """One grey frame as 8-bit grey by the rule in ``display_image``.

    Works through the frame in blocks of rows, so the floating-point working copy stays a few tens of MB
    whatever the image size: the decoded frame is the only full-size copy besides the 8-bit result.
    """
    voi = ds.VOILUTSequence[0] if "VOILUTSequence" in ds and len(ds.VOILUTSequence) else None
    window = _voi_window(ds) if voi is None else None
    width = int(np.prod(raw.shape[1:])) if raw.ndim > 1 else 1
    rows = max(1, CHUNK_PIXELS // max(1, width))
    lo, hi = _value_range(ds, raw, rows) if voi is None and window is None else (0.0, 1.0)
    invert = str(ds.get("PhotometricInterpretation", "")).strip().upper() == "MONOCHROME1"
    out = np.empty(raw.shape, dtype=np.uint8)
    for start in range(0, raw.shape[0], rows):
        values = apply_modality_lut(raw[start:start + rows], ds).astype(np.float64)
        if voi is not None:
            unit = _apply_lut(values, voi)
        elif window is not None:
            unit = _window(values, *window)
        else:
            unit = np.clip((values - lo) / (hi - lo), 0, 1)
        if invert:
            unit = 1.0 - unit
        out[start:start + rows] = (unit * 255.0 + 0.5).astype(np.uint8)
    return out


def _colour_to_uint8(pixels: np.ndarray, bits: int) -> np.ndarray:
    arr = pixels.astype(np.float64)
    if bits > 8:
        arr = arr / (2**bits - 1) * 255.0
    return np.clip(arr + 0.5, 0, 255).astype(np.uint8)


def display_image(ds: Dataset, frame: int = 1, size: tuple[int, int] | None = None) -> Image.Image:
    """One frame of ``ds`` as an 8-bit RGB image for display: what the model is given and what the reasoning page
    shows, by one rule, the one a radiologist's viewer applies when it opens the image:

    1. the Modality LUT (Rescale Slope / Intercept, or the Modality LUT Sequence);
    2. the VOI the modality chose: the first item of the VOI LUT Sequence when there is one, else the first
       Window Center / Width pair with its VOI LUT Function (LINEAR, LINEAR_EXACT or SIGMOID; PS3.3 C.11.2.1.2).
       A 12-bit image whose window is 4096 wide and whose values lie in 1000-2000 is shown in greys 62-125,
       exactly as its window says, not stretched;
    3. without a VOI LUT or a usable window: the range of the values the frame holds, its smallest value black and
       its largest white;
    4. MONOCHROME1 inverted (its smallest value is white). The Presentation LUT Shape INVERSE that DX requires
       with MONOCHROME1 says the same thing and is not applied a second time.

    Colour: RGB as decoded (pydicom converts YBR to RGB), more than 8 bits scaled by Bits Stored; PALETTE COLOR
    through its palette. ``size`` (width, height) resizes (LANCZOS), a grey image while still one byte a pixel.
    Raises ``ImageError`` saying which instance and why.
    """
    sop = str(ds.get("SOPInstanceUID", "?"))
    if "PixelData" not in ds:
        raise ImageError(f"instance {sop} has no pixel data")
    try:
        pixels = decoded_pixels(ds)
    except DecodeError as exc:
        ts = getattr(getattr(ds, "file_meta", None), "TransferSyntaxUID", None)
        name = f"{ts.name} ({ts})" if ts is not None else "no transfer syntax"
        raise ImageError(f"instance {sop}: cannot decode pixel data, {name}: {exc}") from exc
    frames = int(ds.get("NumberOfFrames", 1) or 1)
    photometric = str(ds.get("PhotometricInterpretation", "")).strip().upper()
    samples = int(ds.get("SamplesPerPixel", 1) or 1)
    if frames > 1:
        if not 1 <= frame <= frames:
            raise ImageError(f"instance {sop} has {frames} frames, not frame {frame}")
        pixels = pixels[frame - 1]
    if samples == 1 and photometric in ("MONOCHROME1", "MONOCHROME2"):
        grey = Image.fromarray(_grey_to_uint8(ds, pixels), mode="L")
        if size and size != grey.size:
            grey = grey.resize(size, Image.Resampling.LANCZOS)
        return grey.convert("RGB")
    if samples == 3:
        image = Image.fromarray(_colour_to_uint8(pixels, int(ds.get("BitsStored", 8) or 8)), mode="RGB")
    elif samples == 1 and photometric == "PALETTE COLOR":
        try:
            rgb = apply_color_lut(pixels, ds)
        except Exception as exc:  # noqa: BLE001 - a broken palette comes in many forms
            raise ImageError(f"instance {sop}: palette cannot be applied: {exc}") from exc
        bits = int(ds.RedPaletteColorLookupTableDescriptor[2]) if "RedPaletteColorLookupTableDescriptor" in ds else 8
        image = Image.fromarray(_colour_to_uint8(rgb, bits), mode="RGB")
    else:
        raise ImageError(f"instance {sop}: photometric interpretation {photometric or 'missing'} "
                         f"with {samples} sample(s) per pixel is not supported")
    return image.resize(size, Image.Resampling.LANCZOS) if size and size != image.size else image


def fit_size(rows: int, columns: int, max_side: int | None) -> tuple[int, int] | None:
    """(width, height) of a rows x columns image shrunk to ``max_side`` on its longer side; None when it fits."""
    if not max_side or max(rows, columns) <= max_side:
        return None
    scale = max_side / max(rows, columns)
    return max(1, round(columns * scale)), max(1, round(rows * scale))


def to_pil(ds: Dataset, frame: int = 1, max_side: int | None = None) -> Image.Image:
    """The model's image of one frame: ``display_image``, original size unless ``max_side`` shrinks it."""
    return display_image(ds, frame, fit_size(int(ds.get("Rows", 0) or 0), int(ds.get("Columns", 0) or 0), max_side))


def _sort_key(ds: Dataset) -> tuple[int, int, int]:
    def num(keyword: str) -> int:
        try:
            return int(ds.get(keyword, 0) or 0)
        except (TypeError, ValueError):
            return 0

    return _view_rank(view_of(ds)), num("SeriesNumber"), num("InstanceNumber")


def order_views(datasets: Iterable[Dataset]) -> list[Dataset]:
    """Image instances, frontal (PA, then AP) first, then laterals, then unknown; stable by series/instance."""
    return sorted(datasets, key=_sort_key)


def prepare_images(
    datasets: Sequence[Dataset], role: Literal["current", "prior"] = "current", max_side: int | None = None
) -> list[ModelImage]:
    """Model images for one study: instances without pixel data are skipped (logged), the rest ordered."""
    with_pixels = []
    for ds in datasets:
        if "PixelData" in ds:
            with_pixels.append(ds)
        else:
            log.info("skipping %s instance %s without pixel data", role, ds.get("SOPInstanceUID", "?"))
    images = []
    for ds in order_views(with_pixels):
        images.append(ModelImage(
            image=to_pil(ds, 1, max_side), role=role, view=view_of(ds), rows=int(ds.Rows), columns=int(ds.Columns),
            study_instance_uid=str(ds.get("StudyInstanceUID", "")),
            series_instance_uid=str(ds.get("SeriesInstanceUID", "")),
            sop_instance_uid=str(ds.get("SOPInstanceUID", "")), sop_class_uid=str(ds.get("SOPClassUID", "")),
        ))
    if not images:
        raise ImageError(f"no {role} image with pixel data among {len(datasets)} instance(s)")
    return images
