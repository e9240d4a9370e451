"""GPU health verdicts for `hpcai doctor` (pure): from raw NVML facts to ok / warn / fail with reasons.
Uncorrectable ECC errors, retired pages, pending or failed row remapping and hardware slowdowns mean
the GPU should not take jobs (fail); heat and software throttling are worth a look (warn)."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

TEMP_WARN_C = 85.0
# NVML clocks-event (throttle) reason bits.
THROTTLE_NAMES = {
    0x4: "sw power cap", 0x8: "hw slowdown", 0x20: "sw thermal slowdown", 0x40: "hw thermal slowdown",
    0x80: "hw power brake",
}
_FAIL_BITS = 0x8 | 0x40 | 0x80


@dataclass(frozen=True)
class Verdict:
    status: str  # ok | warn | fail
    reasons: tuple[str, ...]
    failures: tuple[str, ...] = ()  # the reasons that make it fail (the prolog names them when it drains)


def throttle_reasons(mask: int) -> list[str]:
    return [name for bit, name in THROTTLE_NAMES.items() if mask & bit]


def verdict(facts: Mapping[str, Any]) -> Verdict:
    fail: list[str] = []
    warn: list[str] = []
    if facts.get("ecc_uncorrected"):
        fail.append(f"{facts['ecc_uncorrected']} uncorrectable ECC errors")
    if facts.get("retired_pages"):
        fail.append(f"{facts['retired_pages']} retired pages")
    if facts.get("remap_failure"):
        fail.append("row remapping failed")
    if facts.get("remap_pending"):
        fail.append("row remapping pending (reset the GPU)")
    if facts.get("remapped_uncorrectable"):
        warn.append(f"{facts['remapped_uncorrectable']} rows remapped for uncorrectable errors")
    mask = int(facts.get("throttle") or 0)
    for bit, name in THROTTLE_NAMES.items():
        if mask & bit:
            (fail if bit & _FAIL_BITS else warn).append(f"throttled: {name}")
    temp = facts.get("temp_c")
    if isinstance(temp, (int, float)) and temp >= TEMP_WARN_C:
        warn.append(f"hot: {temp:.0f} C")
    status = "fail" if fail else "warn" if warn else "ok"
    return Verdict(status, tuple(fail + warn), tuple(fail))
