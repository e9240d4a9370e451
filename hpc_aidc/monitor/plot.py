"""A small power-over-time chart for the terminal (pure): bins each node's (time, watts) points into
columns over the common time span, sums the nodes per column and draws eighth-block characters."""

from __future__ import annotations

import math
from collections.abc import Sequence

BLOCKS = " ▁▂▃▄▅▆▇█"


Points = Sequence[tuple[float, float]]


def bin_power(nodes: Sequence[Points], width: int) -> list[float | None]:
    """Per column: the sum over nodes of each node's mean watts in it; None where no node has data."""
    finite = [[(t, w) for t, w in pts if not math.isnan(w)] for pts in nodes]
    times = [t for pts in finite for t, _ in pts]
    if not times or width < 1:
        return []
    t0 = min(times)
    span = max(times) - t0 or 1.0
    total: list[float | None] = [None] * width
    for pts in finite:
        sums = [0.0] * width
        counts = [0] * width
        for t, w in pts:
            col = min(width - 1, int((t - t0) / span * width))
            sums[col] += w
            counts[col] += 1
        for col in range(width):
            if counts[col]:
                total[col] = (total[col] or 0.0) + sums[col] / counts[col]
    return total


def power_chart(nodes: Sequence[Points], width: int = 60, height: int = 5) -> list[str]:
    # No more columns than samples, so a short job draws a solid chart rather than a comb.
    columns = bin_power(nodes, max(1, min(width, max((len(p) for p in nodes), default=1))))
    values = [v for v in columns if v is not None]
    if not values:
        return ["(no power samples)"]
    top = max(values) or 1.0
    rows = []
    for level in range(height, 0, -1):
        line = ""
        for v in columns:
            eighths = 0 if v is None else round(v / top * height * 8) - (level - 1) * 8
            line += BLOCKS[max(0, min(8, eighths))]
        label = f"{top:7.0f} W" if level == height else ("      0 W" if level == 1 else "")
        rows.append(f"{line} {label}".rstrip())
    return rows
