"""How reports print numbers (pure): fixed decimals from 1 up, 3 significant digits below 1, so a
project with 0.008 GPU-hours reads "0.008", never "0.0"; None (no data) reads "unknown"."""

from __future__ import annotations

import math

UNKNOWN = "unknown"
SIGNIFICANT = 3


def num(value: float | None, digits: int = 1) -> str:
    """1234.5 -> '1,234.5'; 0.008 -> '0.008'; 0.5 -> '0.5'; 0 -> '0.0'; None -> 'unknown'."""
    if value is None:
        return UNKNOWN
    size = abs(value)
    if size == 0 or size >= 1 or not math.isfinite(size):
        return f"{value:,.{digits}f}"
    decimals = max(digits, SIGNIFICANT - 1 - math.floor(math.log10(size)))
    text = f"{value:.{decimals}f}"
    if decimals > digits:  # drop the zeros that significant digits added, down to the fixed decimals
        head, frac = text.split(".")
        frac = frac.rstrip("0").ljust(digits, "0")
        text = f"{head}.{frac}" if frac else head
    return text


def pct(share: float) -> str:
    """0.42 -> '42%'; 0.003 -> '0.3%' (not '0%'); 0 -> '0%'."""
    if 0 < abs(share) < 0.01:
        return f"{num(share * 100, 0)}%"
    return f"{share:.0%}"
