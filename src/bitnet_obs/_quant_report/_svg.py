"""Small inline-SVG charts for the HTML report: no script, no fonts or styles from the network.

Each point and bar carries a ``<title>`` (the browser shows it as a tooltip), so the page stays
a static file that can be attached to a ticket and opened anywhere.
"""

from __future__ import annotations

import html
import math
from collections.abc import Sequence

__all__ = ["bar_chart", "line_chart", "stacked_bars"]

WIDTH, HEIGHT = 960, 280
_LEFT, _RIGHT, _TOP, _BOTTOM = 64, 130, 34, 40
_AXIS = "#444444"
_GRID = "#e4e4e4"

Point = tuple[float, float, str]  # x, y, tooltip


def _e(text: object) -> str:
    return html.escape(str(text), quote=True)


def _nice_step(span: float, ticks: int = 5) -> float:
    raw = span / ticks if span > 0 else 1.0
    power = 10.0 ** math.floor(math.log10(raw))
    for mult in (1, 2, 2.5, 5, 10):
        if raw <= mult * power:
            return mult * power
    return 10 * power  # pragma: no cover


def _range(values: Sequence[float], floor: float | None = None) -> tuple[float, float, float]:
    lo, hi = min(values), max(values)
    if floor is not None:
        lo = min(lo, floor)
    if hi - lo < 1e-12:
        lo, hi = lo - 0.5, hi + 0.5
    step = _nice_step(hi - lo)
    return math.floor(lo / step) * step, math.ceil(hi / step) * step, step


def _fmt(v: float) -> str:
    return f"{v:.4g}"


class _Frame:
    """Plot area, scales, axes and grid shared by the charts."""

    def __init__(
        self, title: str, y_label: str, y: tuple[float, float, float], x: tuple[float, float]
    ) -> None:
        self.y_lo, self.y_hi, self.y_step = y
        self.x_lo, self.x_hi = x
        self.w = WIDTH - _LEFT - _RIGHT
        self.h = HEIGHT - _TOP - _BOTTOM
        self.parts = [
            f'<svg xmlns="http://www.w3.org/2000/svg" width="{WIDTH}" height="{HEIGHT}" '
            f'viewBox="0 0 {WIDTH} {HEIGHT}" role="img" aria-label="{_e(title)}">',
            f'<rect width="{WIDTH}" height="{HEIGHT}" fill="#ffffff"/>',
            f'<text x="{_LEFT}" y="20" font-size="14" font-weight="bold">{_e(title)}</text>',
        ]
        tick = self.y_lo
        while tick <= self.y_hi + self.y_step / 2:
            py = self.py(tick)
            self.parts.append(
                f'<line x1="{_LEFT}" y1="{py:.1f}" x2="{_LEFT + self.w}" y2="{py:.1f}" '
                f'stroke="{_GRID}"/><text x="{_LEFT - 6}" y="{py + 4:.1f}" font-size="11" '
                f'text-anchor="end">{_e(_fmt(tick))}</text>'
            )
            tick += self.y_step
        self.parts.append(
            f'<text x="14" y="{_TOP + self.h / 2:.1f}" font-size="11" text-anchor="middle" '
            f'transform="rotate(-90 14 {_TOP + self.h / 2:.1f})">{_e(y_label)}</text>'
            f'<line x1="{_LEFT}" y1="{_TOP}" x2="{_LEFT}" y2="{_TOP + self.h}" stroke="{_AXIS}"/>'
            f'<line x1="{_LEFT}" y1="{_TOP + self.h}" x2="{_LEFT + self.w}" y2="{_TOP + self.h}" '
            f'stroke="{_AXIS}"/>'
        )

    def px(self, x: float) -> float:
        span = self.x_hi - self.x_lo
        return _LEFT + (self.w * (x - self.x_lo) / span if span else self.w / 2)

    def py(self, y: float) -> float:
        return _TOP + self.h * (1 - (y - self.y_lo) / (self.y_hi - self.y_lo))

    def x_label(self, x: float, text: str) -> None:
        self.parts.append(
            f'<text x="{self.px(x):.1f}" y="{_TOP + self.h + 16}" font-size="11" '
            f'text-anchor="middle">{_e(text)}</text>'
        )

    def legend(self, items: Sequence[tuple[str, str]]) -> None:
        for i, (label, colour) in enumerate(items):
            y = _TOP + 8 + 18 * i
            x = WIDTH - _RIGHT + 14
            self.parts.append(
                f'<rect x="{x}" y="{y - 9}" width="12" height="12" fill="{colour}"/>'
                f'<text x="{x + 18}" y="{y + 1}" font-size="12">{_e(label)}</text>'
            )

    def svg(self) -> str:
        return "".join(self.parts) + "</svg>"


