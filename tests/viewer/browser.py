"""Headless Debian Chromium driven by Playwright (no browser download), and what the tests read off its pages."""
from __future__ import annotations

import shutil
from dataclasses import dataclass, field
from typing import Any

import numpy as np

CHROMIUM_BINARY = "chromium"  # Debian package 'chromium'
CHROMIUM_ARGS = [
    "--headless", "--no-sandbox", "--disable-gpu",
    "--use-angle=swiftshader", "--enable-unsafe-swiftshader",  # WebGL in software: OHIF renders with it
    "--disable-background-networking", "--disable-component-update", "--disable-sync", "--no-first-run",
]
VIEWPORT = {"width": 1600, "height": 1000}
LOAD_TIMEOUT_MS = 120_000  # two shared cores: OHIF's first load compiles ~10 MB of JavaScript and WASM
# Console lines that are not page errors. Each entry: (substring, why it is harmless).
ALLOWED_CONSOLE_ERRORS: tuple[tuple[str, str], ...] = ()


def chromium_path() -> str:
    path = shutil.which(CHROMIUM_BINARY)
    if path is None:
        raise RuntimeError("Debian 'chromium' not found: run scripts/bootstrap.sh")
    return path


def launch(playwright: Any) -> Any:
    """A Chromium browser for ``playwright`` (the sync API's ``Playwright``)."""
    return playwright.chromium.launch(executable_path=chromium_path(), headless=True, args=CHROMIUM_ARGS)


def open_page(browser: Any) -> tuple[Any, ConsoleLog]:
    """A new page of ``browser`` (``VIEWPORT``, ``LOAD_TIMEOUT_MS``) and the log of its console."""
    page = browser.new_page(viewport=VIEWPORT)
    page.set_default_timeout(LOAD_TIMEOUT_MS)
    return page, ConsoleLog().attach(page)


@dataclass
class ConsoleLog:
    """Page errors and console errors of one page; ``problems`` leaves out ALLOWED_CONSOLE_ERRORS."""

    page_errors: list[str] = field(default_factory=list)
    console_errors: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    lines: list[str] = field(default_factory=list)  # every console line, for the artefacts

    def attach(self, page: Any) -> ConsoleLog:
        page.on("pageerror", lambda error: self.page_errors.append(str(error)))
        page.on("console", self._on_console)
        return self

    def _on_console(self, message: Any) -> None:
        self.lines.append(f"{message.type}: {message.text}")
        if message.type == "error":
            self.console_errors.append(message.text)
        elif message.type == "warning":
            self.warnings.append(message.text)

    @property
    def problems(self) -> list[str]:
        allowed = [needle for needle, _why in ALLOWED_CONSOLE_ERRORS]
        return self.page_errors + [e for e in self.console_errors if not any(a in e for a in allowed)]


def rgb(png: bytes) -> np.ndarray:
    """A screenshot as an (H, W, 3) uint8 array."""
    import io

    from PIL import Image

    return np.asarray(Image.open(io.BytesIO(png)).convert("RGB"))


def colour_mask(image: np.ndarray, colour: str) -> np.ndarray:
    """Pixels of an annotation colour (cornerstone draws yellow, green when selected); grey images have none."""
    r, g, b = (image[..., i].astype(int) for i in range(3))
    if colour == "yellow":
        return (r > 180) & (g > 180) & (b < 90)
    if colour == "green":
        return (g > 180) & (r < 90) & (b < 90)
    raise ValueError(colour)
