"""Charts as inline SVG, rendered server-side by pure functions (no JavaScript, no CDN, nothing to vendor).

Why SVG strings: the monitor must work on an edge node with no network, the pages refresh themselves every few
seconds anyway, and a line or bar chart of a few hundred points is ~60 lines of arithmetic that tests can check
directly. Every label is escaped; sizes are fixed so a chart never reflows the page.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from html import escape

PALETTE = ("#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2", "#7f7f7f")


def _nice_max(value: float) -> float:
    """A round axis maximum at or above value (1, 2, 5 x 10^k)."""
    if value <= 0:
        return 1.0
    exp = 10 ** len(str(int(value))) / 10 if value >= 1 else 1.0
    for step in (1, 2, 5, 10):
        if step * exp >= value:
            return float(step * exp)
    return float(10 * exp)


def human(value: float, unit: str = "") -> str:
    """1536 -> '1.5K' (binary for bytes, decimal otherwise)."""
    base = 1024.0 if unit == "B" else 1000.0
    for prefix in ("", "K", "M", "G", "T"):
        if abs(value) < base or prefix == "T":
            return f"{value:.3g}{prefix}{unit}"
        value /= base
    return f"{value:.1f}"


def _open_svg(title: str, width: int, height: int) -> str:
    return (
        f'<svg class="chart" role="img" aria-label="{escape(title)}" width="{width}" height="{height}" '
        f'viewBox="0 0 {width} {height}" xmlns="http://www.w3.org/2000/svg">'
    )


def line_chart(
    series: Mapping[str, Sequence[tuple[float, float]]], title: str, unit: str = "", width: int = 560, height: int = 200
) -> str:
    """One polyline per series over a shared x axis (seconds since the earliest point)."""
    left, right, top, bottom = 56, 110, 22, 26
    points = [p for pts in series.values() for p in pts]
    out = [_open_svg(title, width, height), f'<text x="{left}" y="14" class="ctitle">{escape(title)}</text>']
    if not points:
        out.append(f'<text x="{left}" y="{height // 2}" class="cnote">no samples yet</text></svg>')
        return "".join(out)
    x0 = min(p[0] for p in points)
    xspan = max(max(p[0] for p in points) - x0, 1e-9)
    ymax = _nice_max(max(p[1] for p in points))
    pw, ph = width - left - right, height - top - bottom
    out.append(f'<rect x="{left}" y="{top}" width="{pw}" height="{ph}" class="cframe"/>')
    for frac in (0, 0.5, 1):
        y = top + ph * (1 - frac)
        out.append(
            f'<text x="{left - 4}" y="{y + 4:.1f}" text-anchor="end" class="caxis">'
            f"{escape(human(ymax * frac, unit))}</text>"
        )
    out.append(
        f'<text x="{left}" y="{height - 8}" class="caxis">0 s</text>'
        f'<text x="{left + pw}" y="{height - 8}" text-anchor="end" class="caxis">{xspan:.0f} s</text>'
    )
    for i, (name, pts) in enumerate(series.items()):
        color = PALETTE[i % len(PALETTE)]
        coords = " ".join(f"{left + pw * (x - x0) / xspan:.1f},{top + ph * (1 - y / ymax):.1f}" for x, y in pts)
        out.append(f'<polyline fill="none" stroke="{color}" stroke-width="1.6" points="{coords}"/>')
        if len(pts) == 1:
            x, y = pts[0]
            out.append(
                f'<circle cx="{left + pw * (x - x0) / xspan:.1f}" cy="{top + ph * (1 - y / ymax):.1f}" '
                f'r="2.5" fill="{color}"/>'
            )
        ly = top + 12 + 14 * i
        out.append(
            f'<rect x="{width - right + 8}" y="{ly - 8}" width="10" height="3" fill="{color}"/>'
            f'<text x="{width - right + 22}" y="{ly}" class="caxis">{escape(name)}</text>'
        )
    out.append("</svg>")
    return "".join(out)


def bar_chart(
    bars: Sequence[tuple[str, float]],
    title: str,
    width: int = 560,
    height: int = 160,
    ymax: float | None = None,
    unit: str = "",
) -> str:
    """Vertical bars with a label under every few bars (e.g. events finished per minute); ymax fixes the axis."""
    left, top, bottom = 40, 22, 26
    out = [_open_svg(title, width, height), f'<text x="{left}" y="14" class="ctitle">{escape(title)}</text>']
    if not bars:
        out.append(f'<text x="{left}" y="{height // 2}" class="cnote">nothing yet</text></svg>')
        return "".join(out)
    ymax = ymax or _nice_max(max(v for _, v in bars))
    pw, ph = width - left - 8, height - top - bottom
    slot = min(pw / len(bars), 80.0)  # a few bars stay bars, not slabs
    every = max(1, len(bars) // 8)
    out.append(
        f'<text x="{left - 4}" y="{top + 4}" text-anchor="end" class="caxis">{escape(human(ymax, unit))}</text>'
        f'<text x="{left - 4}" y="{top + ph}" text-anchor="end" class="caxis">0</text>'
    )
    for i, (label, value) in enumerate(bars):
        h = ph * min(value, ymax) / ymax
        x = left + i * slot
        out.append(
            f'<rect x="{x + slot * 0.1:.1f}" y="{top + ph - h:.1f}" width="{slot * 0.8:.1f}" '
            f'height="{h:.1f}" fill="{PALETTE[0]}"><title>{escape(label)}: {value:g}{escape(unit)}</title>'
            f"</rect>"
        )
        if i % every == 0:
            out.append(
                f'<text x="{x + slot / 2:.1f}" y="{height - 8}" text-anchor="middle" class="caxis">'
                f"{escape(label)}</text>"
            )
    out.append("</svg>")
    return "".join(out)


def monitor_series(
    samples: dict[int, list[dict]], field: str, scale: float = 1.0
) -> dict[str, list[tuple[float, float]]]:
    """prmon samples per rank -> {"rank N": [(time, value)]}; cpu = utime + stime."""
    out: dict[str, list[tuple[float, float]]] = {}
    for rank, rows in sorted(samples.items()):
        pts = []
        for row in rows:
            parts = [row.get("utime", 0), row.get("stime", 0)] if field == "cpu" else [row.get(field)]
            if all(_finite(v) for v in parts) and _finite(row.get("time")):  # samples are pilot input
                pts.append((float(row["time"]), float(sum(v for v in parts if v is not None)) * scale))
        out[f"rank {rank}"] = pts
    return out


def _finite(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
