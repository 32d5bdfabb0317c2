"""RLE Lossless (PS3.5 Annex G) encoding of 8-bit frames.

A reasoning page is mostly runs of one colour, so RLE shrinks it about tenfold and every PACS and viewer decodes
it. Each row is encoded on its own (G.3.1: a packet never continues into the next row), one segment per colour
plane (R, G, B for colour-by-plane order, as G.2 requires). A segment is PackBits, the TIFF compression that
libtiff (in Pillow) writes row by row in C: 2.5 ms per plane of a 1536 x 2048 page, against 15-25 ms for the
numpy encoder below (``encode_rows``), which is used where Pillow has no libtiff. pydicom's own encoder and
pylibjpeg-rle took 0.14-0.33 s per page.
"""
from __future__ import annotations

import io
import struct
from functools import lru_cache

import numpy as np
from PIL import Image, TiffImagePlugin, features

MAX_PACKET = 128  # PackBits: a literal of 1..128 bytes, or one byte replicated 2..128 times
MAX_SEGMENTS = 15
BLOCK = 128  # columns per independently encoded piece of a row, when the row length is a multiple of it


def _ranges(starts: np.ndarray, lengths: np.ndarray) -> np.ndarray:
    """The concatenation of ``arange(s, s + n)`` for each start ``s`` and length ``n``."""
    total = int(lengths.sum())
    first = np.cumsum(lengths) - lengths
    return np.repeat(starts - first, lengths) + np.arange(total)


