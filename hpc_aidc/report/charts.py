"""Charts as inline SVG strings (pure; no JavaScript, no CDN). Every text goes through html.escape.
Charts scale with their container (viewBox + width 100%), so they read on a laptop and a phone."""

from __future__ import annotations

import html
from collections.abc import Sequence

from hpc_aidc.report.numbers import num

_W, _H = 640, 220
_PAD_L, _PAD_R, _PAD_T, _PAD_B = 56, 12, 16, 40
# Axis and value texts are 12px (site.css); a wide character of a sans-serif face is at most ~0.62em,
# so 7.5px a character bounds a label's width without measuring fonts.
_CHAR_W = 7.5


def _text_w(text: str) -> float:
    return len(text) * _CHAR_W


def _fmt(value: float) -> str:
    if value == 0:
        return "0"
    if abs(value) >= 1000:
        return f"{value:,.0f}"
    if abs(value) >= 10:
        return f"{value:.0f}"
    if abs(value) >= 1:
        return f"{value:.1f}"
    return num(value, 0)


def _clip(label: str, chars: int) -> str:
    chars = max(chars, 2)
    return label if len(label) <= chars else label[:chars - 1] + "…"


def _short(label: str, chars: int = 10) -> str:
    """'2026-11-24' -> '11-24' (dates), else at most `chars` characters."""
    if len(label) == 10 and label[4] == "-" and label[:4].isdigit():
        label = label[5:]
    return _clip(label, chars)


def bar_chart(labels: Sequence[str], values: Sequence[float], *, title: str, unit: str) -> str:
    """Vertical bars (usage over time); at most ~12 x-axis labels are printed."""
    esc = html.escape
    n = len(values)
    top = max(values, default=0.0) or 1.0
    pad_l = max(_PAD_L, int(_text_w(_fmt(top))) + 12)
    inner_w = _W - pad_l - _PAD_R
    inner_h = _H - _PAD_T - _PAD_B
    step = inner_w / max(n, 1)
    every = max(1, (n + 11) // 12)
    slot = int(step * every / _CHAR_W) - 1  # characters that fit between two printed labels
    parts = [f'<svg class="chart" viewBox="0 0 {_W} {_H}" role="img" aria-label="{esc(title)}" '
             f'xmlns="http://www.w3.org/2000/svg"><title>{esc(title)}</title>']
    for frac in (0.0, 0.5, 1.0):
        y = _PAD_T + inner_h * (1 - frac)
        parts.append(f'<line class="grid" x1="{pad_l}" y1="{y:.1f}" x2="{_W - _PAD_R}" y2="{y:.1f}"/>'
                     f'<text class="axis" x="{pad_l - 6}" y="{y + 4:.1f}" text-anchor="end">'
                     f'{esc(_fmt(top * frac))}</text>')
    for i, (label, value) in enumerate(zip(labels, values, strict=True)):
        h = inner_h * (value / top)
        x = pad_l + i * step
        parts.append(f'<rect class="bar" x="{x + step * 0.1:.1f}" y="{_PAD_T + inner_h - h:.1f}" '
                     f'width="{max(step * 0.8, 1):.1f}" height="{h:.1f}"><title>{esc(label)}: '
                     f'{esc(_fmt(value))} {esc(unit)}</title></rect>')
        if i % every == 0:
            text = _short(label, min(10, slot))
            half = _text_w(text) / 2
            centre = min(max(x + step / 2, half + 2), _W - half - 2)  # never past either edge
            parts.append(f'<text class="axis" x="{centre:.1f}" y="{_H - _PAD_B + 16}" '
                         f'text-anchor="middle">{esc(text)}</text>')
    parts.append(f'<text class="axis" x="{pad_l}" y="{_H - 6}">{esc(unit)}</text></svg>')
    return "".join(parts)


def hbar_chart(labels: Sequence[str], values: Sequence[float], *, title: str, unit: str) -> str:
    """Horizontal bars (top users, most energy-hungry jobs)."""
    esc = html.escape
    row = 26
    height = max(row * len(values), row) + 8
    top = max(values, default=0.0) or 1.0
    names = [_clip(label, 22) for label in labels]
    tags = [f"{_fmt(value)} {unit}" for value in values]
    # room on the left for the longest name and on the right for the longest value, so none is clipped
    label_w = int(min(max((_text_w(t) for t in names), default=0.0), 170)) + 14
    names = [_clip(t, int((label_w - 12) / _CHAR_W)) for t in names]
    inner_w = _W - label_w - 6 - int(max((_text_w(t) for t in tags), default=0.0)) - 8
    parts = [f'<svg class="chart" viewBox="0 0 {_W} {height}" role="img" aria-label="{esc(title)}" '
             f'xmlns="http://www.w3.org/2000/svg"><title>{esc(title)}</title>']
    for i, (name, tag, value) in enumerate(zip(names, tags, values, strict=True)):
        y = 4 + i * row
        w = inner_w * value / top
        parts.append(f'<text class="axis" x="{label_w - 8}" y="{y + 17}" text-anchor="end">{esc(name)}</text>'
                     f'<rect class="bar" x="{label_w}" y="{y + 4}" width="{max(w, 1):.1f}" height="{row - 8}"/>'
                     f'<text class="value" x="{label_w + w + 6:.1f}" y="{y + 17}">{esc(tag)}</text>')
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
