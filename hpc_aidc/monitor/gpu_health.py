"""The prolog's GPU check (edge: NVML): `hpcai doctor`'s verdicts on the GPUs a job was given, draining only
for what lasts. CATALOGUE says, fault by fault, whether it drains and how the check tells a lasting fault
from a passing moment:

- what persists by nature (a GPU Slurm assigned that NVML does not see, uncorrectable ECC errors, retired
  pages, pending or failed row remapping) fails at one look: those counters and states stay until a reset;
- a hardware slowdown (hw slowdown, hw thermal slowdown, hw power brake) fails only when it is sustained:
  the GPU is sampled again for `sustain_s` and must show the same slowdown in every sample. One that clears
  meanwhile (the heat a previous job left) is a note for the log, never a drain;
- Xid errors reach NVML only as events, to a process that listens (nvmlEventSetWait), never as a query of
  past ones: the check listens for the whole of its run where the driver offers Xid events, and the codes
  that mean a broken GPU (XID_DRAIN) fail it; the others (an application's own faults) are notes.
Warnings (software throttling, heat, rows remapped earlier) never fail a job.

NVML being unavailable is a failure of the check, not of a GPU: it raises NvmlUnavailable, and the
prolog lets the job run (a node is never drained because the tool broke)."""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from hpc_aidc.errors import EnergyError
from hpc_aidc.monitor.gpus import GpuToken
from hpc_aidc.monitor.health import THROTTLE_NAMES, verdict
from hpc_aidc.monitor.nvml import Nvml, open_nvml

MAX_REASON = 240  # Slurm keeps a node's Reason whole, but sinfo and people read one line
SLOWDOWN_BITS = 0x8 | 0x40 | 0x80  # hw slowdown, hw thermal slowdown, hw power brake
SUSTAIN_S = 5.0     # how long a hardware slowdown must last to drain (the prolog's timeout is 30 s)
SAMPLE_S = 0.5      # between samples while watching one
# Xids that mean the GPU itself is broken (NVIDIA's Xid catalogue); the rest are an application's faults.
XID_DRAIN = {
    48: "double-bit ECC error", 61: "internal micro-controller breakpoint", 62: "internal micro-controller halt",
    63: "ECC page retirement or row remapping event", 64: "ECC page retirement or row remapping failure",
    74: "NVLink error", 79: "GPU has fallen off the bus", 92: "high single-bit ECC error rate",
    94: "contained ECC error", 95: "uncontained ECC error", 119: "GSP RPC timeout", 120: "GSP error",
}


@dataclass(frozen=True)
class CatalogueEntry:
    fault: str
    drains: bool
    how: str      # how the check sees it, and why that means it lasts (or not)


CATALOGUE = (
    CatalogueEntry("missing GPU", True, "one look: Slurm assigned it, NVML does not see it"),
    CatalogueEntry("uncorrectable ECC errors", True, "one look: the volatile counter only grows until a reset"),
    CatalogueEntry("retired pages (double-bit ECC)", True, "one look: page retirement is permanent"),
    CatalogueEntry("row remapping pending or failed", True, "one look: stays until the GPU is reset"),
    CatalogueEntry("hardware slowdown (hw slowdown, hw thermal slowdown, hw power brake)", True,
                   f"sustained: in every sample for {SUSTAIN_S:g} s (`--sustain`); one that clears meanwhile "
                   "is logged, not drained"),
    CatalogueEntry(f"Xid {', '.join(str(x) for x in sorted(XID_DRAIN))}", True,
                   "as the driver reports it: NVML Xid events while the check runs (none where the driver "
                   "offers no events)"),
    CatalogueEntry("other Xids (13, 31, 43, 45: an application's faults)", False, "logged"),
    CatalogueEntry("software power cap or thermal slowdown, heat, rows remapped earlier", False,
                   "warnings of `hpcai doctor`"),
)


@dataclass(frozen=True)
class GpuFault:
    gpu: str      # "GPU 2 (GPU-...)", or the token Slurm gave when NVML cannot find it
    fault: str    # "3 uncorrectable ECC errors; row remapping pending (reset the GPU)"

    def __str__(self) -> str:
        return f"{self.gpu}: {self.fault}"


def drain_reason(faults: Sequence[GpuFault]) -> str:
    """The node's drain reason: every bad GPU with its faults, one line, bounded."""
    text = "hpcai gpu-health: " + "; ".join(str(f) for f in faults)
    text = " ".join(text.split())  # one line whatever NVML said
    return text if len(text) <= MAX_REASON else text[: MAX_REASON - 3] + "..."