def _chunks(starts: np.ndarray, lengths: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Split each (start, length) span into pieces of at most ``MAX_PACKET``."""
    pieces = (lengths + MAX_PACKET - 1) // MAX_PACKET
    owner = np.repeat(np.arange(starts.size), pieces)
    index = np.arange(owner.size) - np.repeat(np.cumsum(pieces) - pieces, pieces)
    return starts[owner] + MAX_PACKET * index, np.minimum(MAX_PACKET, lengths[owner] - MAX_PACKET * index)


def encode_rows(plane: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """PackBits of every row of a 2-D uint8 array: (encoded bytes of all rows in order, encoded length per row)."""
    rows, cols = plane.shape
    flat = np.ascontiguousarray(plane, dtype=np.uint8).reshape(-1)
    change = np.empty(flat.size, dtype=bool)
    change[0] = True
    np.not_equal(flat[1:], flat[:-1], out=change[1:])
    change[::cols] = True  # a run never crosses into the next row
    starts = np.flatnonzero(change)
    lengths = np.diff(starts, append=flat.size)
    single = lengths == 1
    # A run of two or more is one span (replicate packets); consecutive single values of one row form one span
    # (literal packets), opened by its first single and as long as the next run or row start.
    opens = ~single
    opens[1:] |= single[1:] & ~single[:-1]
    opens[change[starts] & (starts % cols == 0)] = True
    span_start = starts[opens]
    span_len = np.diff(span_start, append=flat.size)
    row_end = (span_start // cols + 1) * cols
    span_len = np.minimum(span_len, row_end - span_start)
    span_literal = single[opens]
    start, length = _chunks(span_start, span_len)
    literal = np.repeat(span_literal, (span_len + MAX_PACKET - 1) // MAX_PACKET) | (length == 1)
    size = np.where(literal, length + 1, 2)
    offset = np.cumsum(size) - size
    out = np.empty(int(offset[-1] + size[-1]), dtype=np.uint8)
    out[offset] = np.where(literal, length - 1, 257 - length).astype(np.uint8)
    replicate = ~literal
    out[offset[replicate] + 1] = flat[start[replicate]]
    out[_ranges(offset[literal] + 1, length[literal])] = flat[_ranges(start[literal], length[literal])]
    row_begin = np.append(offset, out.size)[np.searchsorted(start, np.arange(rows + 1) * cols)]
    return out, np.diff(row_begin)


@lru_cache(maxsize=1)
def libtiff_packbits() -> bool:
    """Whether Pillow can write PackBits TIFF (it needs libtiff, which Pillow's wheels include)."""
    return bool(features.check("libtiff"))


def packbits_rows(plane: np.ndarray | Image.Image) -> bytes:
    """PackBits of every row of a 2-D uint8 array (or an "L" image), each row on its own, by libtiff: the strips
    of a one-channel PackBits TIFF hold exactly that, row after row."""
    image = plane if isinstance(plane, Image.Image) else Image.fromarray(np.ascontiguousarray(plane), "L")
    buffer = io.BytesIO()
    image.save(buffer, format="TIFF", compression="packbits", tiffinfo={278: image.height})  # 278: RowsPerStrip
    data = buffer.getvalue()
    with TiffImagePlugin.TiffImageFile(io.BytesIO(data)) as tiff:
        offsets, counts = tiff.tag_v2[273], tiff.tag_v2[279]  # StripOffsets, StripByteCounts
    return b"".join(data[offset:offset + count] for offset, count in zip(offsets, counts, strict=True))


def encode_frame(pixels: np.ndarray) -> bytes:
    """One RLE Lossless frame of uint8 ``pixels`` shaped (rows, cols) or (rows, cols, samples)."""
    if pixels.dtype != np.uint8:
        raise ValueError(f"RLE encoder takes 8-bit pixels, not {pixels.dtype}")
    planes = pixels[..., np.newaxis] if pixels.ndim == 2 else pixels
    rows, cols, samples = planes.shape
    if samples > MAX_SEGMENTS:
        raise ValueError(f"{samples} samples per pixel: RLE Lossless allows at most {MAX_SEGMENTS} segments")
    if libtiff_packbits():
        return _frame([packbits_rows(planes[..., sample]) for sample in range(samples)])
    return encode_frame_numpy(planes)


def encode_image(image: Image.Image) -> bytes:
    """One RLE Lossless frame of an 8-bit "L" or "RGB" image (its bands are the segments)."""
    if image.mode not in ("L", "RGB"):
        raise ValueError(f"RLE encoder takes L or RGB images, not {image.mode}")
    if libtiff_packbits():
        return _frame([packbits_rows(band) for band in image.split()])
    return encode_frame(np.asarray(image, dtype=np.uint8))


def _frame(segments: list[bytes]) -> bytes:
    """The RLE header (segment count and offsets) and the segments, each padded to even length."""
    segments = [segment + b"\x00" * (len(segment) % 2) for segment in segments]
    offsets, position = [], 64
    for segment in segments:
        offsets.append(position)
        position += len(segment)
    header = struct.pack("<16L", len(segments), *offsets, *([0] * (MAX_SEGMENTS - len(segments))))
    return header + b"".join(segments)


def encode_frame_numpy(planes: np.ndarray) -> bytes:
    """``encode_frame`` of (rows, cols, samples) uint8 ``planes`` with the numpy encoder (no libtiff needed)."""
    rows, cols, samples = planes.shape
    # Rows are cut into blocks of BLOCK columns, each encoded on its own (a packet holds at most 128 bytes anyway, so
    # this costs next to nothing in size): a colour plane then re-encodes only the blocks where it differs from
    # the first plane, e.g. a coloured label beside a grey image, not the whole row.
    block = BLOCK if cols % BLOCK == 0 else cols
    first = np.ascontiguousarray(planes[..., 0]).reshape(-1, block)
    encoded, row_bytes = encode_rows(first)
    segments = [encoded.tobytes()]
    for sample in range(1, samples):
        plane = np.ascontiguousarray(planes[..., sample]).reshape(-1, block)
        segments.append(_segment_like(first, encoded, row_bytes, plane))
    return _frame(segments)


def _segment_like(first: np.ndarray, encoded: np.ndarray, row_bytes: np.ndarray, plane: np.ndarray) -> bytes:
    """The segment of ``plane``, reusing the first plane's encoded rows (row blocks) where they are equal.

    Grey text and white paper have equal R, G and B, so most rows of a page are encoded once, not three times.
    """
    differs = np.flatnonzero((plane != first).any(axis=1))
    if differs.size == 0:
        return encoded.tobytes()
    own, own_bytes = encode_rows(plane[differs])
    begin = np.cumsum(row_bytes) - row_bytes
    length = row_bytes.copy()
    begin[differs] = encoded.size + np.cumsum(own_bytes) - own_bytes
    length[differs] = own_bytes
    pool = np.concatenate([encoded, own])
    return pool[_ranges(begin, length)].tobytes()
