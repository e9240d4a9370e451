"""Which GPUs a job owns on this node, from Slurm's environment (pure functions of a mapping).

SLURM_JOB_GPUS holds the job's physical GPU indices on the node (all of them, whatever the step), so it
is preferred for a job-wide sampler; SLURM_STEP_GPUS and CUDA_VISIBLE_DEVICES follow, the latter being
renumbered from 0 under cgroup device constraint. Tokens may be NVML indices, GPU-/MIG- UUIDs or PCI
bus ids."""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Literal

from hpc_aidc.errors import ConfigError, expected

GPU_ENV_ORDER = ("SLURM_JOB_GPUS", "SLURM_STEP_GPUS", "CUDA_VISIBLE_DEVICES")
_PCI = re.compile(r"^(?:[0-9a-fA-F]{4,8}:)?[0-9a-fA-F]{2}:[0-9a-fA-F]{2}\.[0-9a-fA-F]$")

Kind = Literal["index", "uuid", "mig", "pci"]


@dataclass(frozen=True)
class GpuToken:
    kind: Kind
    value: str


def parse_token(text: str) -> GpuToken:
    """One entry of a GPU list, classified so it can be mapped to an NVML handle."""
    token = text.strip()
    if token.isdigit():
        return GpuToken("index", str(int(token)))
    if token.startswith("MIG-"):
        return GpuToken("mig", token)
    if token.startswith("GPU-"):
        return GpuToken("uuid", token)
    if _PCI.match(token):
        return GpuToken("pci", token)
    raise ConfigError(expected(
        "a GPU as an NVML index, GPU-/MIG- UUID or PCI bus id", token,
        "Check CUDA_VISIBLE_DEVICES / SLURM_JOB_GPUS or the --gpus option."))


def parse_gpu_list(text: str) -> tuple[GpuToken, ...]:
    """A comma-separated list; empty and NoDevFiles mean no GPUs."""
    stripped = text.strip()
    if not stripped or stripped.lower() in {"nodevfiles", "none"}:
        return ()
    return tuple(parse_token(part) for part in stripped.split(",") if part.strip())


def job_gpus(environ: Mapping[str, str]) -> tuple[tuple[GpuToken, ...], str] | None:
    """The job's GPUs from the first Slurm/CUDA variable that is set, with the variable's name;
    None when none is set (the caller decides: all GPUs of the node, or none)."""
    for name in GPU_ENV_ORDER:
        if name in environ:
            return parse_gpu_list(environ[name]), name
    return None
