"""Slurm's restart count, which numbers a job's runs: a requeued job runs again as run N+1, and its
energy records, accounting lines and logs are kept apart per run."""

from __future__ import annotations

from collections.abc import Mapping


def run_of(environ: Mapping[str, str]) -> int:
    """The job's run: Slurm's restart count (prolog/epilog: SLURM_JOB_RESTART_COUNT; job steps:
    SLURM_RESTART_COUNT, set once the job was requeued)."""
    for key in ("SLURM_JOB_RESTART_COUNT", "SLURM_RESTART_COUNT"):
        value = environ.get(key, "")
        if value.isdigit():
            return int(value)
    return 0
