"""The overview's 24 h throughput plot as a small inline SVG (no JavaScript, no chart library)."""
from __future__ import annotations

from html import escape

from dicomnode.dashboard.queries import Throughput

SERIES = (("received", "instances received", "#4c78a8"), ("finished", "studies delivered", "#54a24b"),
          ("sent", "objects sent", "#f58518"))


def throughput_svg(tp: Throughput, width: int = 720, height: int = 160) -> str:
    """Grouped bars per hour, one colour per series, a legend and hour ticks every 6 h."""
    left, bottom, top = 36, 22, 18
    hours = len(tp.hours)
    peak = max([1, *tp.received, *tp.finished, *tp.sent])
    slot = (width - left) / max(hours, 1)
    bar = max(slot / (len(SERIES) + 1), 1.0)
    scale = (height - bottom - top) / peak
    parts = [f'<svg xmlns="http://www.w3.org/2000/svg" class="plot" role="img" width="{width}" height="{height}" '
             f'viewBox="0 0 {width} {height}" aria-label="throughput, last 24 hours">']
    base = height - bottom
    parts.append(f'<line x1="{left}" y1="{base}" x2="{width}" y2="{base}" stroke="#888"/>')
    parts.append(f'<text x="{left - 4}" y="{top + 4}" text-anchor="end" font-size="10">{peak}</text>')
    parts.append(f'<text x="{left - 4}" y="{base}" text-anchor="end" font-size="10">0</text>')
    for i, hour in enumerate(tp.hours):
        x0 = left + i * slot
        for k, (key, label, colour) in enumerate(SERIES):
            value = getattr(tp, key)[i]
            if value:
                h = value * scale
                parts.append(f'<rect class="bar-{key}" x="{x0 + k * bar:.1f}" y="{base - h:.1f}" width="{bar:.1f}" '
                             f'height="{h:.1f}" fill="{colour}"><title>{hour:%H}:00 {escape(label)}: {value}'
                             f'</title></rect>')
        if i % 6 == 0:
            parts.append(f'<text x="{x0:.1f}" y="{height - 6}" font-size="10">{hour:%H}:00</text>')
    x = left
    for _key, label, colour in SERIES:
        parts.append(f'<rect x="{x}" y="2" width="10" height="10" fill="{colour}"/>'
                     f'<text x="{x + 14}" y="11" font-size="11">{escape(label)}</text>')
        x += 24 + 7 * len(label)
    parts.append("</svg>")
    return "".join(parts)