def line_chart(
    title: str,
    y_label: str,
    series: Sequence[tuple[str, str, Sequence[Point]]],
    x_ticks: Sequence[tuple[float, str]],
) -> str:
    """One line per series (label, colour, points), points marked and titled."""
    ys = [p[1] for _, _, pts in series for p in pts]
    xs = [p[0] for _, _, pts in series for p in pts] or [0.0]
    frame = _Frame(title, y_label, _range(ys or [0.0]), (min(xs), max(xs)))
    for x, text in x_ticks:
        frame.x_label(x, text)
    for _, colour, pts in series:
        if len(pts) > 1:
            path = " ".join(f"{frame.px(x):.1f},{frame.py(y):.1f}" for x, y, _ in pts)
            frame.parts.append(
                f'<polyline points="{path}" fill="none" stroke="{colour}" stroke-width="2"/>'
            )
        for x, y, tip in pts:
            frame.parts.append(
                f'<circle cx="{frame.px(x):.1f}" cy="{frame.py(y):.1f}" r="4" fill="{colour}">'
                f"<title>{_e(tip)}</title></circle>"
            )
    frame.legend([(label, colour) for label, colour, _ in series])
    return frame.svg()


def stacked_bars(
    title: str,
    y_label: str,
    bars: Sequence[tuple[str, Sequence[float]]],
    parts: Sequence[tuple[str, str]],
    x_ticks: Sequence[tuple[float, str]],
) -> str:
    """One bar per item, stacked from *parts* (label, colour); values are fractions of 1."""
    frame = _Frame(title, y_label, (0.0, 1.0, 0.25), (0.0, float(max(1, len(bars)))))
    width = frame.w / max(1, len(bars))
    for i, (tip, values) in enumerate(bars):
        bottom = 0.0
        for (label, colour), value in zip(parts, values, strict=True):
            y0, y1 = frame.py(bottom), frame.py(bottom + value)
            frame.parts.append(
                f'<rect x="{frame.px(i) + 0.5:.1f}" y="{y1:.1f}" width="{max(width - 1, 1):.1f}" '
                f'height="{y0 - y1:.1f}" fill="{colour}"><title>{_e(tip)}: {_e(label)} '
                f"{value:.3f}</title></rect>"
            )
            bottom += value
    for x, text in x_ticks:
        frame.x_label(x + 0.5, text)
    frame.legend(parts)
    return frame.svg()


def bar_chart(
    title: str,
    y_label: str,
    bars: Sequence[tuple[str, float, str]],
    x_ticks: Sequence[tuple[float, str]],
    threshold: float | None = None,
    legend: Sequence[tuple[str, str]] = (),
) -> str:
    """One bar per item (tooltip, value, colour); zero bars stay visible as a thin mark."""
    values = [v for _, v, _ in bars]
    floor_top = max([*values, threshold or 0.0, 1e-9])
    frame = _Frame(title, y_label, _range([0.0, floor_top], 0.0), (0.0, float(max(1, len(bars)))))
    width = frame.w / max(1, len(bars))
    base = frame.py(0.0)
    for i, (tip, value, colour) in enumerate(bars):
        top = min(frame.py(value), base - 3)
        frame.parts.append(
            f'<rect x="{frame.px(i) + 0.5:.1f}" y="{top:.1f}" width="{max(width - 1, 1):.1f}" '
            f'height="{base - top:.1f}" fill="{colour}"><title>{_e(tip)}</title></rect>'
        )
    if threshold is not None:
        ty = frame.py(threshold)
        frame.parts.append(
            f'<line x1="{_LEFT}" y1="{ty:.1f}" x2="{_LEFT + frame.w}" y2="{ty:.1f}" '
            f'stroke="{_AXIS}" stroke-dasharray="4 3"/>'
        )
    for x, text in x_ticks:
        frame.x_label(x + 0.5, text)
    frame.legend(legend)
    return frame.svg()
