"""Charts over wall-clock time, as inline SVG strings like charts.py (no JavaScript, no CDN, labels escaped, sizes
fixed by the arguments and the number of rows, never by the browser).

time_chart:     lines over UTC time (step lines for counts), with marks (e.g. "expected end") and dashed lines.
timeline_chart: one bar per row (e.g. a worker) made of coloured segments (queued, running), an end colour each.
grouped_bars:   a histogram with one bar per series in each bin (e.g. wait times per queue).

Every drawn series carries class="series" and data-points="N", every bar class="seg"/"bin": tests count them.
"""

from __future__ import annotations

import math
import time
from collections.abc import Mapping, Sequence
from html import escape

from .charts import PALETTE, _nice_max, _open_svg, human

END_COLOURS = {
    "finished": "#2ca02c",
    "failed": "#d62728",
    "cancelled": "#8c564b",
    "missing": "#7f7f7f",
    "running": "#1f77b4",
    "queued": "#aec7e8",
    "submitting": "#c7c7c7",
    "new": "#c7c7c7",
}
QUEUED_COLOUR = "#dbe3ee"
MAX_ROWS = 50  # bars in one timeline chart; the rest are counted in its title


def _finite(v) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def clock(t: float, span: float) -> str:
    """A tick label (UTC): HH:MM:SS for a span under an hour, HH:MM under two days, else MM-DD HH:MM."""
    fmt = "%H:%M:%S" if span < 3600 else ("%H:%M" if span < 2 * 86400 else "%m-%d %H:%M")
    try:
        return time.strftime(fmt, time.gmtime(t))
    except (OverflowError, OSError, ValueError):
        return "?"


def _x_axis(out: list, left: float, pw: float, y: float, t0: float, t1: float, ticks: int = 5) -> None:
    for i in range(ticks):
        frac = i / (ticks - 1)
        anchor = "start" if i == 0 else ("end" if i == ticks - 1 else "middle")
        out.append(
            f'<text x="{left + pw * frac:.1f}" y="{y:.1f}" text-anchor="{anchor}" class="caxis">'
            f"{escape(clock(t0 + (t1 - t0) * frac, t1 - t0))}</text>"
        )


def time_chart(
    series: Mapping[str, Sequence[tuple[float, float]]],
    title: str,
    t0: float,
    t1: float,
    unit: str = "",
    step: bool = False,
    marks: Sequence[tuple[float, str]] = (),
    dashed: Mapping[str, Sequence[tuple[float, float]]] | None = None,
    ymax: float | None = None,
    width: int = 560,
    height: int = 200,
) -> str:
    """Lines over [t0, t1] (epoch seconds, shown as UTC); points outside are clipped to the frame."""
    left, right, top, bottom = 56, 120, 22, 26
    dashed = dashed or {}
    pts_all = [p for pts in (*series.values(), *dashed.values()) for p in pts if _finite(p[0]) and _finite(p[1])]
    out = [_open_svg(title, width, height), f'<text x="{left}" y="14" class="ctitle">{escape(title)}</text>']
    if not pts_all or not (_finite(t0) and _finite(t1)):
        out.append(f'<text x="{left}" y="{height // 2}" class="cnote">no data yet</text></svg>')
        return "".join(out)
    t1 = max(t1, t0 + 1)
    top_value = ymax or _nice_max(max(max(p[1] for p in pts_all), 0))
    pw, ph = width - left - right, height - top - bottom

    def xy(t: float, v: float) -> str:
        x = left + pw * (min(max(t, t0), t1) - t0) / (t1 - t0)
        y = top + ph * (1 - min(max(v, 0), top_value) / top_value)
        return f"{x:.1f},{y:.1f}"

    out.append(f'<rect x="{left}" y="{top}" width="{pw}" height="{ph}" class="cframe"/>')
    for frac in (0, 0.5, 1):
        out.append(
            f'<text x="{left - 4}" y="{top + ph * (1 - frac) + 4:.1f}" text-anchor="end" class="caxis">'
            f"{escape(human(top_value * frac, unit))}</text>"
        )
    _x_axis(out, left, pw, height - 8, t0, t1)
    legend = 0
    for i, (name, pts) in enumerate(series.items()):
        colour = PALETTE[i % len(PALETTE)]
        pts = [p for p in pts if _finite(p[0]) and _finite(p[1])]
        coords = []
        for j, (t, v) in enumerate(pts):
            if step and j:
                coords.append(xy(t, pts[j - 1][1]))
            coords.append(xy(t, v))
        top_seen = max((v for _, v in pts), default=0)
        out.append(
            f'<polyline class="series" data-points="{len(pts)}" data-max="{top_seen:g}" fill="none" '
            f'stroke="{colour}" '
            f'stroke-width="1.6" points="{" ".join(coords)}"><title>{escape(name)}</title></polyline>'
        )
        if len(pts) == 1:
            cx, cy = xy(*pts[0]).split(",")
            out.append(f'<circle cx="{cx}" cy="{cy}" r="2.5" fill="{colour}"/>')
        out.append(_legend(width - right + 8, top + 12 + 14 * legend, colour, name))
        legend += 1
    for name, pts in dashed.items():
        pts = [p for p in pts if _finite(p[0]) and _finite(p[1])]
        out.append(
            f'<polyline class="series dashed" data-points="{len(pts)}" '
            f'data-max="{max((v for _, v in pts), default=0):g}" fill="none" stroke="#555" '
            f'stroke-dasharray="4 3" stroke-width="1.2" points="{" ".join(xy(t, v) for t, v in pts)}"/>'
        )
        out.append(_legend(width - right + 8, top + 12 + 14 * legend, "#555", name))
        legend += 1
    for t, label in marks:
        if _finite(t) and t0 <= t <= t1:
            x = xy(t, 0).split(",")[0]
            out.append(
                f'<line class="mark" x1="{x}" y1="{top}" x2="{x}" y2="{top + ph}" stroke="#d62728" '
                f'stroke-dasharray="2 2"/><text x="{x}" y="{top + 10}" text-anchor="end" class="caxis">'
                f"{escape(label)}</text>"
            )
    out.append("</svg>")
    return "".join(out)


