"""Output options for the result objects: series numbers and descriptions, equipment, page geometry."""
from __future__ import annotations

from dataclasses import dataclass


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
    validate: bool = True  # run dciodvfy on every object; refuse to return one with errors

    def series_description(self, base: str, demo: bool) -> str:
        """``base``, prefixed with DEMO for demo-model output; at most 64 characters (LO)."""
        text = f"DEMO {base}" if demo else base
        return text[:64]
