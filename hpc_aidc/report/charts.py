"""Charts as inline SVG strings (pure; no JavaScript, no CDN). Every text goes through html.escape.
Charts scale with their container (viewBox + width 100%), so they read on a laptop and a phone."""

from __future__ import annotations

import html
from collections.abc import Sequence

_W, _H = 640, 220
_PAD_L, _PAD_R, _PAD_T, _PAD_B = 56, 12, 16, 40


def _fmt(value: float) -> str:
    if value == 0:
        return "0"
    if abs(value) >= 1000:
        return f"{value:,.0f}"
    if abs(value) >= 10:
        return f"{value:.0f}"
    if abs(value) >= 1:
        return f"{value:.1f}"
    return f"{value:.3g}"


def _short(label: str) -> str:
    """'2026-11-24' -> '11-24' (dates), else the first 10 characters."""
    if len(label) == 10 and label[4] == "-" and label[:4].isdigit():
        return label[5:]
    return label if len(label) <= 10 else label[:9] + "…"


def bar_chart(labels: Sequence[str], values: Sequence[float], *, title: str, unit: str) -> str:
    """Vertical bars (usage over time); at most ~12 x-axis labels are printed."""
    esc = html.escape
    n = len(values)
    top = max(values, default=0.0) or 1.0
    inner_w = _W - _PAD_L - _PAD_R
    inner_h = _H - _PAD_T - _PAD_B
    step = inner_w / max(n, 1)
    every = max(1, (n + 11) // 12)
    parts = [f'<svg class="chart" viewBox="0 0 {_W} {_H}" role="img" aria-label="{esc(title)}" '
             f'xmlns="http://www.w3.org/2000/svg"><title>{esc(title)}</title>']
    for frac in (0.0, 0.5, 1.0):
        y = _PAD_T + inner_h * (1 - frac)
        parts.append(f'<line class="grid" x1="{_PAD_L}" y1="{y:.1f}" x2="{_W - _PAD_R}" y2="{y:.1f}"/>'
                     f'<text class="axis" x="{_PAD_L - 6}" y="{y + 4:.1f}" text-anchor="end">'
                     f'{esc(_fmt(top * frac))}</text>')
    for i, (label, value) in enumerate(zip(labels, values, strict=True)):
        h = inner_h * (value / top)
        x = _PAD_L + i * step
        parts.append(f'<rect class="bar" x="{x + step * 0.1:.1f}" y="{_PAD_T + inner_h - h:.1f}" '
                     f'width="{max(step * 0.8, 1):.1f}" height="{h:.1f}"><title>{esc(label)}: '
                     f'{esc(_fmt(value))} {esc(unit)}</title></rect>')
        if i % every == 0:
            parts.append(f'<text class="axis" x="{x + step / 2:.1f}" y="{_H - _PAD_B + 16}" '
                         f'text-anchor="middle">{esc(_short(label))}</text>')
    parts.append(f'<text class="axis" x="{_PAD_L}" y="{_H - 6}">{esc(unit)}</text></svg>')
    return "".join(parts)


def hbar_chart(labels: Sequence[str], values: Sequence[float], *, title: str, unit: str) -> str:
    """Horizontal bars (top users, most energy-hungry jobs)."""
    esc = html.escape
    row = 26
    height = max(row * len(values), row) + 8
    label_w = 150
    inner_w = _W - label_w - 90
    top = max(values, default=0.0) or 1.0
    parts = [f'<svg class="chart" viewBox="0 0 {_W} {height}" role="img" aria-label="{esc(title)}" '
             f'xmlns="http://www.w3.org/2000/svg"><title>{esc(title)}</title>']
    for i, (label, value) in enumerate(zip(labels, values, strict=True)):
        y = 4 + i * row
        w = inner_w * value / top
        parts.append(f'<text class="axis" x="{label_w - 8}" y="{y + 17}" text-anchor="end">{esc(label[:22])}</text>'
                     f'<rect class="bar" x="{label_w}" y="{y + 4}" width="{max(w, 1):.1f}" height="{row - 8}"/>'
                     f'<text class="value" x="{label_w + w + 6:.1f}" y="{y + 17}">{esc(_fmt(value))} '
                     f'{esc(unit)}</text>')
    parts.append("</svg>")
    return "".join(parts)


def sparkline(values: Sequence[float], *, title: str) -> str:
    """A small trend line for tables."""
    esc = html.escape
    w, h = 120, 28
    top = max(values, default=0.0) or 1.0
    n = len(values)
    if n == 0:
        return ""
    step = w / max(n - 1, 1)
    points = " ".join(f"{i * step:.1f},{h - 2 - (h - 4) * v / top:.1f}" for i, v in enumerate(values))
    return (f'<svg class="spark" viewBox="0 0 {w} {h}" role="img" aria-label="{esc(title)}" '
            f'xmlns="http://www.w3.org/2000/svg"><title>{esc(title)}</title>'
            f'<polyline points="{points}" fill="none"/></svg>')
