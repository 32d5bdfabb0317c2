"""Output options for the result objects: series numbers and descriptions, equipment, page geometry."""
from __future__ import annotations

from dataclasses import dataclass

from pydicom.uid import ExplicitVRLittleEndian, RLELossless

from inference.triage import TriageRule

PAGE_TRANSFER_SYNTAXES = (RLELossless, ExplicitVRLittleEndian)
SR_SOP_CLASSES = ("comprehensive3d", "comprehensive")


@dataclass(frozen=True)
class OutputOptions:
    """How the SR and the SC pages are labelled and laid out. Defaults suit a PACS worklist."""

    sr_series_number: int = 9901
    sc_series_number: int = 9902
    sr_series_description: str = "AI CXR reasoning report (unverified)"
    sc_series_description: str = "AI CXR reasoning page (unverified)"
    manufacturer: str = "cxr-reasoning-node"
    institution_name: str | None = None
    institutional_department_name: str | None = None
    station_name: str | None = None
    # Reasoning page: portrait, readable 1:1 on a diagnostic monitor.
    page_width: int = 1536
    page_height: int = 2048
    body_font_px: int = 24
    # Transfer syntax of the SC pages: RLE Lossless (about 10x smaller, decoded by every PACS and viewer) or
    # Explicit VR Little Endian (uncompressed). The SCU sends a page uncompressed to a peer that refuses RLE.
    page_transfer_syntax: str = RLELossless
    # SR SOP class: Comprehensive 3D SR (.88.34), or Comprehensive SR (.88.33) for Orthanc Stone and older PACS
    # (image references under a region then named DCM 111040 "Original Source", as Stone reads them)
    sr_sop_class: str = "comprehensive3d"
    validate: bool = True  # run dciodvfy on every object; refuse to return one with errors
    # triage rules (inference.triage): a raised priority is coded in the SR, named in its series description and
    # shown on the pages' banner; none: no triage (the node passes its config's triage.rules)
    triage_rules: tuple[TriageRule, ...] = ()

    def __post_init__(self) -> None:
        if self.page_transfer_syntax not in PAGE_TRANSFER_SYNTAXES:
            raise ValueError(f"page transfer syntax {self.page_transfer_syntax}: use one of {PAGE_TRANSFER_SYNTAXES}")
        if self.sr_sop_class not in SR_SOP_CLASSES:
            raise ValueError(f"SR SOP class {self.sr_sop_class}: use one of {SR_SOP_CLASSES}")

    def series_description(self, base: str, demo: bool) -> str:
        """``base``, prefixed with DEMO for demo-model output; at most 64 characters (LO)."""
        text = f"DEMO {base}" if demo else base
        return text[:64]
