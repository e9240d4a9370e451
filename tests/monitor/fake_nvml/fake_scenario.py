"""Scenarios for the fake NVML (tests/monitor/fake_nvml/fake_nvml.c) and their exact energy.

A scenario is a text file, one `key value` per line, `#` comments:
  driver 550.54.15-fake      the driver version the library reports ("fake" marks output simulated)
  start 1700000000.0         unix time where the curves' t=0 is
  period 20                  optional: all curves repeat every `period` seconds
  init_error 9               optional: nvmlInit fails with this NVML error code (9: driver not loaded)
  device                     starts a device block; keys below apply to the last device
  name / uuid / pci          identity (defaults: FAKE GPU, GPU-...-<i>, 00000000:<18+i>:00.0)
  minor N                    the /dev/nvidiaN minor number (default: the NVML index; Slurm numbers by it)
  energy_counter 0|1         whether nvmlDeviceGetTotalEnergyConsumption works (default 1)
  power 0:100 10:400 20:100  piecewise-linear curve t:value (a single number is a constant);
                             also util, memutil, mem_used_mib, temp, sm_clock
  mem_total_mib, throttle (bitmask), ecc_uncorrected, ecc_corrected, retired_pages,
  remap_pending, remap_uncorrectable, mig N (N MIG instances), counter_offset_mj
  throttle_for S             the throttle bits show only for S seconds after nvmlInit (a passing slowdown)
  xid N                      an Xid error the driver reports once, as an event, to a process that listens
The counter is floor(offset + 1000 * integral of power from start), in mJ."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from itertools import pairwise
from pathlib import Path

Curve = tuple[tuple[float, float], ...]


@dataclass(frozen=True)
class FakeDevice:
    power: Curve
    name: str = "NVIDIA H100 80GB HBM3 (simulated)"
    uuid: str | None = None
    pci: str | None = None
    energy_counter: bool = True
    util: Curve = ((0.0, 50.0),)
    extra: dict[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class Scenario:
    devices: Sequence[FakeDevice]
    start: float = 0.0
    period: float | None = None
    driver: str = "550.54.15-fake"
    init_error: int | None = None
    devices_dir: str | None = None  # the node's device files DIR/nvidia<minor>: NVML lists those this process opens

    def text(self) -> str:
        lines = [f"driver {self.driver}", f"start {self.start!r}"]
        if self.devices_dir:
            lines.append(f"devices {self.devices_dir}")
        if self.period:
            lines.append(f"period {self.period!r}")
        if self.init_error is not None:
            lines.append(f"init_error {self.init_error}")
        for d in self.devices:
            lines += ["device", f"name {d.name}", f"energy_counter {int(d.energy_counter)}",
                      "power " + " ".join(f"{t!r}:{v!r}" for t, v in d.power),
                      "util " + " ".join(f"{t!r}:{v!r}" for t, v in d.util)]
            if d.uuid:
                lines.append(f"uuid {d.uuid}")
            if d.pci:
                lines.append(f"pci {d.pci}")
            lines += [f"{k} {v}" for k, v in d.extra.items()]
        return "\n".join(lines) + "\n"

    @classmethod
    def parse(cls, text: str) -> Scenario:
        """The parts of a scenario file that set energy: start, period, each device's power curve."""
        top: dict[str, str] = {}
        powers: list[Curve] = []
        for raw in text.splitlines():
            key, _, value = raw.split("#", 1)[0].strip().partition(" ")
            if key == "device":
                powers.append(((0.0, 0.0),))
            elif key == "power" and powers:
                pts = [p.split(":") if ":" in p else ("0", p) for p in value.split()]
                powers[-1] = tuple((float(t), float(v)) for t, v in pts)
            elif not powers and key:
                top[key] = value.strip()
        return cls([FakeDevice(power=p) for p in powers], start=float(top.get("start", 0)),
                   period=float(top["period"]) if "period" in top else None)

    def write(self, path: Path) -> Path:
        path.write_text(self.text())
        return path

    def energy_j(self, device: int, t0: float, t1: float) -> float:
        """Exact energy of one device between two unix times."""
        curve = self.devices[device].power
        return _cumulative(curve, t1 - self.start, self.period) - _cumulative(curve, t0 - self.start,
                                                                               self.period)

    def power_w(self, device: int, t: float) -> float:
        x = t - self.start
        if self.period:
            x = math.fmod(x, self.period)
        return _at(self.devices[device].power, x)


def _at(c: Curve, x: float) -> float:
    if x <= c[0][0]:
        return c[0][1]
    for (ta, va), (tb, vb) in pairwise(c):
        if x <= tb:
            return va + (x - ta) / (tb - ta) * (vb - va)
    return c[-1][1]


def _integral0(c: Curve, x: float) -> float:
    if x <= 0:
        return 0.0
    if x <= c[0][0]:
        return c[0][1] * x
    total = c[0][1] * c[0][0]
    for (ta, va), (tb, _) in pairwise(c):
        hi = min(x, tb)
        total += 0.5 * (va + _at(c, hi)) * (hi - ta)
        if x <= tb:
            return total
    return total + c[-1][1] * (x - c[-1][0])


def _cumulative(c: Curve, x: float, period: float | None) -> float:
    if x <= 0:
        return 0.0
    if period:
        k = math.floor(x / period)
        return k * _integral0(c, period) + _integral0(c, x - k * period)
    return _integral0(c, x)


def build_library(source: Path, out_dir: Path) -> Path:
    """gcc the fake into out_dir/libnvidia-ml.so.1 (soname set, so pynvml's dlopen matches it)."""
    import subprocess

    out_dir.mkdir(parents=True, exist_ok=True)
    lib = out_dir / "libnvidia-ml.so.1"
    subprocess.run(["gcc", "-O2", "-Wall", "-shared", "-fPIC", "-Wl,-soname,libnvidia-ml.so.1",
                    "-o", str(lib), str(source), "-lm"], check=True)
    return lib
