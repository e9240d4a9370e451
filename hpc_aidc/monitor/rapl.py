"""CPU package/DRAM energy from RAPL via the powercap sysfs. Counters are read at the start and end of a
job; when they are missing or unreadable (energy_uj is root-only on current kernels) the result is None,
which records mean "unavailable", never 0. RAPL is per socket: on a shared node it is node-wide energy."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

POWERCAP = Path("/sys/class/powercap")


@dataclass(frozen=True)
class RaplReading:
    """energy_uj per domain ("package-0", "package-0/dram", ...) and each domain's wrap range."""

    energy_uj: Mapping[str, int]
    max_uj: Mapping[str, int]


def read_rapl(root: Path = POWERCAP) -> RaplReading | None:
    """All intel-rapl zones under root, or None when there are none or any cannot be read."""
    try:
        zones = sorted(p for p in root.iterdir() if p.name.startswith("intel-rapl:"))
    except OSError:
        return None
    energy: dict[str, int] = {}
    limit: dict[str, int] = {}
    for zone in zones:
        try:
            name = (zone / "name").read_text().strip()
            parts = zone.name.split(":")
            if len(parts) > 2:  # a subzone (core, uncore, dram): name it under its package
                parent = (root / ":".join(parts[:2]) / "name").read_text().strip()
                name = f"{parent}/{name}"
            energy[name] = int((zone / "energy_uj").read_text())
            limit[name] = int((zone / "max_energy_range_uj").read_text())
        except (OSError, ValueError):
            return None
    return RaplReading(energy, limit) if energy else None


def rapl_delta_j(start: RaplReading | None, end: RaplReading | None) -> dict[str, float] | None:
    """Joules per domain between two readings, allowing one counter wrap; None if either is missing."""
    if start is None or end is None:
        return None
    out: dict[str, float] = {}
    for name, first in start.energy_uj.items():
        if name not in end.energy_uj:
            continue
        last = end.energy_uj[name]
        delta = last - first
        if delta < 0:
            delta += end.max_uj.get(name, 0)
        out[name] = delta / 1e6
    return out


def package_j(domains: Mapping[str, float] | None) -> float | None:
    """Energy of the packages plus DRAM (subzones other than dram are already inside a package)."""
    if domains is None:
        return None
    return sum(v for k, v in domains.items() if "/" not in k or k.endswith("/dram"))