def catalogue_markdown() -> str:
    rows = [f"| {e.fault} | {'drain' if e.drains else 'no'} | {e.how} |" for e in CATALOGUE]
    return "\n".join(["| fault | node | how the prolog's check sees it |", "|---|---|---|", *rows]) + "\n"


def slowdown_names(mask: int) -> list[str]:
    return [name for bit, name in THROTTLE_NAMES.items() if mask & bit & SLOWDOWN_BITS]


def sustained(masks: Sequence[int]) -> int:
    """The slowdown bits present in every sample (pure): a slowdown that cleared once does not count."""
    bits = SLOWDOWN_BITS
    for mask in masks:
        bits &= mask
    return bits if masks else 0


def xid_verdicts(events: Sequence[tuple[str, int]], labels: Mapping[str, str]) -> tuple[dict[str, list[str]],
                                                                                       list[str]]:
    """({GPU label: faults}, notes) from the Xid events of the job's GPUs (pure); events of other GPUs are
    not this job's."""
    faults: dict[str, list[str]] = {}
    notes: list[str] = []
    for uuid, xid in events:
        label = labels.get(uuid)
        if label is None:
            continue
        if xid in XID_DRAIN:
            faults.setdefault(label, []).append(f"Xid {xid} ({XID_DRAIN[xid]})")
        else:
            notes.append(f"{label}: Xid {xid} (an application's fault: not drained)")
    return faults, notes


@dataclass
class _Gpu:
    label: str
    uuid: str
    handle: Any
    failures: list[str]
    masks: list[int]


def _look(nvml: Nvml, token: GpuToken) -> _Gpu | GpuFault:
    try:
        ((device, handle),) = nvml.devices([token])
    except EnergyError:
        return GpuFault(f"GPU {token.value}", "missing (Slurm assigned it, NVML does not see it)")
    sample = nvml.sample(handle)
    facts = {**nvml.health(handle), "temp_c": None if math.isnan(sample.temp_c) else sample.temp_c}
    label = f"GPU {device.index if device.index is not None else token.value} ({device.uuid})"
    # Everything but the slowdown fails at one look; the slowdown is watched (check_gpus).
    return _Gpu(label, device.uuid, handle, list(verdict(facts).failures), [sample.throttle])


def check_gpus(tokens: Sequence[GpuToken], environ: Mapping[str, str] | None = None, sustain_s: float = SUSTAIN_S,
               notes: list[str] | None = None, sample_s: float = SAMPLE_S,
               clock: Callable[[], float] = time.monotonic) -> list[GpuFault]:
    """The faults of the given GPUs that last (empty: all good); what passed goes to `notes`. Raises
    NvmlUnavailable when NVML cannot answer."""
    said = notes if notes is not None else []
    nvml = open_nvml(environ)
    faults: list[GpuFault] = []
    events = None
    try:
        looks = [_look(nvml, token) for token in tokens]
        gpus = [g for g in looks if isinstance(g, _Gpu)]
        faults += [f for f in looks if isinstance(f, GpuFault)]
        events = nvml.watch_xid([g.handle for g in gpus])
        xids: list[tuple[str, int]] = []
        watched = [g for g in gpus if g.masks[0] & SLOWDOWN_BITS]
        deadline = clock() + sustain_s
        while watched and clock() < deadline:
            wait = min(sample_s, max(0.0, deadline - clock()))
            if events is not None:
                xids += nvml.wait_xid(events, wait)
            else:
                time.sleep(wait)
            for g in watched:
                g.masks.append(nvml.sample(g.handle).throttle)
            watched = [g for g in watched if sustained(g.masks)]
        if events is not None:
            xids += nvml.wait_xid(events, 0)
        xid_faults, xid_notes = xid_verdicts(xids, {g.uuid: g.label for g in gpus})
        said += xid_notes
        for g in gpus:
            if g.masks[0] & SLOWDOWN_BITS:
                lasting = sustained(g.masks)
                if lasting:
                    g.failures.append(f"{', '.join(slowdown_names(lasting))} sustained over {sustain_s:g} s")
                else:
                    said.append(f"{g.label}: {', '.join(slowdown_names(g.masks[0]))} cleared within "
                                f"{sustain_s:g} s (passing: not drained)")
            g.failures += xid_faults.get(g.label, [])
            if g.failures:
                faults.append(GpuFault(g.label, "; ".join(g.failures)))
    finally:
        if events is not None:
            nvml.free_events(events)
        nvml.close()
    return faults
