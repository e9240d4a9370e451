"""How to start the node sampler (pure): the argv a batch script, a prolog or a test runs."""

from __future__ import annotations

import shlex
import sys
from collections.abc import Sequence


def sampler_command(job_id: str | None = None, interval_s: float | None = None,
                    python: str | None = None, extra: Sequence[str] = ()) -> list[str]:
    """`python -m hpc_aidc.cli.main energy sample ...`; without job_id the sampler reads SLURM_JOB_ID.
    The module form needs no `hpcai` on PATH, only the interpreter that has hpc-aidc installed."""
    argv = [python or sys.executable, "-m", "hpc_aidc.cli.main", "energy", "sample"]
    if job_id is not None:
        argv += ["--job-id", job_id]
    if interval_s is not None:
        argv += ["--interval", f"{interval_s:g}"]
    return [*argv, *extra]


def batch_script_line(interval_s: float | None = None, python: str | None = None) -> str:
    """The line a batch script runs before its work: one sampler per node, in the background, sharing
    the job's resources (--overlap). Each task sees SLURM_JOB_GPUS, the job's GPUs on its node. Where
    the prolog already samples the job, these exit 0 at once ("already sampled")."""
    argv = sampler_command(interval_s=interval_s, python=python)
    return ("srun --overlap --ntasks-per-node=1 --nodes=\"$SLURM_JOB_NUM_NODES\" --cpus-per-task=1 "
            "--mem=0 --kill-on-bad-exit=0 " + shlex.join(argv) + " &")
