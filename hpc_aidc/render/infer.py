"""The sbatch script of one batch-inference array window (pure): submitit's own script renderer, with an
array of task indices and the command every srun task of an array task runs."""

from __future__ import annotations

import shlex
from collections.abc import Mapping
from pathlib import Path
from typing import Any


def infer_command(python: str, out: Path, offset: int) -> str:
    return " ".join([shlex.quote(python), "-u -m hpc_aidc.node.infer.run", shlex.quote(str(out)),
                     "--offset", str(int(offset))])


def array_spec(indices: str, max_concurrent: int | None) -> str:
    """`0-9%2`: the --array value (a throttle only when asked for)."""
    return f"{indices}%{max_concurrent}" if max_concurrent else indices


def infer_array_script(parameters: Mapping[str, Any], folder: Path, command: str, array: str,
                       task_logs: Path | None = None) -> str:
    """The script `sbatch` receives: every value quoted by submitit; logs per array task and process (the
    processes' in `task_logs` when given: a pattern such as <dir>/%A_%a that the script creates)."""
    from submitit.slurm.slurm import _make_sbatch_string

    params = dict(parameters)
    additional = dict(params.pop("additional_parameters", None) or {})
    additional["array"] = array
    additional["output"] = str(folder / "%A_%a_batch.out")
    # srun's own --output (submitit's %j_%t pattern) would collide across array tasks: %j of the last task
    # is the array's id. A later --output wins, so each task's processes log to %A_%a_%t.
    params["srun_args"] = [*params.get("srun_args", []), "--output", str((task_logs or folder) / "%A_%a_%t_log.out")]
    return str(_make_sbatch_string(command=command, folder=folder, additional_parameters=additional, **params))
