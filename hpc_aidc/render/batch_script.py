"""Batch scripts whose command is a module of ours rather than a pickled call (inference windows, sweep
trials, data pack tasks and their finalize job), rendered by submitit's own `_make_sbatch_string` so every
value is quoted the same way as in a pickled call's script. Pure."""

from __future__ import annotations

import shlex
from collections.abc import Mapping
from pathlib import Path
from typing import Any


def module_command(python: str, module: str, *args: str) -> str:
    """`python -u -m MODULE ARGS...`, every argument quoted."""
    return " ".join([shlex.quote(python), "-u -m", module, *(shlex.quote(a) for a in args)])


def array_spec(indices: str, max_concurrent: int | None) -> str:
    """`0-9%2`: the --array value (a throttle only when asked for)."""
    return f"{indices}%{max_concurrent}" if max_concurrent else indices


def array_script(parameters: Mapping[str, Any], folder: Path, command: str, array: str,
                 task_logs: Path | None = None) -> str:
    """An array job's script: logs per array task and process (the processes' in `task_logs` when given: a
    pattern such as <dir>/%A_%a that the script creates)."""
    from submitit.slurm.slurm import _make_sbatch_string

    params = dict(parameters)
    additional = dict(params.pop("additional_parameters", None) or {})
    additional["array"] = array
    additional["output"] = str(folder / "%A_%a_batch.out")
    # srun's own --output (submitit's %j_%t pattern) would collide across array tasks: %j of the last task
    # is the array's id. A later --output wins, so each task's processes log to %A_%a_%t.
    params["srun_args"] = [*params.get("srun_args", []), "--output", str((task_logs or folder) / "%A_%a_%t_log.out")]
    return str(_make_sbatch_string(command=command, folder=folder, additional_parameters=additional, **params))


def single_script(parameters: Mapping[str, Any], folder: Path, command: str) -> str:
    """A one-job script: its batch log and its processes' logs in `folder`, named by the job id."""
    from submitit.slurm.slurm import _make_sbatch_string

    return str(_make_sbatch_string(command=command, folder=folder, **parameters))