def _legend(x: float, y: float, colour: str, name: str) -> str:
    return (
        f'<rect x="{x}" y="{y - 8}" width="10" height="3" fill="{colour}"/>'
        f'<text x="{x + 14}" y="{y}" class="caxis">{escape(name[:18])}</text>'
    )


def timeline_chart(
    rows: Sequence[dict],
    title: str,
    t0: float,
    t1: float,
    total: int | None = None,
    width: int = 900,
    row_height: int = 12,
) -> str:
    """rows: {"label", "queued": (start, end) | None, "running": (start, end) | None, "end": state, "tip"}.

    One bar per row: the queued part pale, the running part in the colour of how it ended (END_COLOURS)."""
    left, right, top, bottom = 150, 110, 22, 26
    shown = list(rows)[:MAX_ROWS]
    more = (total if total is not None else len(rows)) - len(shown)
    heading = title + (f" (newest {len(shown)}; {more} more not drawn)" if more > 0 else "")
    height = max(top + bottom + max(len(shown), 1) * row_height, top + 14 * 6 + 4)  # room for the legend
    out = [_open_svg(title, width, height), f'<text x="{left}" y="14" class="ctitle">{escape(heading)}</text>']
    if not shown or not (_finite(t0) and _finite(t1)):
        out.append(f'<text x="{left}" y="{top + 10}" class="cnote">no workers yet</text></svg>')
        return "".join(out)
    t1 = max(t1, t0 + 1)
    pw = width - left - right

    def x(t) -> float:
        return left + pw * (min(max(t, t0), t1) - t0) / (t1 - t0)

    out.append(f'<rect x="{left}" y="{top}" width="{pw}" height="{len(shown) * row_height}" class="cframe"/>')
    _x_axis(out, left, pw, height - 8, t0, t1)
    for i, row in enumerate(shown):
        y = top + i * row_height
        out.append(
            f'<text x="{left - 4}" y="{y + row_height - 3}" text-anchor="end" class="caxis">'
            f"{escape(str(row['label'])[:28])}</text>"
        )
        tip = escape(str(row.get("tip", row["label"])))
        for part, colour in (("queued", QUEUED_COLOUR), ("running", END_COLOURS.get(str(row.get("end")), "#9467bd"))):
            span = row.get(part)
            if not span or not (_finite(span[0]) and _finite(span[1])):
                continue
            x0, x1 = x(span[0]), x(span[1])
            out.append(
                f'<rect class="seg {part}" x="{x0:.1f}" y="{y + 1}" width="{max(x1 - x0, 1.5):.1f}" '
                f'height="{row_height - 2}" fill="{colour}"><title>{tip}</title></rect>'
            )
    for j, (name, colour) in enumerate(
        (
            ("queued", QUEUED_COLOUR),
            *((k, END_COLOURS[k]) for k in ("running", "finished", "failed", "cancelled", "missing")),
        )
    ):
        out.append(_legend(width - right + 8, top + 12 + 14 * j, colour, name))
    out.append("</svg>")
    return "".join(out)


def grouped_bars(
    bins: Sequence[str],
    series: dict[str, Sequence[float]],
    title: str,
    width: int = 900,
    height: int = 200,
    unit: str = "",
) -> str:
    """A histogram: for each bin label, one bar per series (e.g. per queue), with a legend."""
    left, right, top, bottom = 40, 120, 22, 26
    out = [_open_svg(title, width, height), f'<text x="{left}" y="14" class="ctitle">{escape(title)}</text>']
    values = [v for vs in series.values() for v in vs if _finite(v)]
    if not bins or not values or max(values) <= 0:
        out.append(f'<text x="{left}" y="{height // 2}" class="cnote">no data yet</text></svg>')
        return "".join(out)
    top_value = _nice_max(max(values))
    pw, ph = width - left - right, height - top - bottom
    slot = pw / len(bins)
    n = max(len(series), 1)
    out.append(
        f'<rect x="{left}" y="{top}" width="{pw}" height="{ph}" class="cframe"/>'
        f'<text x="{left - 4}" y="{top + 4}" text-anchor="end" class="caxis">{escape(human(top_value, unit))}'
        f'</text><text x="{left - 4}" y="{top + ph}" text-anchor="end" class="caxis">0</text>'
    )
    for b, label in enumerate(bins):
        out.append(
            f'<text x="{left + slot * (b + 0.5):.1f}" y="{height - 8}" text-anchor="middle" class="caxis">'
            f"{escape(label)}</text>"
        )
    for s, (name, vs) in enumerate(series.items()):
        colour = PALETTE[s % len(PALETTE)]
        for b, v in enumerate(vs[: len(bins)]):
            v = v if _finite(v) and v > 0 else 0
            h = ph * v / top_value
            x = left + slot * b + slot * 0.1 + slot * 0.8 * s / n
            out.append(
                f'<rect class="bin" x="{x:.1f}" y="{top + ph - h:.1f}" width="{slot * 0.8 / n:.1f}" '
                f'height="{h:.1f}" fill="{colour}"><title>{escape(name)} {escape(bins[b])}: {v:g}</title>'
                f"</rect>"
            )
        out.append(_legend(width - right + 8, top + 12 + 14 * s, colour, name))
    out.append("</svg>")
    return "".join(out)
