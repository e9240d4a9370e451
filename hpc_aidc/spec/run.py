"""`hpcai submit run`: a command run by every srun task of a multi-node allocation."""

from __future__ import annotations

from dataclasses import dataclass

from hpc_aidc.errors import SpecError
from hpc_aidc.spec.resources import Resources


@dataclass(frozen=True)
class RunJob:
    resources: Resources
    command: tuple[str, ...]


def parse_run_job(resources: Resources, command: tuple[str, ...] | list[str]) -> RunJob:
    if not command:
        raise SpecError(
            "Expected a command after `--`. Got none. Example: hpcai submit run --nodes 2 -- hostname"
        )
    if any("\x00" in arg for arg in command):
        raise SpecError("Expected command arguments without NUL bytes. Got one. Remove it.")
    return RunJob(resources=resources, command=tuple(command))
