"""TrueType fonts for the reasoning page, with per-glyph fallback for scripts DejaVu lacks (CJK).

DejaVu Sans (Debian fonts-dejavu-core) is required; Droid Sans Fallback (Debian fonts-droid-fallback) supplies
Chinese, Japanese and Korean glyphs when installed. Text is split into runs, each drawn with the first font that
has its glyphs.
"""
from __future__ import annotations

import logging
import os
import re
from collections.abc import Iterator
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path

from PIL import Image, ImageDraw, ImageFont

log = logging.getLogger(__name__)

FONT_DIRS = (Path("/usr/share/fonts/truetype/dejavu"), Path("/usr/share/fonts/dejavu"))
REGULAR = "DejaVuSans.ttf"
BOLD = "DejaVuSans-Bold.ttf"
FALLBACKS = (
    Path("/usr/share/fonts/truetype/droid/DroidSansFallbackFull.ttf"),
    Path("/usr/share/fonts/truetype/wqy/wqy-microhei.ttc"),
    Path("/usr/share/fonts/opentype/noto/NotoSansCJK-Regular.ttc"),
)
_PROBE = "\U0010fffd"  # a private-use code point no font draws: its rendering is the .notdef glyph


class FontMissing(RuntimeError):
    """The required TrueType font is not installed."""


def _find(name: str) -> Path:
    override = os.environ.get("CXR_FONT_DIR")  # set: look only there
    for directory in [Path(override)] if override else list(FONT_DIRS):
        path = directory / name
        if path.is_file():
            return path
    raise FontMissing(f"{name} not found in {[str(d) for d in FONT_DIRS]}: "
                      "install the Debian package fonts-dejavu-core")


def fallback_path() -> Path | None:
    for path in FALLBACKS:
        if path.is_file():
            return path
    return None


@lru_cache(maxsize=64)
def _truetype(path: str, size: int) -> ImageFont.FreeTypeFont:
    return ImageFont.truetype(path, size)


@lru_cache(maxsize=16384)
def _length(path: str, size: int, text: str) -> float:
    """Advance width of ``text`` in one font; cached, since wrapping measures the same words again and again."""
    return _truetype(path, size).getlength(text)


_WORDS = re.compile(r"\S+\s*|\s+")  # a word with the spaces after it, or leading spaces


@lru_cache(maxsize=16384)
def _word_mask(path: str, size: int, word: str) -> tuple[Image.Image, int, int]:
    """``word`` rasterised once as an anti-aliased mask, with its offset from the left end of the baseline.

    Words recur on a page and from page to page (question wording, headers), and rasterising is most of the cost of
    drawing text; each occurrence after the first is a blit."""
    core, (dx, dy) = _truetype(path, size).getmask2(word, "L", anchor="ls")
    return Image.frombytes("L", core.size, bytes(core)), dx, dy


_ALWAYS_PRIMARY = "\u0250"  # DejaVu Sans draws every code point below this (Latin, Latin-1, Latin Extended)


@lru_cache(maxsize=4096)
def _has_glyph(path: str, size: int, char: str) -> bool:
    if char.isspace() or char < _ALWAYS_PRIMARY:
        return True
    font = _truetype(path, size)
    return bytes(font.getmask(char)) != bytes(font.getmask(_PROBE)) or font.getlength(char) != font.getlength(_PROBE)


@dataclass(frozen=True)
class Face:
    """One style at one size: the primary font plus fallbacks, measured and drawn run by run."""

    size: int
    bold: bool = False
    paths: tuple[str, ...] = field(default=())

    @classmethod
    def make(cls, size: int, bold: bool = False) -> Face:
        primary = str(_find(BOLD if bold else REGULAR))
        fallback = fallback_path()
        if fallback is None:
            log.warning("no CJK fallback font (Debian fonts-droid-fallback): such text shows as boxes")
        return cls(size, bold, (primary,) + ((str(fallback),) if fallback else ()))

    @property
    def line_height(self) -> int:
        return int(round(self.size * 1.38))

    def runs(self, text: str) -> Iterator[tuple[str, str]]:
        """Consecutive characters grouped by the first font (its path) that has their glyphs."""
        if text and max(text) < _ALWAYS_PRIMARY:  # Latin text: one run in the primary font, no per-glyph lookup
            yield self.paths[0], text
            return
        current: str | None = None
        buffer: list[str] = []
        for char in text:
            path = next((p for p in self.paths if _has_glyph(p, self.size, char)), self.paths[0])
            if current is not None and path != current and buffer:
                yield current, "".join(buffer)
                buffer = []
            current = path
            buffer.append(char)
        if buffer and current is not None:
            yield current, "".join(buffer)

    def width(self, text: str) -> float:
        return sum(_length(path, self.size, run) for path, run in self.runs(text))

    def draw(self, draw: ImageDraw.ImageDraw, xy: tuple[float, float], text: str, fill: tuple[int, int, int]) -> float:
        """Draw ``text`` in a line box whose top-left is ``xy`` (runs share one baseline); return the x after it."""
        x, y = xy
        baseline = y + round(self.size * 1.05)
        for path, run in self.runs(text):
            if draw.fontmode != "L":  # not anti-aliased: let Pillow draw the run
                font = _truetype(path, self.size)
                draw.text((x, baseline), run, font=font, fill=fill, anchor="ls")
                x += font.getlength(run)
                continue
            for word in _WORDS.findall(run):  # word by word, each advancing by its measured width
                glyphs = word.rstrip()
                if glyphs:
                    mask, dx, dy = _word_mask(path, self.size, glyphs)
                    if mask.width and mask.height:  # Pillow truncates the corner to int; done here, typed
                        draw.bitmap((int(x) + dx, int(baseline + dy)), mask, fill=fill)
                x += _length(path, self.size, word)
        return x
