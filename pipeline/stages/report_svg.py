"""Inline SVG plots for the static report: bar charts (linear and log scale), stacked bars and a world scatter map.

Every function returns one self-contained ``<svg>`` string (no scripts, no external references).
Each bar carries ``data-label`` and ``data-count`` (stacked bars: one ``data-<segment>`` per segment)
so tests and readers can take the numbers back out of the page.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from html import escape

BAR_HEIGHT = 18
BAR_GAP = 4
LABEL_WIDTH = 260
VALUE_WIDTH = 70
FONT = "font-family='system-ui, sans-serif' font-size='12'"
PALETTE = ("#2b7bb9", "#d9534f", "#f0ad4e", "#5cb85c", "#8e6cbf", "#777777")


def _attr(value: object) -> str:
    return escape(str(value), quote=True)


def _fmt(n: float) -> str:
    return f"{int(n):,}" if float(n).is_integer() else f"{n:,.3g}"


def _clip(label: str, limit: int = 40) -> str:
    return label if len(label) <= limit else label[: limit - 1] + "…"


def _frame(width: int, height: int, title: str, body: list[str], kind: str, attrs: str = "") -> str:
    return (
        f"<svg xmlns='http://www.w3.org/2000/svg' class='chart' data-kind='{kind}' {attrs} width='{width}' "
        f"height='{height}' viewBox='0 0 {width} {height}' role='img' aria-label='{_attr(title)}'>"
        f"<title>{escape(title)}</title>" + "".join(body) + "</svg>"
    )


def log_position(value: float, top: float) -> float:
    """Fraction of a log10 axis from 1 to ``top`` where ``value`` ends: 0 for ``value <= 0``; a count
    of 1 (log 0) still gets a small sliver so it is not mistaken for an empty bar."""
    if value <= 0:
        return 0.0
    span = math.log10(max(top, 10.0))
    return max(0.02, math.log10(max(value, 1.0)) / span)


def nice_ticks(largest: float, target: int = 4) -> list[float]:
    """Axis ticks from 0 in steps of 1, 2 or 5 times a power of ten, the last one >= ``largest``."""
    if largest <= 0:
        return [0.0, 1.0]
    raw = largest / target
    magnitude = 10.0 ** math.floor(math.log10(raw))
    step = next(m * magnitude for m in (1, 2, 5, 10) if m * magnitude >= raw)
    count = math.ceil(largest / step - 1e-9)
    return [i * step for i in range(count + 1)]


def _log_top(largest: float) -> float:
    return 10.0 ** max(1, math.ceil(math.log10(max(largest, 1.0))))


def bar_chart(
    items: Sequence[tuple[str, float]],
    title: str,
    log: bool = False,
    width: int = 760,
    color: str = PALETTE[0],
) -> str:
    """Horizontal bars, one per ``(label, count)``, in the given order; ``log`` uses a log10 axis
    with a tick at every power of ten (a log axis needs counts >= 1 to show a bar)."""
    plot = width - LABEL_WIDTH - VALUE_WIDTH
    largest = max((v for _, v in items), default=0)
    ticks = [] if log else nice_ticks(largest)
    top = _log_top(largest) if log else ticks[-1]
    axis_h = 20
    height = axis_h + len(items) * (BAR_HEIGHT + BAR_GAP) + 8
    body: list[str] = []
    if log:
        decades = int(round(math.log10(top)))
        for d in range(decades + 1):
            x = LABEL_WIDTH + plot * d / decades
            body.append(f"<line x1='{x:.1f}' y1='{axis_h - 4}' x2='{x:.1f}' y2='{height - 4}' stroke='#ddd'/>")
            body.append(f"<text x='{x:.1f}' y='12' text-anchor='middle' {FONT} fill='#555'>{_fmt(10 ** d)}</text>")
    else:
        for tick in ticks:
            x = LABEL_WIDTH + plot * tick / top
            body.append(f"<line x1='{x:.1f}' y1='{axis_h - 4}' x2='{x:.1f}' y2='{height - 4}' stroke='#ddd'/>")
            body.append(f"<text x='{x:.1f}' y='12' text-anchor='middle' {FONT} fill='#555'>{_fmt(tick)}</text>")
    for i, (label, value) in enumerate(items):
        y = axis_h + i * (BAR_HEIGHT + BAR_GAP)
        frac = log_position(value, top) if log else value / top
        w = max(0.0, plot * frac)
        body.append(
            f"<text x='{LABEL_WIDTH - 6}' y='{y + 13}' text-anchor='end' {FONT}>{escape(_clip(str(label)))}</text>"
            f"<rect class='bar' x='{LABEL_WIDTH}' y='{y}' width='{w:.1f}' height='{BAR_HEIGHT}' fill='{color}' "
            f"data-label='{_attr(label)}' data-count='{_attr(value)}'><title>{escape(str(label))}: {_fmt(value)}</title></rect>"
            f"<text x='{LABEL_WIDTH + w + 4:.1f}' y='{y + 13}' {FONT} fill='#333'>{_fmt(value)}</text>"
        )
    return _frame(width, height, title, body, "log-bar" if log else "bar")


def stacked_bar_chart(
    rows: Sequence[tuple[str, Mapping[str, float]]],
    segments: Sequence[str],
    title: str,
    width: int = 760,
    colors: Sequence[str] = PALETTE,
) -> str:
    """One horizontal bar per row split into ``segments`` (e.g. ok / failed), with a legend."""
    plot = width - LABEL_WIDTH - VALUE_WIDTH
    largest = max((sum(v.get(s, 0) for s in segments) for _, v in rows), default=0) or 1
    legend_h = 22
    height = legend_h + len(rows) * (BAR_HEIGHT + BAR_GAP) + 8
    body: list[str] = []
    for j, seg in enumerate(segments):
        x = LABEL_WIDTH + j * 110
        body.append(
            f"<rect x='{x}' y='4' width='12' height='12' fill='{colors[j % len(colors)]}'/>"
            f"<text x='{x + 16}' y='14' {FONT}>{escape(seg)}</text>"
        )
    for i, (label, values) in enumerate(rows):
        y = legend_h + i * (BAR_HEIGHT + BAR_GAP)
        data = " ".join(f"data-{_attr(s)}='{_attr(values.get(s, 0))}'" for s in segments)
        total = sum(values.get(s, 0) for s in segments)
        body.append(
            f"<text x='{LABEL_WIDTH - 6}' y='{y + 13}' text-anchor='end' {FONT}>{escape(_clip(str(label)))}</text>"
            f"<g class='stack' data-label='{_attr(label)}' data-count='{_attr(total)}' {data}>"
        )
        x = float(LABEL_WIDTH)
        for j, seg in enumerate(segments):
            v = values.get(seg, 0)
            w = plot * v / largest
            if w > 0:
                body.append(
                    f"<rect x='{x:.1f}' y='{y}' width='{w:.1f}' height='{BAR_HEIGHT}' fill='{colors[j % len(colors)]}'>"
                    f"<title>{escape(str(label))} {escape(seg)}: {_fmt(v)}</title></rect>"
                )
            x += w
        body.append(f"</g><text x='{x + 4:.1f}' y='{y + 13}' {FONT} fill='#333'>{_fmt(total)}</text>")
    return _frame(width, height, title, body, "stacked-bar")


def project(lat: float, lon: float, width: float, height: float) -> tuple[float, float]:
    """Equirectangular projection: longitude -180..180 to x 0..width, latitude 90..-90 to y 0..height."""
    return (lon + 180.0) / 360.0 * width, (90.0 - lat) / 180.0 * height


def world_map(
    points: Sequence[tuple[float, float]],
    title: str,
    total: int | None = None,
    width: int = 720,
    step: int = 30,
) -> str:
    """Coordinates as dots on an equirectangular frame with a graticule every ``step`` degrees.

    ``points`` are ``(latitude, longitude)``; ``total`` is how many records have coordinates when
    only a sample is drawn. No coastlines: the page stays offline and small."""
    height = width // 2
    body = [f"<rect x='0' y='0' width='{width}' height='{height}' fill='#eef4f8' stroke='#99a'/>"]
    for lon in range(-180 + step, 180, step):
        x, _ = project(0, lon, width, height)
        stroke = "#aab" if lon == 0 else "#d0d8e0"
        body.append(f"<line class='graticule' x1='{x:.1f}' y1='0' x2='{x:.1f}' y2='{height}' stroke='{stroke}'/>")
    for lat in range(-90 + step, 90, step):
        _, y = project(lat, 0, width, height)
        stroke = "#aab" if lat == 0 else "#d0d8e0"
        body.append(f"<line class='graticule' x1='0' y1='{y:.1f}' x2='{width}' y2='{y:.1f}' stroke='{stroke}'/>")
        body.append(f"<text x='3' y='{y - 2:.1f}' font-size='9' fill='#778'>{lat}°</text>")
    dots = []
    for lat, lon in points:
        x, y = project(lat, lon, width, height)
        dots.append(f"<circle cx='{x:.1f}' cy='{y:.1f}' r='2.5'/>")
    body.append(f"<g class='points' fill='{PALETTE[1]}' fill-opacity='0.6'>{''.join(dots)}</g>")
    shown = len(points)
    attrs = f"data-count='{shown}' data-total='{total if total is not None else shown}'"
    return _frame(width, height, title, body, "map", attrs)
