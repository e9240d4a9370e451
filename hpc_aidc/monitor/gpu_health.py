"""The prolog's GPU check (edge: NVML): `hpcai doctor`'s verdicts on the GPUs a job was given.

A GPU the job was given but NVML cannot find is missing; otherwise the doctor's `fail` reasons
(uncorrectable ECC errors, retired pages, pending or failed row remapping, hardware slowdown: thermal,
power brake) make it bad. Warnings (software throttling, heat, rows remapped earlier) never fail a job.
Xid errors reach NVML only as events to a process that waits for them (nvmlEventSetWait), never as a
query: a one-shot prolog cannot see past ones, so they are not checked here.

NVML being unavailable is a failure of the check, not of a GPU: it raises NvmlUnavailable, and the
prolog lets the job run (a node is never drained because the tool broke)."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from hpc_aidc.errors import EnergyError
from hpc_aidc.monitor.gpus import GpuToken
from hpc_aidc.monitor.health import verdict
from hpc_aidc.monitor.nvml import open_nvml

MAX_REASON = 240  # Slurm keeps a node's Reason whole, but sinfo and people read one line


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


def check_gpus(tokens: Sequence[GpuToken], environ: Mapping[str, str] | None = None) -> list[GpuFault]:
    """The faults of the given GPUs (empty: all good). Raises NvmlUnavailable when NVML cannot answer."""
    nvml = open_nvml(environ)
    faults: list[GpuFault] = []
    try:
        for token in tokens:
            try:
                ((device, handle),) = nvml.devices([token])
            except EnergyError:
                faults.append(GpuFault(f"GPU {token.value}", "missing (Slurm assigned it, NVML does not see it)"))
                continue
            sample = nvml.sample(handle)
            facts = {**nvml.health(handle), "throttle": sample.throttle,
                     "temp_c": None if math.isnan(sample.temp_c) else sample.temp_c}
            v = verdict(facts)
            if v.failures:
                label = f"GPU {device.index if device.index is not None else token.value} ({device.uuid})"
                faults.append(GpuFault(label, "; ".join(v.failures)))
    finally:
        nvml.close()
    return faults
