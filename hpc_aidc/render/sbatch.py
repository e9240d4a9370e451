"""Specs -> submitit's SlurmExecutor parameters -> the exact sbatch script submitit will write.

The script text comes from submitit's own `_make_sbatch_string` with the same command string its
executor uses, so `--dry-run` prints byte for byte what `sbatch` receives (a test compares it with the
`<jobid>_submission.sh` that submitit keeps after a real submission)."""

from __future__ import annotations

import shlex
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from hpc_aidc.site_profile import SiteProfile
from hpc_aidc.slurmtime import format_time_limit
from hpc_aidc.spec.resources import Resources

# Grace between Slurm's warning signal and the kill, long enough to write a checkpoint.
SIGNAL_DELAY_S = 120


def job_folder(site: SiteProfile, user: str) -> Path:
    """Shared job directory; submitit replaces %j with the job id (%A_%a for arrays)."""
    return site.job_root / user / "%j"


def setup_lines(site: SiteProfile, extra_env: Mapping[str, str] | None = None,
                extra_setup: Sequence[str] = ()) -> list[str]:
    """Site setup (admin-trusted shell, passed as is), environment exports with every value quoted, then
    our own setup lines (built from quoted argv by their producers)."""
    env = {**site.env, **(extra_env or {})}
    exports = [f"export {name}={shlex.quote(value)}" for name, value in sorted(env.items())]
    return [*site.setup, *exports, *extra_setup]


def submitit_parameters(
    resources: Resources,
    site: SiteProfile,
    *,
    extra_env: Mapping[str, str] | None = None,
    extra_setup: Sequence[str] = (),
    teardown: Sequence[str] = (),
    srun_args: Sequence[str] = (),
    additional: Mapping[str, Any] | None = None,
    use_srun: bool = True,
    signal_delay_s: int = SIGNAL_DELAY_S,
    dependency: str | None = None,
) -> dict[str, Any]:
    """Native SlurmExecutor parameters (submitit validates names and rejects unknown ones)."""
    params: dict[str, Any] = {
        "job_name": resources.job_name,
        "partition": resources.partition,
        "time": resources.time_min,
        "nodes": resources.nodes,
        "ntasks_per_node": resources.ntasks_per_node,
        "cpus_per_task": resources.cpus_per_task,
        "signal_delay_s": signal_delay_s,
        "stderr_to_stdout": True,
        "wckey": None,
        "setup": setup_lines(site, extra_env, extra_setup),
    }
    if resources.gpus_per_node:
        params["gpus_per_node"] = (
            f"{resources.gpu_type}:{resources.gpus_per_node}" if resources.gpu_type else resources.gpus_per_node
        )
    if resources.mem is not None:
        params["mem"] = resources.mem
    if resources.account:
        params["account"] = resources.account
    if resources.qos:
        params["qos"] = resources.qos
    if teardown:
        params["teardown"] = list(teardown)
    if srun_args:
        params["srun_args"] = list(srun_args)
    if additional or dependency:
        params["additional_parameters"] = {**(additional or {}), **dependency_parameters(dependency)}
    if not use_srun:
        params["use_srun"] = False
    return params


def dependency_parameters(dependency: str | None) -> dict[str, str]:
    """sbatch's `--dependency`, and `--kill-on-invalid-dep=yes` with it: when a job it waits for fails,
    Slurm cancels this one (and, in turn, those waiting for it) instead of leaving it pending forever as
    DependencyNeverSatisfied (checked on Slurm 22.05)."""
    if not dependency:
        return {}
    return {"dependency": dependency, "kill_on_invalid_dep": "yes"}


def python_command(launcher_prefix: str = "") -> str:
    """How each task starts Python: this interpreter itself, or behind a launcher such as mpirun."""
    return f"{launcher_prefix} {shlex.quote(sys.executable)}".strip()


def submitit_command(python: str, folder: Path) -> str:
    """The command line SlurmExecutor runs in each task (mirrors `_submitit_command_str`)."""
    return " ".join([python, "-u -m submitit.core._submit", shlex.quote(str(folder))])


def render_sbatch(parameters: Mapping[str, Any], folder: Path, python: str) -> str:
    """The sbatch script text submitit writes for these parameters."""
    from submitit.slurm.slurm import _make_sbatch_string

    return str(_make_sbatch_string(command=submitit_command(python, folder), folder=folder, **parameters))


def describe(resources: Resources) -> str:
    gpus = f", {resources.gpus_per_node} GPU(s)/node" if resources.gpus_per_node else ""
    return (
        f"{resources.nodes} node(s) x {resources.ntasks_per_node} task(s){gpus}, "
        f"partition {resources.partition}, time {format_time_limit(resources.time_min)}"
    )
